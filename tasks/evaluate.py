"""evaluate / choose-checkpoint: score a model (base + optional adapter) on the spec's eval suites, and pick which
checkpoint of a run gets registered."""

from __future__ import annotations

import dataclasses

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from lexforge.config import JobSpec
from tasks.dashboard import artifact_key


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def report_rows(report: dict) -> list[dict]:
    level = f"{report['confidence']:.0%}" if report.get("confidence") else ""
    rows = [{"suite": name, "kind": s.get("kind"), "metric": s.get("metric"), "score": s.get("score"),
             f"{level} interval".strip(): _ci(s.get("ci")), "n": s.get("n")}
            for name, s in (report.get("suites") or {}).items()]
    for k in ("closed", "open", "blended"):
        if report.get(k) is not None:
            rows.append({"suite": f"[{k}]", "kind": "aggregate",
                         "metric": report.get("open_metric", "") if k == "open" else "", "score": report.get(k),
                         f"{level} interval".strip(): _ci(report.get("blended_ci")) if k == "blended" else "",
                         "n": ""})
    return rows


@task(name="evaluate", cache_policy=NONE, retries=1, retry_delay_seconds=5)
def evaluate(spec: JobSpec, base_model: str, adapter: str | None = None, label: str = "candidate"):
    """Evaluate through the eval cache: the same weights, suites and settings are evaluated once."""
    from lexforge.evaluate.cache import evaluate_cached

    report = evaluate_cached(spec, base_model=base_model, adapter=adapter, label=label)
    d = report.to_dict()
    cache = (d.get("extra") or {}).get("cache") or {}
    get_run_logger().info("eval %s: blended=%s %s closed=%s open=%s engine=%s%s", label, d.get("blended"),
                          _ci(d.get("blended_ci")), d.get("closed"), d.get("open"), d.get("engine"),
                          " (stored report of the same weights, suites and settings)" if cache.get("hit") else "")
    create_table_artifact(key=artifact_key(f"eval-{label}", spec), table=report_rows(d),
                          description=f"eval of {label} ({spec.name}); open metric: {d.get('open_metric')}; "
                                      f"engine: {d.get('engine')}")
    return report


@task(name="evaluate-champion", cache_policy=NONE, retries=1, retry_delay_seconds=5)
def evaluate_champion(spec: JobSpec):
    """The current @champion on this spec's suites and settings (cached: usually evaluated as a candidate
    before), or None when there is no champion (or no registry)."""
    from lexforge.registry import RegistryError, resolve_servable

    log = get_run_logger()
    if not spec.tracking.resolved_uri():
        return None
    try:
        s = resolve_servable(spec.promotion.registered_model, "champion",
                             tracking_uri=spec.tracking.resolved_uri())
    except RegistryError as e:
        log.info("no champion to compare with (%s): the base model is the baseline", e)
        return None
    return evaluate.fn(spec, str(s.base_model), str(s.adapter_path) if s.adapter_path else None, label="champion")


@task(name="choose-checkpoint", cache_policy=NONE)
def choose_checkpoint(spec: JobSpec, trained, prepared):
    """(the weights to register as a TrainResult, the choice record) per ``eval.select_checkpoint``."""
    from lexforge.evaluate.checkpoints import select_checkpoint

    get = trained.get if isinstance(trained, dict) else lambda k, default=None: getattr(trained, k, default)
    choice = select_checkpoint(spec, get("output_dir"), int(get("steps") or 0), prepared.heldout_path,
                               heldout_digest=prepared.digests.get("heldout"))
    get_run_logger().info("checkpoint choice (%s): step %s: %s", choice.mode, choice.chosen_step, choice.reason)
    if isinstance(trained, dict) or str(choice.output_dir) == str(get("output_dir")):
        return trained, choice.to_dict()
    from pathlib import Path

    details = {**(trained.details or {}), "checkpoint_choice": choice.to_dict()}
    return dataclasses.replace(trained, output_dir=Path(choice.output_dir), details=details), choice.to_dict()


def trained_model(trained) -> tuple[str, str | None]:
    """(base_model, adapter) of a TrainResult (or its dict form) for run_eval."""
    get = trained.get if isinstance(trained, dict) else lambda k, default=None: getattr(trained, k, default)
    out = get("output_dir")
    if get("is_adapter", True):
        return str(get("base_model")), str(out) if out else None
    return str(out), None


def base_model_of(spec: JobSpec, trained) -> str:
    """The model the run was fine-tuned from (the baseline when there is no champion)."""
    get = trained.get if isinstance(trained, dict) else lambda k, default=None: getattr(trained, k, default)
    return str(get("base_model") or spec.model.base)
