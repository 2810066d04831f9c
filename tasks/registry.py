"""register / decide / promote / rollback: MLflow model registry steps with the decision shown in the UI."""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from lexforge.config import JobSpec
from tasks.dashboard import artifact_key, mlflow_base


def _model_url(spec: JobSpec, name: str, version) -> str | None:
    base = mlflow_base(spec)
    return f"{base}/#/models/{name}/versions/{version}" if base else None


@task(name="register", cache_policy=NONE, retries=1, retry_delay_seconds=5)
def register(spec: JobSpec, trained, report, choice: dict | None = None):
    from lexforge.registry import register_model

    mv = register_model(spec, trained, report, selection=choice if choice and choice.get("mode") == "best" else None)
    url = _model_url(spec, mv.name, mv.version)
    get_run_logger().info("registered %s version %s (%s)", mv.name, mv.version, mv.source_uri)
    create_markdown_artifact(
        key=artifact_key("model-version", spec), description=f"registered model of {spec.name}",
        markdown=(f"# Registered `{mv.name}` v{mv.version}\n\n- MLflow: " + (f"[{mv.name} v{mv.version}]({url})" if url else "-")
                  + f"\n- source: `{mv.source_uri}`\n- tags: `{json.dumps(getattr(mv, 'tags', {}) or {})[:3000]}`\n"),
    )
    return mv


def _decision_markdown(spec: JobSpec, name: str, version, decision, promoted: bool) -> str:
    from lexforge.registry import decision_markdown

    url = _model_url(spec, name, version)
    if promoted:
        state = f"v{version} is now **@champion**"
    elif decision.promote:
        state = f"v{version} passed the gate but was not promoted (promotion.auto_promote is off)"
    else:
        state = f"v{version} stays @challenger; the champion is kept"
    link = f" ([MLflow]({url}))" if url else ""
    return f"# Promotion decision `{name}`{link}\n\n{state}\n\n{decision_markdown(decision)}\n"


@task(name="decide-promotion", cache_policy=NONE)
def decide(spec: JobSpec, name: str, version, reports: dict | None = None):
    """Gate ``version`` against the champion (or the base model); ``reports``: the eval reports at hand
    (candidate / base / champion), so nothing is evaluated or downloaded twice."""
    from lexforge.registry import comparison_rows, decide_promotion

    decision = decide_promotion(spec, name, version, reports=reports)
    get_run_logger().info("promotion decision for %s v%s (vs %s): promote=%s verdict=%s %s", name, version,
                          decision.baseline, decision.promote, decision.verdict, decision.reasons)
    create_table_artifact(key=artifact_key("model-comparison", spec), table=comparison_rows(decision),
                          description=f"base model, champion and candidate v{version} of {name}, with intervals")
    return decision


@task(name="promote", cache_policy=NONE)
def promote(spec: JobSpec, name: str, version, decision) -> bool:
    """Move @champion to ``version`` when the decision says so and the spec allows automatic promotion."""
    from lexforge.registry import promote as set_champion

    do = bool(decision.promote) and spec.promotion.auto_promote
    if do:
        set_champion(name, version, decision, by="prefect:retrain", tracking_uri=spec.tracking.resolved_uri())
    create_markdown_artifact(key=artifact_key("promotion-decision", spec), description=f"promotion of {name} v{version}",
                             markdown=_decision_markdown(spec, name, version, decision, do))
    return do


@task(name="rollback", cache_policy=NONE)
def rollback(spec: JobSpec, name: str):
    from lexforge.registry import rollback as registry_rollback

    mv = registry_rollback(name, by="prefect:promote", tracking_uri=spec.tracking.resolved_uri())
    create_markdown_artifact(key=artifact_key("promotion-decision", spec), description=f"rollback of {name}",
                             markdown=f"# Rollback\n\n`{name}` @champion -> v{mv.version} (previous champion)\n")
    return mv
