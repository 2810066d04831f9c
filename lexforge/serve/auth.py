"""The serving app's keys: the digests each replica holds, and its key check (401/403 in the OpenAI shape).

Parsing and checking rules are :mod:`lexforge.auth` (the one owner, shared with the fine-tuning API); this
module only holds the replica's state. Raw keys never leave the process that read them: the Ray Serve
replicas receive digests, and logs only ever show an 8-character fingerprint."""

from __future__ import annotations

from lexforge import auth
from lexforge.auth import (ADMIN_KEYS_ENV, API_KEYS_ENV, MIN_KEY_LEN, AuthConfigError, digest,  # noqa: F401
                           fingerprint, load_key_digests)

#: Key digests of the serving replica in this process (set by the replica's constructor). Kept on this module
#: (imported by reference everywhere) because Ray pickles the ingress class and its app by value.
REPLICA_KEYS: dict[str, list[str]] = {"api": [], "admin": []}


def set_replica_keys(api_digests: list[str], admin_digests: list[str]) -> None:
    REPLICA_KEYS["api"] = list(api_digests)
    REPLICA_KEYS["admin"] = list(admin_digests)


def check_key(authorization: str | None, admin: bool) -> str:
    """Fingerprint of the presented bearer key, or an OpenAI-shaped 401/403 APIError. Admin routes take the
    admin keys ($LEXFORGE_ADMIN_API_KEYS), or the client keys when no admin keys are configured."""
    from lexforge.serve.errors import APIError, unauthorized

    api_keys = REPLICA_KEYS["api"]
    allowed = (REPLICA_KEYS["admin"] or api_keys) if admin else api_keys
    try:
        return auth.authorize(authorization, allowed, known=api_keys if admin else ())
    except auth.KeyRejected as e:
        if e.reason == "forbidden":
            raise APIError(403, f"this API key may not use admin routes (admin keys: ${ADMIN_KEYS_ENV})",
                           "permission_error", None, "forbidden") from None
        raise unauthorized() from None
