"""Jobs as Prefect flow runs, through Prefect's own client (``PREFECT_API_URL``).

The API is control plane, so it uses ``prefect.client`` directly: look up the deployment, create a flow run
(with the job id as idempotency key), read it, cancel it, and read its state history and logs (the job's
events). Prefect's client retries busy answers (429/502/503/408) and dropped connections itself. Results are
plain JSON dicts (``model_dump(mode="json")`` of Prefect's objects), so the service stays independent of
Prefect's types.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any
from uuid import UUID

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
log = logging.getLogger(__name__)


class OrchestratorError(RuntimeError):
    """Prefect is unreachable or refused a request; the message says which and how to fix it."""


def parse_ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class PrefectJobs:
    def __init__(self, api_url: str, deployment: str, auth_string: str | None = None, timeout: float = 30.0):
        if not api_url:
            raise OrchestratorError("PREFECT_API_URL is not set: start the stack (`lexforge up`) or export it")
        self.api_url = api_url.rstrip("/")
        self.deployment = deployment
        self._auth_string = auth_string
        self._timeout = timeout
        self._client = None
        self._lock = threading.Lock()
        self._deployment_id: UUID | None = None

    # ---- client -----------------------------------------------------------------------------------------------
    def _prefect(self):
        with self._lock:
            if self._client is None:
                from prefect.client.orchestration import SyncPrefectClient

                client = SyncPrefectClient(self.api_url, auth_string=self._auth_string,
                                           httpx_settings={"timeout": self._timeout})
                client.__enter__()
                self._client = client
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.__exit__(None, None, None)
                finally:
                    self._client = None

    def _call(self, what: str, fn):
        """Run one client call; turn transport failures into :class:`OrchestratorError`, 404 into KeyError."""
        from prefect.exceptions import ObjectNotFound

        try:
            return fn(self._prefect())
        except ObjectNotFound:
            raise KeyError(what) from None
        except httpx.HTTPStatusError as e:
            raise OrchestratorError(f"Prefect API {self.api_url}: {what} -> {e.response.status_code}: "
                                    f"{e.response.text[:500]}") from None
        except (httpx.HTTPError, OSError) as e:
            raise OrchestratorError(f"Prefect API {self.api_url} unreachable ({type(e).__name__}: {e})") from None

    # ---- deployment and runs ----------------------------------------------------------------------------------
    def deployment_id(self) -> UUID:
        if self._deployment_id is None:
            try:
                dep = self._call(f"deployment {self.deployment}", lambda c: c.read_deployment_by_name(self.deployment))
            except KeyError:
                raise OrchestratorError(
                    f"Prefect deployment {self.deployment!r} not found at {self.api_url}: deploy the retrain flow "
                    f"(`lexforge deploy-flows`, see docs/api.md) or set LEXFORGE_API_DEPLOYMENT") from None
            self._deployment_id = dep.id
        return self._deployment_id

    def create_run(self, parameters: dict[str, Any], name: str, tags: list[str]) -> dict[str, Any]:
        """A flow run of the deployment; ``name`` (the job id) is the idempotency key, so a retried create
        returns the same run instead of starting the job twice."""
        dep_id = self.deployment_id()
        try:
            run = self._call("create flow run", lambda c: c.create_flow_run_from_deployment(
                dep_id, parameters=parameters, name=name, tags=tags, idempotency_key=name))
        except KeyError:
            self._deployment_id = None  # deployment was deleted/recreated: look it up again next time
            raise OrchestratorError(f"Prefect deployment {self.deployment!r} disappeared; retry") from None
        return run.model_dump(mode="json")

    def read_run(self, flow_run_id: str) -> dict[str, Any]:
        return self._call(f"flow run {flow_run_id}", lambda c: c.read_flow_run(UUID(flow_run_id))).model_dump(mode="json")

    def cancel_run(self, flow_run_id: str) -> dict[str, Any]:
        """Ask Prefect to cancel: a run not yet started goes straight to CANCELLED, a running one to
        CANCELLING (its worker then stops the process and reports CANCELLED)."""
        from prefect.states import Cancelled, Cancelling

        run = self.read_run(flow_run_id)
        state_type = (run.get("state") or {}).get("type")
        if state_type in TERMINAL_STATES or state_type == "CANCELLING":
            return run
        msg = "cancelled through the fine-tuning API"
        state = Cancelled(message=msg) if state_type in ("SCHEDULED", "PAUSED") else Cancelling(message=msg)
        self._call("cancel flow run", lambda c: c.set_flow_run_state(UUID(flow_run_id), state, force=True))
        return self.read_run(flow_run_id)

    def states(self, flow_run_id: str) -> list[dict[str, Any]]:
        return [s.model_dump(mode="json") for s in
                self._call("flow run states", lambda c: c.read_flow_run_states(UUID(flow_run_id)))]

    def logs(self, flow_run_id: str, offset: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """The run's logs, oldest first, from position ``offset`` on."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
        from prefect.client.schemas.sorting import LogSort

        flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)]))
        out: list[dict[str, Any]] = []
        while True:
            batch = self._call("flow run logs", lambda c: c.read_logs(
                log_filter=flt, limit=limit, offset=offset + len(out), sort=LogSort.TIMESTAMP_ASC))
            out.extend(rec.model_dump(mode="json") for rec in batch)
            if len(batch) < limit:
                return out
