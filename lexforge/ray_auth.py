"""Ray token authentication: the token every lexforge-started Ray uses, and how lexforge's clients send it.

Ray (>= 2.52) authenticates every control-plane call (GCS, raylet and worker gRPC, the dashboard and jobs
HTTP API) with one shared bearer token when ``RAY_AUTH_MODE=token``. It reads the token from
``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``.

lexforge's rules:

- The embedded stack and every in-process local Ray that lexforge starts use one token per
  ``$LEXFORGE_HOME``: :func:`token_file` (0600, in a 0700 directory), generated on first use. It is passed
  to Ray as a *path* (``RAY_AUTH_TOKEN_PATH``); the value is never put in an environment variable, a
  command line or a log line.
- A client uses Ray's own sources first (``RAY_AUTH_TOKEN``, e.g. from a Kubernetes Secret on KubeRay, then
  ``RAY_AUTH_TOKEN_PATH``, which ``lexforge up`` exports and every process of the stack inherits); without
  them, for a loopback address (the embedded stack, a local cluster), the stack's token file.
- HTTP clients (Ray Jobs SDK, health checks) send ``Authorization: Bearer <token>`` built by
  :func:`http_headers`; ``ray.init`` runs inside :func:`ray_init_env`.
"""

from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: `--node-ip-address 127.0.0.1` alone does not keep Ray on loopback: Ray replaces a loopback node address by the
#: machine's network address (ray._private.services.resolve_ip_for_localhost), and its servers then listen on
#: all interfaces. Ray's single-node mode (the default on macOS/Windows) keeps the node address, and with it
#: the servers of every Ray process, on 127.0.0.1 (measured: tests/test_security.py). The one exception is Ray
#: Serve's replica gRPC server, hard-coded to [::]:0 and guarded by the token.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class RayAuthError(RuntimeError):
    pass


def token_file(home: Path | None = None) -> Path:
    """Where the Ray token of ``home`` (default ``$LEXFORGE_HOME``) lives."""
    if home is None:
        from lexforge.config import lexforge_home

        home = lexforge_home()
    return Path(home) / "stack" / "ray_auth_token"


def ensure_token_file(home: Path | None = None) -> Path:
    """The token file of ``home``, generated (256 random bits, hex) with mode 0600 if missing; a file that
    other users can read is tightened to 0600. Returns the path (never the token)."""
    f = token_file(home)
    f.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(f.parent, 0o700)
    if not f.is_file() or not f.read_text().strip():
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    if stat.S_IMODE(f.stat().st_mode) != 0o600:
        os.chmod(f, 0o600)
    return f


def server_env(home: Path | None = None) -> dict[str, str | None]:
    """Environment of a Ray process lexforge starts (``None`` = remove the variable): token mode, our file,
    and no inherited ``RAY_AUTH_TOKEN`` that would override it."""
    return {MODE_ENV: "token", TOKEN_PATH_ENV: str(ensure_token_file(home)), TOKEN_ENV: None}


def client_env(home: Path | None = None) -> dict[str, str]:
    """The variables a shell needs to reach the embedded stack's Ray (what ``lexforge up`` prints): token mode,
    the token file's path, and single-node mode so ``ray.init("127.0.0.1:PORT")`` keeps the loopback address."""
    return {MODE_ENV: "token", TOKEN_PATH_ENV: str(token_file(home)), **RAY_LOOPBACK_ENV}


def is_loopback(address: str | None) -> bool:
    """True for None/"local"/"auto" and for URLs or host:port on a loopback host."""
    if address in (None, "", "local", "auto"):
        return True
    host = urlparse(address).hostname if "://" in address else address.rsplit(":", 1)[0].strip("[]")
    return (host or "") in LOOPBACK_HOSTS


def _read(path: str | Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise RayAuthError(f"cannot read the Ray auth token file {path}: {e.strerror}") from None
    if not token:
        raise RayAuthError(f"the Ray auth token file {path} is empty")
    return token


def token_path_for(address: str | None) -> str | None:
    """The token file a client of ``address`` should use (None: ``$RAY_AUTH_TOKEN`` or no token): Ray's own
    ``$RAY_AUTH_TOKEN_PATH`` (the embedded stack exports it), else for a loopback address the stack's
    :func:`token_file`, else ``~/.ray/auth_token`` when it exists."""
    if os.environ.get(TOKEN_ENV):
        return None
    if os.environ.get(TOKEN_PATH_ENV):
        return os.environ[TOKEN_PATH_ENV]
    if is_loopback(address) and token_file().is_file():
        return str(token_file())
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def token_for(address: str | None) -> str | None:
    """The Ray token to present to ``address`` (see the module doc for the order), or None."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    path = token_path_for(address)
    return _read(path) if path else None


def http_headers(address: str | None) -> dict[str, str]:
    """``Authorization`` header for Ray's HTTP APIs at ``address`` ({} when no token is configured)."""
    token = token_for(address)
    return {"Authorization": f"Bearer {token}"} if token else {}


def prepare_ray_init(address: str | None) -> None:
    """Make this process's next ``ray.init(address)`` authenticate with the right token.

    For ``local`` (a new in-process cluster) its processes inherit this environment, so the cluster runs with
    token auth: on ``$RAY_AUTH_TOKEN``/``$RAY_AUTH_TOKEN_PATH`` when set, else on our :func:`token_file`
    (created if needed). An explicit ``RAY_AUTH_MODE=disabled`` is respected (it can only reach a cluster
    started without auth). Callers use :func:`ray_init_env`, which also keeps a new local cluster on loopback."""
    if os.environ.get(MODE_ENV, "").lower() == "disabled":
        return
    if address in (None, "", "local"):
        given = os.environ.get(TOKEN_PATH_ENV)
        if given and not Path(given).is_file() and Path(given) == token_file():
            ensure_token_file()  # our own file, named before the stack ever started: create it
        path = None if os.environ.get(TOKEN_ENV) else (given or str(ensure_token_file()))
    else:
        path = token_path_for(address)
    if path:
        _read(path)  # fail here with the file's name, not inside Ray's C++ loader (which aborts the process)
        os.environ[TOKEN_PATH_ENV] = path
    os.environ[MODE_ENV] = "token"
    _refresh_ray_config()


@contextmanager
def ray_init_env(address: str | None):
    """Around ``ray.init(address)``: the token (:func:`prepare_ray_init`) and, for a new local cluster or a
    loopback address (the embedded stack), Ray's single-node mode (:data:`RAY_LOOPBACK_ENV`): a new cluster's
    processes then bind 127.0.0.1, and a driver keeps ``127.0.0.1:PORT`` instead of rewriting it to the
    machine's address (where a loopback-only GCS does not listen). The mode is undone afterwards: it must not
    leak into other Ray processes this one starts later (a multi-node ``ray start --address`` refuses it)."""
    import sys

    prepare_ray_init(address)
    if address == "auto" or not is_loopback(address):  # "auto": whatever cluster this node belongs to
        yield
        return
    saved = {k: os.environ.get(k) for k in RAY_LOOPBACK_ENV}
    os.environ.update(RAY_LOOPBACK_ENV)
    constants = sys.modules.get("ray._private.ray_constants")
    saved_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None:  # read at `import ray`; services.get_node_ip_address looks it up per call
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = saved_flag


def _refresh_ray_config() -> None:
    """Ray caches the auth mode and token in C++ once ``ray._raylet`` is loaded: reload both."""
    import sys

    if "ray._raylet" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
