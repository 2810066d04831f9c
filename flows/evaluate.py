"""evaluate: score the run's trained output, the base model or the current champion on the eval suites
(through the eval cache: the same weights, suites and settings are evaluated once)."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from tasks.evaluate import evaluate as evaluate_task
from tasks.spec import load_job_spec


def _target(spec, model: str) -> tuple[str, str | None]:
    from lexforge import jobs
    from lexforge.models import spec_base_path

    if model == "base":
        return spec_base_path(spec), None
    if model == "champion":
        from lexforge.registry import resolve_servable

        s = resolve_servable(spec.promotion.registered_model, "champion", tracking_uri=spec.tracking.resolved_uri())
        return str(s.base_model), (str(s.adapter_path) if s.adapter_path else None)
    out = jobs.fetch_output(spec)
    if (out / "adapter_config.json").is_file():
        return spec_base_path(spec), str(out)
    return str(out), None


@flow(name="evaluate", description="Evaluate a model on the spec's suites (output of the run, base, or champion).")
def evaluate(spec_path: str, overrides: list[str] | None = None,
             model: Literal["output", "base", "champion"] = "output") -> dict:
    spec = load_job_spec(spec_path, overrides)
    base_model, adapter = _target(spec, model)
    report = evaluate_task(spec, base_model, adapter, label=model if model != "output" else "candidate")
    return report.to_dict()
