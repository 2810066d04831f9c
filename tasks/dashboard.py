"""Helpers that publish run information to the Prefect UI (artifact keys, links). Used by the tasks only."""

from __future__ import annotations

import re

from lexforge.config import JobSpec


def artifact_key(kind: str, spec: JobSpec) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")
    return f"{kind}-{slug}"[:100]


def mlflow_base(spec: JobSpec) -> str | None:
    uri = spec.tracking.resolved_uri()
    return uri.rstrip("/") if uri and uri.startswith(("http://", "https://")) else None


def mlflow_run_url(spec: JobSpec, run_id: str | None) -> str | None:
    base = mlflow_base(spec)
    if not base or not run_id:
        return None
    try:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(tracking_uri=base).get_run(run_id).info.experiment_id
    except Exception:  # the link is a convenience; MLflow may be unreachable from here
        return f"{base}/#/runs/{run_id}"
    return f"{base}/#/experiments/{exp}/runs/{run_id}"


def ray_job_url(dashboard: str, submission_id: str) -> str:
    return f"{dashboard.rstrip('/')}/#/jobs/{submission_id}"


def md_table(rows: list[dict]) -> str:
    if not rows:
        return "_(none)_"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)
