"""The link to the Ray Serve app (lexforge.serve): register a finished adapter under the job's
``fine_tuned_model`` name, and proxy OpenAI inference calls so one ``openai`` client (one base_url)
both fine-tunes and chats with the result."""

from __future__ import annotations

from typing import Any

import httpx


class ServeError(RuntimeError):
    pass


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

    def register_adapter(self, name: str, path: str, base_model: str | None = None) -> dict[str, Any]:
        body = {"name": name, "path": path}
        if base_model:
            body["base_model"] = base_model
        try:
            r = self.http.post("/admin/adapters", json=body, headers=self._admin_headers, timeout=300)
        except httpx.HTTPError as e:
            raise ServeError(f"serving app {self.base_url} unreachable: {type(e).__name__}: {e}") from None
        if r.status_code >= 400:
            raise ServeError(f"serving app refused adapter {name!r}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else {}
