"""promote: gate a registered version against the champion and move @champion (or roll back)."""

from __future__ import annotations

from prefect import flow

from tasks.registry import decide, promote as promote_task, rollback as rollback_task
from tasks.spec import load_job_spec


@flow(name="promote", description="Promote a registered model version if it beats the champion, or roll back.")
def promote(spec_path: str, overrides: list[str] | None = None, version: str | None = None,
            rollback: bool = False) -> dict:
    spec = load_job_spec(spec_path, overrides)
    name = spec.promotion.registered_model
    if rollback:
        mv = rollback_task(spec, name)
        return {"model": name, "champion": str(mv.version), "rolled_back": True}
    if version is None:
        raise ValueError("give version=<registered version> to promote, or rollback=true")
    decision = decide(spec, name, version)
    promoted = promote_task(spec, name, version, decision)
    return {"model": name, "version": str(version), "promoted": promoted, "reasons": list(decision.reasons or [])}
