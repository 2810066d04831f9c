"""Node reports -> checks with a fix each. Pure: no Ray, no I/O (tested on synthetic node descriptions)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Versions that must be equal on every node (a worker on other code or another torch breaks collectives).
SAME_EVERYWHERE = ("lexforge", "code_digest", "python", "torch", "ray")


@dataclass
class Check:
    check: str
    node: str  # "cluster" for checks over all nodes
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class PreflightReport:
    spec_name: str
    nodes: list[dict[str, Any]]
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"spec_name": self.spec_name, "ok": self.ok, "nodes": self.nodes,
                "checks": [asdict(c) for c in self.checks]}

    def to_markdown(self) -> str:
        rows = ["| check | node | ok | detail | fix |", "|---|---|---|---|---|"]
        for c in self.checks:
            rows.append(f"| {c.check} | {c.node} | {'yes' if c.ok else '**NO**'} | {c.detail} | {c.fix} |")
        verdict = "all checks passed" if self.ok else f"{len(self.failed())} check(s) failed"
        return f"Preflight of `{self.spec_name}` on {len(self.nodes)} node(s): {verdict}\n\n" + "\n".join(rows)


def _short(node: str) -> str:
    return node[:12]


def check_versions(reports: list[dict]) -> list[Check]:
    out = []
    for key in SAME_EVERYWHERE:
        seen: dict[str, list[str]] = {}
        for r in reports:
            seen.setdefault(str(r["versions"].get(key)), []).append(_short(r["node"]))
        if len(seen) == 1:
            out.append(Check(f"same {key}", "cluster", True, f"{next(iter(seen))} on every node"))
        else:
            detail = "; ".join(f"{v} on {', '.join(nodes)}" for v, nodes in sorted(seen.items()))
            out.append(Check(f"same {key}", "cluster", False, detail,
                             "build every node from the same lexforge image (or pip install the same pinned "
                             "lexforge checkout on every node), then restart its Ray processes"))
    return out


def check_storage(reports: list[dict]) -> list[Check]:
    out = []
    for r in reports:
        st = r["storage"]
        if st["ok"]:
            out.append(Check("storage round trip", _short(r["node"]), True, f"{st['uri']} in {st['seconds']}s"))
        else:
            out.append(Check("storage round trip", _short(r["node"]), False, st["error"] or "failed",
                             "give the node credentials for storage.root (IRSA / a mounted secret; never in the "
                             "spec) and network access to it (S3 endpoint: storage.s3_endpoint_url)"))
    return out


def worker_slots(spec, report: dict) -> int:
    """How many of the spec's workers fit on this node (CPUs, GPUs, GPU memory and type)."""
    r = spec.resources
    slots = int(report["resources"].get("CPU", 0) // r.cpus_per_worker)
    if r.use_gpu:
        gpus = report["resources"].get("GPU", 0)
        if r.accelerator_type and not any(r.accelerator_type.lower() in g["name"].lower() for g in report["gpus"]):
            return 0
        slots = min(slots, int(gpus // r.gpus_per_worker))
    return max(slots, 0)


def check_capacity(spec, reports: list[dict], memory_per_worker_gb: float | None) -> list[Check]:
    r = spec.resources
    out = []
    slots = {_short(rep["node"]): worker_slots(spec, rep) for rep in reports}
    total = sum(slots.values())
    need = r.num_workers
    what = (f"{r.gpus_per_worker:g} {r.accelerator_type or 'GPU'} + {r.cpus_per_worker:g} CPU" if r.use_gpu
            else f"{r.cpus_per_worker:g} CPU")
    detail = f"{total} worker slot(s) of {what} ({', '.join(f'{n}: {s}' for n, s in slots.items())}); need {need}"
    out.append(Check("capacity", "cluster", total >= need, detail,
                     "" if total >= need else "add nodes of the requested accelerator type (a KubeRay worker group "
                     "per node pool), or lower resources.num_workers (the global batch is kept: see "
                     "resources.min_workers)"))
    if memory_per_worker_gb:
        for rep in reports:
            node = _short(rep["node"])
            if r.use_gpu:
                small = [g for g in rep["gpus"] if g["memory_gb"] < memory_per_worker_gb]
                if rep["gpus"] and small:
                    out.append(Check("GPU memory", node, False,
                                     f"{small[0]['name']} has {small[0]['memory_gb']} GiB; the plan needs "
                                     f"{memory_per_worker_gb:.1f} GiB per worker",
                                     "use a larger GPU, a sharded strategy (fsdp / deepspeed-zero3), LoRA, or "
                                     "gradient checkpointing (see `lexforge plan`)"))
            elif slots[node]:
                need_gb = memory_per_worker_gb * min(slots[node], need)
                ok = rep["memory_gb"] >= need_gb
                out.append(Check("host memory", node, ok, f"{rep['memory_gb']} GiB for {min(slots[node], need)} "
                                 f"worker(s) x {memory_per_worker_gb:.1f} GiB",
                                 "" if ok else "fewer workers per node (resources.cpus_per_worker) or more RAM"))
    return out


def check_gpu_network(spec, reports: list[dict]) -> list[Check]:
    """NCCL / InfiniBand settings of GPU nodes of a multi-node job, each missing piece with a hint."""
    gpu_nodes = [r for r in reports if r["gpus"]]
    if not spec.resources.use_gpu or len(reports) < 2:
        return []
    out = []
    for rep in gpu_nodes:
        node, env = _short(rep["node"]), rep["nccl_env"]
        ifname = env.get("NCCL_SOCKET_IFNAME")
        if not ifname:
            out.append(Check("NCCL_SOCKET_IFNAME", node, False, "not set: NCCL may pick a slow or unroutable "
                             f"interface (up: {', '.join(rep['interfaces'])})",
                             "set NCCL_SOCKET_IFNAME (and GLOO_SOCKET_IFNAME) to the cluster network interface, "
                             "e.g. in the worker group's env"))
        else:
            names = [n.strip().lstrip("^=") for n in ifname.split(",")]
            ok = ifname.startswith("^") or any(any(i.startswith(n) for i in rep["interfaces"]) for n in names)
            out.append(Check("NCCL_SOCKET_IFNAME", node, ok, f"{ifname} (up: {', '.join(rep['interfaces'])})",
                             "" if ok else "name an interface that exists and is up on this node"))
        if rep["ib_devices"]:
            disabled = env.get("NCCL_IB_DISABLE") == "1"
            out.append(Check("InfiniBand", node, not disabled,
                             f"devices {', '.join(rep['ib_devices'])}; NCCL_IB_DISABLE={env.get('NCCL_IB_DISABLE', '-')}",
                             "unset NCCL_IB_DISABLE so NCCL uses the InfiniBand fabric" if disabled else ""))
            if not env.get("NCCL_IB_HCA"):
                out.append(Check("NCCL_IB_HCA", node, True, "not set: NCCL uses every HCA it finds",
                                 "pin the HCAs of the compute fabric with NCCL_IB_HCA when nodes also have "
                                 "storage/management HCAs"))
        else:
            out.append(Check("InfiniBand", node, False, "no InfiniBand devices (/sys/class/infiniband): NCCL falls "
                             "back to TCP sockets, far slower for multi-node gradient traffic",
                             "schedule on the RDMA node pool (rdma/ib device plugin resource), or accept TCP and "
                             "set NCCL_SOCKET_IFNAME to the fastest interface"))
        if len(rep["gpus"]) < spec.resources.gpus_per_worker:
            out.append(Check("GPUs visible", node, False, f"{len(rep['gpus'])} visible",
                             "check the NVIDIA device plugin / CUDA_VISIBLE_DEVICES of the worker group"))
    return out


def check_nodes(spec, reports: list[dict], unreachable: dict[str, str] | None = None,
                memory_per_worker_gb: float | None = None) -> PreflightReport:
    """Every check over the node reports (``resources`` of each report: what Ray says the node offers)."""
    checks = [Check("reachable", _short(n), False, why, "bring the node back (Ray dashboard: Cluster) or remove it")
              for n, why in (unreachable or {}).items()]
    checks += [Check("reachable", _short(r["node"]), True, r["hostname"]) for r in reports]
    if reports:
        checks += check_versions(reports) + check_storage(reports)
        checks += check_capacity(spec, reports, memory_per_worker_gb) + check_gpu_network(spec, reports)
    else:
        checks.append(Check("nodes", "cluster", False, "no alive node answered", "start the Ray cluster"))
    return PreflightReport(spec.name, reports, checks)
