"""deploy: make the serving app pick up the current @champion (no restart)."""

from __future__ import annotations

import os

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from lexforge import auth
from lexforge.config import JobSpec
from tasks.dashboard import artifact_key


def serve_url() -> str | None:
    return (os.environ.get("LEXFORGE_SERVE_URL") or "").rstrip("/") or None


def admin_key() -> str:
    """The key for /admin routes (:func:`lexforge.auth.serve_admin_key`: $LEXFORGE_SERVE_ADMIN_KEY, else the
    first of $LEXFORGE_ADMIN_API_KEYS or $LEXFORGE_API_KEYS, the serving app's own key lists). Never logged."""
    return auth.serve_admin_key()


@task(name="reload-champion", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def reload_champion(spec: JobSpec) -> dict:
    """POST /admin/reload-champion on the serving app ($LEXFORGE_SERVE_URL; key: :func:`admin_key`).

    Without a serving URL the step is skipped (and says so): the registry alias is the source of truth and a
    serving app started later loads the champion itself."""
    from lexforge.registry import resolve_servable

    log = get_run_logger()
    servable = resolve_servable(spec.promotion.registered_model, "champion", tracking_uri=spec.tracking.resolved_uri())
    url = serve_url()
    if url is None:
        msg = (f"@champion of {spec.promotion.registered_model} is v{servable.version}; no serving app configured "
               "($LEXFORGE_SERVE_URL unset), so nothing to reload")
        log.warning(msg)
        out = {"reloaded": False, "version": servable.version, "message": msg}
    else:
        key = admin_key()
        r = httpx.post(f"{url}/admin/reload-champion", headers={"Authorization": f"Bearer {key}"} if key else {},
                       timeout=600)
        r.raise_for_status()
        out = {"reloaded": True, "version": servable.version, "response": r.json() if r.content else {}}
        log.info("serving app at %s now serves %s v%s", url, spec.serve.served_name, servable.version)
    create_markdown_artifact(key=artifact_key("deployment", spec), description=f"serving of {spec.serve.served_name}",
                             markdown=(f"# Deploy `{spec.serve.served_name}`\n\n- champion: "
                                       f"`{spec.promotion.registered_model}` v{servable.version}\n- serving app: "
                                       f"{url or '_(not configured)_'}\n- reloaded: {out['reloaded']}\n"))
    return out
