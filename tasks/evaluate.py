"""evaluate: score a model (base + optional adapter) on the spec's eval suites."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from lexforge.config import JobSpec
from tasks.dashboard import artifact_key


def report_rows(report: dict) -> list[dict]:
    rows = [{"suite": name, "kind": s.get("kind"), "metric": s.get("metric"), "score": s.get("score"), "n": s.get("n")}
            for name, s in (report.get("suites") or {}).items()]
    for k in ("closed", "open", "blended"):
        if report.get(k) is not None:
            rows.append({"suite": f"[{k}]", "kind": "aggregate",
                         "metric": report.get("open_metric", "") if k == "open" else "", "score": report.get(k), "n": ""})
    return rows


@task(name="evaluate", cache_policy=NONE, retries=1, retry_delay_seconds=5)
def evaluate(spec: JobSpec, base_model: str, adapter: str | None = None, label: str = "candidate"):
    from lexforge.evaluate import run_eval

    report = run_eval(spec, base_model=base_model, adapter=adapter, label=label)
    d = report.to_dict()
    get_run_logger().info("eval %s: blended=%s closed=%s open=%s", label, d.get("blended"), d.get("closed"), d.get("open"))
    create_table_artifact(key=artifact_key(f"eval-{label}", spec), table=report_rows(d),
                          description=f"eval of {label} ({spec.name}); open metric: {d.get('open_metric')}")
    return report


def trained_model(trained) -> tuple[str, str | None]:
    """(base_model, adapter) of a TrainResult (or its dict form) for run_eval."""
    get = trained.get if isinstance(trained, dict) else lambda k, default=None: getattr(trained, k, default)
    out = get("output_dir")
    if get("is_adapter", True):
        return str(get("base_model")), str(out) if out else None
    return str(out), None
