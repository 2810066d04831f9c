"""Multi-node recovery benchmark (CPU, tiny model, Ray multi-node on one machine, checkpoints in S3 on moto).

For each case a 2-node job (one worker per node) loses a whole node mid-training and the benchmark reports the
seconds from the node's death to the first resumed training step and the steps lost (relative to the step that
was running when the node died), next to the job's own step time (the baseline of the same run):

1. no notice: the node is SIGKILLed (raylet + every process, local disk deleted); a replacement node joins;
   Ray Train restarts the worker group, which resumes from the latest committed checkpoint in S3.
2. notice: the node's workers get SIGTERM, the node dies 5 s later; the job checkpoints at the next step
   boundary and stops (preempted); the same command re-run on the replacement resumes.
3. elastic: no notice and no replacement; with resources.min_workers=1 the job resumes on one worker (the
   global batch kept by doubling accumulation).

``--matrix`` runs case 1 for every strategy x method (ddp/fsdp/deepspeed-zero3 x lora/full): the full matrix
the test suite samples (docs/scaling.md).

Usage: .venv/bin/python bench/bench_multinode.py [--steps 12] [--matrix] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "lexforge" / "samples" / "data" / "legal_qa.jsonl"


def make_spec(name, model, endpoint, steps, every, **resources):
    from lexforge.config import spec_from_dict

    return spec_from_dict({
        "name": name, "model": {"base": str(model)}, "method": "lora", "strategy": "ddp", "stage": "sft",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "data": {"train": str(DATA), "max_seq_len": 128},
        "hyperparams": {"max_steps": steps, "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
                        "learning_rate": 1e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0},
        "resources": {"num_workers": 2, "placement": "strict_spread", **resources},
        "checkpoint": {"every_n_steps": every, "keep_last": 2},
        "storage": {"root": f"s3://bench-{name}/runs", "s3_endpoint_url": endpoint},
    })


def one_case(work: Path, model, endpoint, case: str, steps: int, every: int, **over) -> dict:
    import ray

    from lexforge.storage import store_for_spec
    from lexforge.storage.records import RunRecords
    from lexforge.testing import train_in_thread
    from lexforge.testing_multinode import LocalRayCluster
    from lexforge.train import run_training

    cluster = LocalRayCluster(work / case, env={"LEXFORGE_S3_ENDPOINT_URL": endpoint})
    cluster.start_head(num_cpus=0)
    cluster.add_node("a", num_cpus=1)
    cluster.add_node("b", num_cpus=1)
    os.environ["RAY_ADDRESS"] = cluster.gcs_address
    extra = {"min_workers": 1} if case == "elastic" else {}
    spec = make_spec(f"{case}-{over.get('strategy', 'ddp')}-{over.get('method', 'lora')}".replace("deepspeed-", "ds"),
                     model, endpoint, steps, every, **extra)
    spec = spec.model_copy(update={k: v for k, v in over.items() if k in ("strategy", "method")})
    os.environ["LEXFORGE_STEP_DELAY_S"] = "0.5"
    try:
        records = RunRecords(store_for_spec(spec), spec.name)
        t, box = train_in_thread(spec)
        while not (records.committed_steps() and records.read_progress() and records.read_progress().step > every):
            time.sleep(0.2)
        running = records.read_progress().step
        died = cluster.kill_node("b", notice_s=5.0 if case == "notice" else None)
        died_wall = time.time() - (time.monotonic() - died)
        if case != "elastic":
            cluster.add_node("c", num_cpus=1)
        t.join(timeout=900)
        if "error" in box:
            raise box["error"]
        r = box["result"]
        if case == "notice":  # preempted at the boundary: the same command again resumes on the replacement
            assert r.status == "preempted", r.status
            r = run_training(spec)
        assert r.status == "completed", r.status
        step_s = r.details["train_seconds"] / max(1, len(r.losses))
        return {"case": case, "strategy": spec.strategy, "method": spec.method, "running_step_at_loss": running,
                "resumed_from_step": r.resumed_from_step, "steps_lost": running - (r.resumed_from_step or 0),
                "seconds_to_first_resumed_step": round(r.details["first_step_at"] - died_wall, 2),
                "step_seconds": round(step_s, 3), "world_size_after": r.details["world_size"]}
    finally:
        os.environ.pop("LEXFORGE_STEP_DELAY_S", None)
        if ray.is_initialized():
            ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--matrix", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from lexforge.procs import bin_path, spawn, stop_group, wait_http
    from lexforge.testing import build_tiny_llama, free_port

    with tempfile.TemporaryDirectory(prefix="bench-mn-") as tmp:
        work = Path(tmp)
        os.environ["LEXFORGE_HOME"] = str(work / "home")
        model = build_tiny_llama(work / "tiny")
        port = free_port()
        moto = spawn([bin_path("moto_server"), "-H", "127.0.0.1", "-p", str(port)], work / "moto.log")
        endpoint = f"http://127.0.0.1:{port}"
        os.environ["LEXFORGE_S3_ENDPOINT_URL"] = endpoint
        try:
            wait_http(f"{endpoint}/moto-api/", timeout=60, proc=moto)
            cases = ([("no-notice", {"strategy": s, "method": m}) for s in ("ddp", "fsdp", "deepspeed-zero3")
                      for m in ("lora", "full")] if args.matrix
                     else [("no-notice", {}), ("notice", {}), ("elastic", {"strategy": "fsdp"})])
            rows = [one_case(work, model, endpoint, case, args.steps, args.every, **over) for case, over in cases]
        finally:
            stop_group(moto.pid)
    print(f"{'case':<10} {'strategy':<16} {'method':<6} {'lost':>5} {'s to resume':>12} {'x step time':>12} {'world':>6}")
    for r in rows:
        print(f"{r['case']:<10} {r['strategy']:<16} {r['method']:<6} {r['steps_lost']:>5} "
              f"{r['seconds_to_first_resumed_step']:>12.1f} {r['seconds_to_first_resumed_step'] / r['step_seconds']:>12.1f} "
              f"{r['world_size_after']:>6}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
