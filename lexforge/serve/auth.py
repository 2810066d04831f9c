"""API keys: read from ``$LEXFORGE_API_KEYS`` (comma separated) and/or a keys file, kept only as sha256
digests. Raw keys never leave the process that read them: the Ray Serve replicas receive digests, and
logs only ever show an 8-character fingerprint."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

API_KEYS_ENV = "LEXFORGE_API_KEYS"
ADMIN_KEYS_ENV = "LEXFORGE_ADMIN_API_KEYS"
MIN_KEY_LEN = 16

#: Key digests of the serving replica in this process (set by the replica's constructor). Kept on this module
#: (imported by reference everywhere) because Ray pickles the ingress class and its app by value.
REPLICA_KEYS: dict[str, list[str]] = {"api": [], "admin": []}


class AuthConfigError(ValueError):
    pass


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def fingerprint(key_digest: str) -> str:
    """A short, non-reversible id of a key for audit logs."""
    return key_digest[:8]


def _split(text: str) -> list[str]:
    return [k.strip() for k in text.replace("\n", ",").split(",") if k.strip() and not k.strip().startswith("#")]


def load_key_digests(env_var: str = API_KEYS_ENV, keys_file: str | Path | None = None) -> list[str]:
    """Digests of the keys in ``$env_var`` plus ``keys_file`` (one per line or comma separated)."""
    keys = _split(os.environ.get(env_var, ""))
    if keys_file:
        p = Path(keys_file)
        if not p.is_file():
            raise AuthConfigError(f"API keys file {p} not found")
        keys += _split(p.read_text(encoding="utf-8"))
    short = [i for i, k in enumerate(keys) if len(k) < MIN_KEY_LEN]
    if short:
        raise AuthConfigError(
            f"{len(short)} API key(s) shorter than {MIN_KEY_LEN} characters in ${env_var}"
            f"{' / ' + str(keys_file) if keys_file else ''}; use long random keys (e.g. `openssl rand -hex 24`)"
        )
    return sorted({digest(k) for k in keys})


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def match_key(token: str | None, key_digests: list[str]) -> str | None:
    """The digest of ``token`` if it is one of the allowed keys (constant-time comparison), else None."""
    if not token:
        return None
    d = digest(token)
    ok = None
    for allowed in key_digests:
        if hmac.compare_digest(d, allowed):
            ok = allowed
    return ok
