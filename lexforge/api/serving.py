"""The link to the Ray Serve app (lexforge.serve): register a finished adapter under the job's
``fine_tuned_model`` name, and proxy OpenAI inference calls so one ``openai`` client (one base_url)
both fine-tunes and chats with the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


class ServeError(RuntimeError):
    """The serving app is unreachable or refused the adapter (retried later)."""


class ServeRejected(ServeError):
    """The serving app refused the adapter for a reason retrying cannot fix (bad name, invalid adapter)."""


class BaseMismatch(ServeRejected):
    """The serving app runs a different base model (not retried)."""


class ServeClient:
    def __init__(self, base_url: str, api_key: str = "", admin_key: str = "", timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self._api_key = api_key
        self._admin_headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def inference_headers(self, caller_authorization: str | None) -> dict[str, str]:
        """Our own serve key when configured, else the caller's Bearer header (shared LEXFORGE_API_KEYS)."""
        if self._api_key:
            return {"Authorization": f"Bearer {self._api_key}"}
        return {"Authorization": caller_authorization} if caller_authorization else {}

    def close(self) -> None:
        self.http.close()

    def served_base(self) -> str | None:
        """Model id of the base model the serving app runs (its directory name; from /v1/models, which shows no
        paths), None when it cannot tell."""
        try:
            r = self.http.get("/v1/models", headers=self.inference_headers(None) or self._admin_headers, timeout=30)
            if r.status_code >= 400:
                return None
            for m in r.json().get("data", []):
                if m.get("kind") == "base" and m.get("parent") is None:
                    return m.get("id")
        except (httpx.HTTPError, ValueError):
            return None
        return None

    def register_adapter(self, name: str, path: str, version: str, base_model: str | None = None) -> dict[str, Any]:
        """``POST /admin/adapters`` (lexforge.serve): load the adapter and serve it under ``name``.
        Raises :class:`BaseMismatch` when the app runs another base model (retrying cannot help)."""
        if base_model:
            served = self.served_base()
            if served and served != Path(base_model).expanduser().resolve().name and served != Path(base_model).name:
                raise BaseMismatch(f"the serving app runs base model {served}, but this model was fine-tuned from "
                                   f"{base_model}; start a server for that base (lexforge serve --base ...)")
        try:
            r = self.http.post("/admin/adapters", json={"name": name, "path": path, "version": version},
                               headers=self._admin_headers, timeout=300)
        except httpx.HTTPError as e:
            raise ServeError(f"serving app {self.base_url} unreachable: {type(e).__name__}: {e}") from None
        if r.status_code in (400, 409, 422):
            raise ServeRejected(f"serving app rejected adapter {name!r}: {r.status_code} {r.text[:500]}")
        if r.status_code >= 400:
            raise ServeError(f"serving app refused adapter {name!r}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else {}
