"""Run the probe on every alive node of the job's Ray cluster and check the answers.

``run_preflight(spec)`` submits ``python -m lexforge.preflight.run spec.yaml`` as a Ray job (to the same
cluster and through the same jobs API as training); inside the cluster it pins one probe task to each alive node
and prints ``LEXFORGE_PREFLIGHT <json>``. Exit code 0 = every check passed, 1 = a check failed, 2 = no answer.
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

from lexforge.preflight.checks import Check, PreflightReport, check_nodes

MARKER = "LEXFORGE_PREFLIGHT "
PROBE_TIMEOUT_S = 90.0


def _memory_per_worker_gb(spec) -> float | None:
    try:
        from lexforge.plan import plan_training

        return plan_training(spec).memory_per_gpu_gb or None
    except Exception:  # noqa: BLE001 - a model the planner does not know: capacity is checked without memory
        return None


def fan_out(spec, timeout_s: float = PROBE_TIMEOUT_S) -> PreflightReport:
    """From a process connected to the cluster: probe every alive node, then check the reports."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from lexforge.preflight.probe import probe_node

    nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    spec_dict = spec.model_dump(mode="json")
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
        spec_dict, node_id): node_id for node_id in nodes}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    reports, unreachable = [], {}
    for ref, node_id in refs.items():
        if ref not in ready:
            unreachable[node_id] = f"no answer within {timeout_s:.0f}s"
            continue
        try:
            rep = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the node's worker died or could not start
            unreachable[node_id] = f"{type(e).__name__}: {str(e)[:300]}"
            continue
        rep["resources"] = {k: v for k, v in nodes[node_id].get("Resources", {}).items()
                            if k in ("CPU", "GPU", "memory") or k.startswith("accelerator_type:")}
        rep["address"] = nodes[node_id].get("NodeManagerAddress")
        reports.append(rep)
    return check_nodes(spec, reports, unreachable, _memory_per_worker_gb(spec))


def parse(logs: str) -> PreflightReport | None:
    for line in reversed(logs.splitlines()):
        i = line.find(MARKER)
        if i >= 0:
            d = json.loads(line[i + len(MARKER):])
            return PreflightReport(d["spec_name"], d["nodes"], [Check(**c) for c in d["checks"]])
    return None


def run_preflight(spec, timeout_s: float = 600.0) -> PreflightReport:
    """Submit the preflight as a Ray job on the spec's cluster and return its report."""
    from lexforge import jobs

    client = jobs.job_client(spec)
    url = getattr(client, "_address", None) or jobs.dashboard_url(spec)
    sid = f"lexforge-preflight-{spec.name}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="lexforge-preflight-") as work:
        client.submit_job(entrypoint=f"{jobs.job_python(url)} -m lexforge.preflight.run spec.yaml", submission_id=sid,
                          runtime_env=jobs.runtime_env_for(spec, Path(work)), entrypoint_num_cpus=0,
                          metadata={"lexforge_preflight": spec.name})
    outcome = jobs.follow_job(client, sid, poll_s=1.0)
    report = parse(client.get_job_logs(sid))
    if report is None:
        tail = "\n".join(outcome.log_tail[-20:])
        raise RuntimeError(f"preflight job {sid} {outcome.status} without a report:\n{tail}")
    return report


def main(argv: list[str] | None = None) -> int:
    import os

    import ray

    from lexforge import ray_auth
    from lexforge.config import load_spec

    args = list(sys.argv[1:] if argv is None else argv)
    spec = load_spec(args[0])
    address = os.environ.get("RAY_ADDRESS")  # set by the Ray job supervisor: the cluster this job runs on
    with ray_auth.ray_init_env(address):
        ray.init(address=address, log_to_driver=False)
    report = fan_out(spec)
    print(MARKER + json.dumps(report.to_dict()), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
