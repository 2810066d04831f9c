"""Configuration of the fine-tuning API, read from the environment (never from request data).

Secrets (API keys, the serve admin key) are held here but never logged: ``__repr__`` masks them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lexforge import auth
from lexforge.config import lexforge_home

ENV_KEYS = auth.API_KEYS_ENV


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be an integer") from None


def _keys_from_env() -> tuple[str, ...]:
    return tuple(auth.keys_from_env(ENV_KEYS))


@dataclass
class ApiSettings:
    #: Accepted Bearer keys (``LEXFORGE_API_KEYS``, comma separated). Empty = the app refuses to start.
    api_keys: tuple[str, ...] = field(default_factory=_keys_from_env, repr=False)
    #: Where uploaded files, job specs and results go (``LEXFORGE_API_STORE``; default the lexforge store).
    store_root: str = field(default_factory=lambda: os.environ.get("LEXFORGE_API_STORE", ""))
    s3_endpoint_url: str | None = field(default_factory=lambda: os.environ.get("LEXFORGE_S3_ENDPOINT_URL") or None)
    #: sqlite metadata db (files, jobs -> flow run ids).
    db_path: Path = field(default_factory=lambda: Path(os.environ.get(
        "LEXFORGE_API_DB", str(lexforge_home() / "api" / "api.db"))))
    #: Largest accepted upload in bytes (``LEXFORGE_API_MAX_FILE_BYTES``, default 512 MiB).
    max_file_bytes: int = field(default_factory=lambda: _env_int("LEXFORGE_API_MAX_FILE_BYTES", 512 * 1024 * 1024))
    #: Prefect API (``PREFECT_API_URL``) and the deployment a job runs as (``flow_name/deployment_name``).
    prefect_api_url: str = field(default_factory=lambda: os.environ.get("PREFECT_API_URL", ""))
    #: Prefect server basic auth ``user:password`` (``PREFECT_API_AUTH_STRING``) for shared servers.
    prefect_auth_string: str = field(default_factory=lambda: auth.prefect_auth_string(),
                                     repr=False)
    deployment: str = field(default_factory=lambda: os.environ.get("LEXFORGE_API_DEPLOYMENT",
                                                                   "retrain/lexforge-retrain"))
    #: Flow run parameters besides ``spec_path`` (JSON; ``LEXFORGE_API_RUN_PARAMS``). API jobs do not switch
    #: the serving champion: their model is served under its own ``fine_tuned_model`` name.
    run_parameters: dict = field(default_factory=lambda: json.loads(
        os.environ.get("LEXFORGE_API_RUN_PARAMS", "") or '{"deploy": false}'))
    #: Ray Serve app (OpenAI-compatible); finished adapters are registered there and chat is proxied to it.
    serve_url: str = field(default_factory=lambda: os.environ.get("LEXFORGE_SERVE_URL", ""))
    #: Key for the serve app's inference routes; empty = forward the caller's own Bearer key.
    serve_api_key: str = field(default_factory=lambda: os.environ.get(auth.SERVE_API_KEY_ENV, "").strip(), repr=False)
    #: Key for the serve app's admin routes (adapter registration).
    serve_admin_key: str = field(default_factory=lambda: os.environ.get(auth.SERVE_ADMIN_KEY_ENV, "").strip(), repr=False)
    #: Base models clients may name (comma separated); empty = every model under $LEXFORGE_HOME/models.
    allowed_models: tuple[str, ...] = field(default_factory=lambda: tuple(
        m.strip() for m in os.environ.get("LEXFORGE_API_MODELS", "").split(",") if m.strip()))
    #: Extra ``dotted.key=value`` overrides applied to every job spec (site defaults: resources, tracking...).
    spec_overrides: tuple[str, ...] = field(default_factory=lambda: tuple(
        o.strip() for o in os.environ.get("LEXFORGE_API_SPEC_OVERRIDES", "").split(";") if o.strip()))
    #: How often the background reconciler refreshes unfinished jobs (seconds).
    poll_interval_s: float = field(default_factory=lambda: float(os.environ.get("LEXFORGE_API_POLL_S", "2")))
    organization_id: str = field(default_factory=lambda: os.environ.get("LEXFORGE_API_ORG", "org-lexforge"))

    def resolved_store_root(self) -> str:
        return self.store_root or str(lexforge_home() / "store")

    def validate(self) -> None:
        if not self.api_keys:
            raise ValueError(f"no API keys configured: set {ENV_KEYS}=key1,key2 (the API never runs unauthenticated)")
        auth.check_key_lengths(self.api_keys, f"${ENV_KEYS}")  # an AuthConfigError is a ValueError
        if self.deployment.count("/") != 1:
            raise ValueError(f"LEXFORGE_API_DEPLOYMENT={self.deployment!r} must look like flow_name/deployment_name")
