"""deploy: point the serving app at the current @champion (hot reload, no restart)."""

from __future__ import annotations

from prefect import flow

from tasks.serve import reload_champion
from tasks.spec import load_job_spec


@flow(name="deploy", description="Reload the serving app so spec.serve.served_name serves the current @champion.")
def deploy(spec_path: str, overrides: list[str] | None = None) -> dict:
    spec = load_job_spec(spec_path, overrides)
    return reload_champion(spec)
