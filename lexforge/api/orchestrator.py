"""Jobs as Prefect flow runs, through Prefect's REST API (``PREFECT_API_URL``).

The engine (``lexforge/``) never imports prefect, so this is a small httpx client for the handful of
endpoints the API needs: look up a deployment, create a flow run, read it, cancel it, and read its
state history and logs (the job's events).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import httpx

# Prefect state type -> OpenAI fine-tuning job status.
STATUS_BY_STATE = {
    "SCHEDULED": "queued",
    "PENDING": "queued",
    "PAUSED": "queued",
    "RUNNING": "running",
    "COMPLETED": "succeeded",
    "FAILED": "failed",
    "CRASHED": "failed",
    "CANCELLING": "cancelled",
    "CANCELLED": "cancelled",
}
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
TRANSIENT_STATUS = {429, 502, 503, 504}
log = logging.getLogger(__name__)


class OrchestratorError(RuntimeError):
    """Prefect is unreachable or refused a request; the message says which and how to fix it."""


def parse_ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class PrefectJobs:
    def __init__(self, api_url: str, deployment: str, timeout: float = 15.0):
        if not api_url:
            raise OrchestratorError("PREFECT_API_URL is not set: start the stack (`lexforge up`) or export it")
        self.api_url = api_url.rstrip("/")
        self.deployment = deployment
        from lexforge.auth import prefect_basic_auth

        self._http = httpx.Client(base_url=self.api_url, timeout=timeout, auth=prefect_basic_auth())
        self._deployment_id: str | None = None

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, *, attempts: int = 4, **kw) -> Any:
        """One Prefect API call. Transient answers (429/502/503/504: the server is busy, e.g. its database is
        locked under load) and dropped connections are retried with backoff; callers make POSTs safe to repeat
        (create_run sends an idempotency key)."""
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                r = self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError) as e:
                if not last:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                raise OrchestratorError(f"Prefect API {self.api_url} unreachable ({type(e).__name__}: {e})") from None
            except httpx.HTTPError as e:
                raise OrchestratorError(f"Prefect API {self.api_url} unreachable ({type(e).__name__}: {e})") from None
            if r.status_code in TRANSIENT_STATUS and not last:
                log.warning("Prefect API %s %s -> %s; retrying", method, path, r.status_code)
                time.sleep(0.5 * 2 ** attempt)
                continue
            break
        if r.status_code == 404:
            raise KeyError(path)
        if r.status_code >= 400:
            raise OrchestratorError(f"Prefect API {method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    def deployment_id(self) -> str:
        if self._deployment_id is None:
            flow_name, dep_name = self.deployment.split("/", 1)
            try:
                dep = self._call("GET", f"/deployments/name/{flow_name}/{dep_name}")
            except KeyError:
                raise OrchestratorError(
                    f"Prefect deployment {self.deployment!r} not found at {self.api_url}: deploy the retrain flow "
                    f"(see docs/api.md) or set LEXFORGE_API_DEPLOYMENT") from None
            self._deployment_id = dep["id"]
        return self._deployment_id

    def create_run(self, parameters: dict[str, Any], name: str, tags: list[str]) -> dict[str, Any]:
        dep_id = self.deployment_id()
        try:
            return self._call("POST", f"/deployments/{dep_id}/create_flow_run",
                              json={"parameters": parameters, "name": name, "tags": tags,
                                    "idempotency_key": name})  # a retried POST returns the same run
        except KeyError:
            self._deployment_id = None  # deployment was deleted/recreated: look it up again next time
            raise OrchestratorError(f"Prefect deployment {self.deployment!r} disappeared; retry") from None

    def read_run(self, flow_run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/flow_runs/{flow_run_id}")

    def cancel_run(self, flow_run_id: str) -> dict[str, Any]:
        """Ask Prefect to cancel: a run not yet started goes straight to CANCELLED, a running one to
        CANCELLING (its worker then stops the process and reports CANCELLED)."""
        run = self.read_run(flow_run_id)
        state_type = (run.get("state") or {}).get("type")
        if state_type in TERMINAL_STATES or state_type == "CANCELLING":
            return run
        target = ("CANCELLED", "Cancelled") if state_type in ("SCHEDULED", "PAUSED") else ("CANCELLING", "Cancelling")
        self._call("POST", f"/flow_runs/{flow_run_id}/set_state", json={
            "state": {"type": target[0], "name": target[1], "message": "cancelled through the fine-tuning API"},
            "force": True,
        })
        return self.read_run(flow_run_id)

    def states(self, flow_run_id: str) -> list[dict[str, Any]]:
        return self._call("GET", "/flow_run_states/", params={"flow_run_id": flow_run_id}) or []

    def logs(self, flow_run_id: str, offset: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """The run's logs, oldest first, from position ``offset`` on."""
        out: list[dict[str, Any]] = []
        while True:
            batch = self._call("POST", "/logs/filter", json={
                "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC",
                "limit": limit, "offset": offset + len(out)})
            out.extend(batch or [])
            if not batch or len(batch) < limit:
                return out
