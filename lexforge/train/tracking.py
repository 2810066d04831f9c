"""MLflow tracking for training runs (optional: on when spec.tracking.mlflow_uri or $MLFLOW_TRACKING_URI is set).

The driver opens (or, on resume, reopens) one MLflow run per lexforge run name and logs params
(``spec.flat_params()``: the spec never holds secrets), system info and the final artifact. Rank 0 of the
workers logs metrics every ``log_every_n_steps`` steps and checkpoint events to the same run id.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

RUN_TAG = "lexforge.run_name"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def system_info() -> dict[str, str]:
    import torch

    info = {"sys.python": platform.python_version(), "sys.torch": torch.__version__, "sys.platform": platform.platform(),
            "sys.cuda_available": str(torch.cuda.is_available()), "sys.cpu_count": str(os.cpu_count())}
    if torch.cuda.is_available():
        info["sys.gpu"] = torch.cuda.get_device_name(0)
    return info


def lineage_tags(lineage) -> dict[str, str]:
    """MLflow tags of a Lineage record (the segment chain as JSON under ``lineage.segments``)."""
    import json

    d = lineage.model_dump(mode="json")
    tags = {f"lineage.{k}": str(v) for k, v in d.items() if k not in ("training", "segments")}
    tags["lineage.segments"] = json.dumps(d["segments"])
    return tags


def start_run(spec, lineage) -> str | None:
    """Create or reopen the MLflow run of ``spec.name``; log params + lineage tags. Returns the run id."""
    uri = spec.tracking.resolved_uri()
    if not uri:
        return None
    c = _client(uri)
    exp = c.get_experiment_by_name(spec.tracking.experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(spec.tracking.experiment)
    found = c.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{spec.name}'", max_results=1,
                          order_by=["attributes.start_time DESC"])
    if found and found[0].data.tags.get("lexforge.spec_hash") == spec.spec_hash():
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        c.set_tag(run_id, "lexforge.resumed", "true")
        return run_id
    run = c.create_run(exp_id, run_name=spec.name, tags={RUN_TAG: spec.name, "lexforge.spec_hash": spec.spec_hash(),
                                                          "lexforge.kind": "train"})
    run_id = run.info.run_id
    from mlflow.entities import Param

    params = {**spec.flat_params(), **system_info()}
    items = [Param(k[:250], str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])
    for k, v in lineage_tags(lineage).items():
        c.set_tag(run_id, k, v)
    return run_id


class MetricLogger:
    """Rank-0 metric/event logger; a no-op when tracking is off. Never raises into the training loop."""

    def __init__(self, uri: str | None, run_id: str | None):
        self.run_id = run_id if uri else None
        self.client = _client(uri) if self.run_id else None
        self.errors = 0

    def log(self, metrics: dict, step: int) -> None:
        if not self.client:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        try:
            self.client.log_batch(self.run_id, metrics=ms)
        except Exception:  # noqa: BLE001 - tracking outages must not stop training
            self.errors += 1

    def event(self, ev: dict) -> None:
        if not self.client:
            return
        step = int(ev.get("step", 0))
        vals = {f"{ev['event']}.{k}": v for k, v in ev.items() if k not in ("event", "step") and isinstance(v, (int, float))}
        vals[ev["event"]] = step
        self.log(vals, step)
        try:
            self.client.set_tag(self.run_id, f"lexforge.last_{ev['event']}", f"step {step} {ev.get('uri', '')}".strip())
        except Exception:  # noqa: BLE001
            self.errors += 1


def finish_run(spec, run_id: str | None, status: str, output_dir: Path | None = None, result=None) -> None:
    """Close the MLflow run: the output as artifacts, the outcome and the final lineage (segments) as tags."""
    uri = spec.tracking.resolved_uri()
    if not uri or not run_id:
        return
    c = _client(uri)
    if output_dir is not None and Path(output_dir).is_dir():
        c.log_artifacts(run_id, str(output_dir), artifact_path="output")
    if result is not None:
        c.set_tag(run_id, "lexforge.output_uri", result.output_uri)
        c.set_tag(run_id, "lexforge.status", status)
        c.set_tag(run_id, "lexforge.trained_tokens", str(result.trained_tokens))
        if result.lineage is not None:
            for k, v in lineage_tags(result.lineage).items():
                c.set_tag(run_id, k, v)
    c.set_terminated(run_id, status={"completed": "FINISHED", "preempted": "KILLED"}.get(status, "FAILED"))
