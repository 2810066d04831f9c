"""Bearer API keys: the one place that parses key lists and checks a presented key (both HTTP surfaces, the
fine-tuning API and the serving app, and every client that looks up a key to send, call this module).

Rules, the same everywhere:

- a key list is comma- or newline-separated; blanks and ``#`` comment entries are ignored;
- every configured key is at least :data:`MIN_KEY_LEN` characters (a short key is a configuration error);
- servers keep only sha256 digests of the keys; a presented ``Authorization: Bearer <key>`` is hashed and
  compared with every allowed digest in constant time (so timing says nothing about which key matched);
- logs only ever show an 8-character fingerprint of a digest, never a key.

Environment variables (documented in docs/security.md):

- ``LEXFORGE_API_KEYS``: client keys of the serving app and of the fine-tuning API;
- ``LEXFORGE_ADMIN_API_KEYS``: keys for the serving app's ``/admin`` routes (empty = the client keys);
- ``LEXFORGE_SERVE_ADMIN_KEY`` / ``LEXFORGE_SERVE_API_KEY``: the keys a *client* of the serving app
  (the fine-tuning API, the Prefect deploy task) sends, when they differ from the lists above.

Credentials lexforge *sends* to the shared platform services come from their own standard variables:
``PREFECT_API_AUTH_STRING`` (Prefect basic auth, :func:`prefect_auth_string`), ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (read by the MLflow client itself), and the Ray token (:mod:`lexforge.ray_auth`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

API_KEYS_ENV = "LEXFORGE_API_KEYS"
ADMIN_KEYS_ENV = "LEXFORGE_ADMIN_API_KEYS"
SERVE_ADMIN_KEY_ENV = "LEXFORGE_SERVE_ADMIN_KEY"
SERVE_API_KEY_ENV = "LEXFORGE_SERVE_API_KEY"
MIN_KEY_LEN = 16


class AuthConfigError(ValueError):
    """A key list is unusable (short key, missing keys file)."""


class KeyRejected(Exception):
    """A request's key was refused. ``reason``: ``missing`` (no Bearer key), ``invalid`` (unknown key) or
    ``forbidden`` (a valid key that may not use this route)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---- parsing ------------------------------------------------------------------------------------------------


def split_keys(text: str) -> list[str]:
    """The keys in a comma/newline separated list (blanks and ``#`` comments dropped)."""
    out = []
    for raw in text.replace("\n", ",").split(","):
        k = raw.strip()
        if k and not k.startswith("#"):
            out.append(k)
    return out


def keys_from_env(env_var: str = API_KEYS_ENV) -> list[str]:
    return split_keys(os.environ.get(env_var, ""))


def check_key_lengths(keys: Sequence[str], where: str) -> None:
    short = sum(1 for k in keys if len(k) < MIN_KEY_LEN)
    if short:
        raise AuthConfigError(
            f"{short} API key(s) shorter than {MIN_KEY_LEN} characters in {where}; use long random keys "
            f"(e.g. `openssl rand -hex 24`)")


def load_keys(env_var: str = API_KEYS_ENV, keys_file: str | Path | None = None) -> list[str]:
    """The raw keys of ``$env_var`` plus ``keys_file`` (one per line or comma separated), length-checked."""
    keys = keys_from_env(env_var)
    where = f"${env_var}"
    if keys_file:
        p = Path(keys_file)
        if not p.is_file():
            raise AuthConfigError(f"API keys file {p} not found")
        keys += split_keys(p.read_text(encoding="utf-8"))
        where += f" / {p}"
    check_key_lengths(keys, where)
    return keys


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def digests(keys: Iterable[str]) -> list[str]:
    return sorted({digest(k) for k in keys})


def load_key_digests(env_var: str = API_KEYS_ENV, keys_file: str | Path | None = None) -> list[str]:
    """Digests of :func:`load_keys` (what a server keeps)."""
    return digests(load_keys(env_var, keys_file))


def fingerprint(key_digest: str) -> str:
    """A short, non-reversible id of a key for audit logs."""
    return key_digest[:8]


# ---- checking -----------------------------------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def match_key(token: str | None, key_digests: Sequence[str]) -> str | None:
    """The digest of ``token`` if it is one of the allowed keys, else None. Compares with every allowed
    digest (constant time each), so neither the result nor the timing says which one matched."""
    if not token:
        return None
    d = digest(token)
    ok = None
    for allowed in key_digests:
        if hmac.compare_digest(d, allowed):
            ok = allowed
    return ok


def authorize(authorization: str | None, allowed: Sequence[str], known: Sequence[str] = ()) -> str:
    """Fingerprint of the Bearer key in ``authorization`` if its digest is in ``allowed``.

    Raises :class:`KeyRejected`: ``missing`` without a Bearer key, ``forbidden`` for a key in ``known`` (valid
    elsewhere, e.g. a client key on an admin route) but not in ``allowed``, ``invalid`` otherwise."""
    token = bearer_token(authorization)
    if token is None:
        raise KeyRejected("missing")
    matched = match_key(token, allowed)
    if matched is None:
        raise KeyRejected("forbidden" if known and match_key(token, known) else "invalid")
    return fingerprint(matched)


# ---- client side --------------------------------------------------------------------------------------------


def first_key(*env_vars: str) -> str:
    """The first key of the first of ``env_vars`` that has one ("" if none). Never logged."""
    for var in env_vars:
        keys = keys_from_env(var)
        if keys:
            return keys[0]
    return ""


def serve_admin_key() -> str:
    """The key a client sends to the serving app's ``/admin`` routes: ``$LEXFORGE_SERVE_ADMIN_KEY``, else
    the first of the serving app's own lists ``$LEXFORGE_ADMIN_API_KEYS``, ``$LEXFORGE_API_KEYS``."""
    return first_key(SERVE_ADMIN_KEY_ENV, ADMIN_KEYS_ENV, API_KEYS_ENV)


def prefect_auth_string() -> str:
    """``$PREFECT_API_AUTH_STRING`` (``user:password``, Prefect's basic auth; empty = none), checked for its
    form. The fine-tuning API hands it to Prefect's client (the Prefect CLI and workers read it themselves)."""
    raw = os.environ.get("PREFECT_API_AUTH_STRING", "")
    if raw and ":" not in raw:
        raise AuthConfigError("PREFECT_API_AUTH_STRING must look like user:password")
    return raw
