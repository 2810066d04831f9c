from lexforge.samples import write_samples

for kind, path in write_samples().items():
    print(f"{kind}: {path}")
