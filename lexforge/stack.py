"""The embedded stack: a local Prefect server (sqlite), MLflow tracking server (sqlite + local or S3
artifacts) and a Ray head, all on 127.0.0.1, with pid files, logs and health checks.

The Ray head runs with token authentication (:mod:`lexforge.ray_auth`: a 0600 token file under
``$LEXFORGE_HOME/stack``, passed to Ray as a path, never as a value); every lexforge client of it sends the
token. Ray binds 127.0.0.1 (Ray's single-node mode, :data:`RAY_LOOPBACK_ENV`), except Ray Serve's replica gRPC
server, hard-coded to all interfaces and token-guarded (measured on every listening socket by
tests/test_security.py; docs/security.md).

``lexforge up`` is idempotent (running services are left alone; stale pid files are cleaned up),
``lexforge down`` stops every process of the stack, children included: each service's process group, then
every process still in a service's session or carrying the stack's marker variable (:data:`MARKER_ENV`;
e.g. the vLLM engines of a ``lexforge serve`` app on the stack's Ray), then it checks and reports anything
left. ``lexforge status`` reports health. State lives in ``$LEXFORGE_HOME/stack`` (``stack.json`` holds the
ports in use), logs in ``$LEXFORGE_HOME/logs``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lexforge import ray_auth
from lexforge.config import lexforge_home
from lexforge.procs import (alive, bin_path, describe, find_processes, http_ok, pid_alive, spawn, stop_group,
                            stop_processes, tree, wait_http)

SERVICES = ("prefect", "mlflow", "ray")
#: Set in the environment of every service process; every descendant inherits it, so `down` finds them all.
MARKER_ENV = "LEXFORGE_STACK_HOME"
RAY_LOOPBACK_ENV = ray_auth.RAY_LOOPBACK_ENV  # every Ray process of the head binds 127.0.0.1 (see there)
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
HOST = "127.0.0.1"


def _env_port(var: str, default: int) -> int:
    raw = os.environ.get(var)
    if raw is None:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{var}={port} is out of range 1-65535")
    return port


@dataclass
class StackConfig:
    prefect_port: int = field(default_factory=lambda: _env_port("LEXFORGE_PREFECT_PORT", 4200))
    mlflow_port: int = field(default_factory=lambda: _env_port("LEXFORGE_MLFLOW_PORT", 5000))
    ray_port: int = field(default_factory=lambda: _env_port("LEXFORGE_RAY_PORT", 6380))
    ray_dashboard_port: int = field(default_factory=lambda: _env_port("LEXFORGE_RAY_DASHBOARD_PORT", 8265))
    ray_client_port: int = field(default_factory=lambda: _env_port("LEXFORGE_RAY_CLIENT_PORT", 10001))
    ray_agent_port: int = field(default_factory=lambda: _env_port("LEXFORGE_RAY_AGENT_PORT", 52365))
    ray_num_cpus: int | None = None
    mlflow_artifacts: str = ""  # local dir or s3://bucket/prefix; default $LEXFORGE_HOME/mlflow/artifacts
    home: Path = field(default_factory=lexforge_home)

    # ---- URLs ----
    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def prefect_ui_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def ray_address(self) -> str:
        return f"{HOST}:{self.ray_port}"

    @property
    def ray_dashboard_url(self) -> str:
        return f"http://{HOST}:{self.ray_dashboard_port}"

    @property
    def state_dir(self) -> Path:
        return self.home / "stack"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def env(self) -> dict[str, str]:
        """Environment a client of this stack needs (Prefect API, MLflow tracking, Ray address)."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "RAY_ADDRESS": self.ray_address,
            "LEXFORGE_RAY_DASHBOARD_URL": self.ray_dashboard_url,
            "LEXFORGE_HOME": str(self.home),
            **ray_auth.client_env(self.home),  # token mode + the token file's path (never the token)
        }

    @property
    def marker(self) -> str:
        return str(self.home.resolve())


def _state_file(cfg: StackConfig) -> Path:
    return cfg.state_dir / "stack.json"


def load_config(home: Path | None = None) -> StackConfig:
    """The config of the running (or last started) stack, else defaults from env."""
    home = home or lexforge_home()
    f = home / "stack" / "stack.json"
    if f.is_file():
        data = json.loads(f.read_text())
        data["home"] = Path(data["home"])
        return StackConfig(**data)
    return StackConfig(home=home)


def _save_config(cfg: StackConfig) -> None:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(cfg)
    data["home"] = str(cfg.home)
    _state_file(cfg).write_text(json.dumps(data, indent=2))


def _pid_file(cfg: StackConfig, svc: str) -> Path:
    return cfg.state_dir / f"{svc}.pid"


def read_pid(cfg: StackConfig, svc: str) -> int | None:
    f = _pid_file(cfg, svc)
    if not f.is_file():
        return None
    try:
        pid = int(f.read_text().strip())
    except ValueError:
        f.unlink(missing_ok=True)
        return None
    if not pid_alive(pid):
        f.unlink(missing_ok=True)  # stale pid file
        return None
    return pid


def health_headers(cfg: StackConfig, svc: str) -> dict[str, str]:
    """Ray's jobs API needs the token (its unauthenticated /api/gcs_healthz says nothing about the jobs API)."""
    if svc == "ray" and ray_auth.token_file(cfg.home).is_file():
        return {"Authorization": f"Bearer {ray_auth.token_file(cfg.home).read_text().strip()}"}
    return {}


def health_url(cfg: StackConfig, svc: str) -> str:
    return {
        "prefect": f"{cfg.prefect_api_url}/health",
        "mlflow": f"{cfg.mlflow_url}/health",
        "ray": f"{cfg.ray_dashboard_url}/api/version",
    }[svc]


def _command(cfg: StackConfig, svc: str) -> tuple[list[str], dict[str, str]]:
    home = cfg.home
    if svc == "prefect":
        phome = home / "prefect"
        phome.mkdir(parents=True, exist_ok=True)
        env = {
            "PREFECT_HOME": str(phome),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{phome / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": HOST,
            "PREFECT_UI_API_URL": cfg.prefect_api_url,
        }
        return [bin_path("prefect"), "server", "start", "--host", HOST, "--port", str(cfg.prefect_port)], env
    if svc == "mlflow":
        mhome = home / "mlflow"
        mhome.mkdir(parents=True, exist_ok=True)
        artifacts = cfg.mlflow_artifacts or str(mhome / "artifacts")
        cmd = [
            bin_path("mlflow"), "server", "--host", HOST, "--port", str(cfg.mlflow_port),
            "--backend-store-uri", f"sqlite:///{mhome / 'mlflow.db'}",
            "--artifacts-destination", artifacts, "--serve-artifacts", "--workers", "1",
        ]
        # lexforge uses no MLflow server-side jobs; without this flag every server forks ~7 huey consumers
        # (~1.5 GB) that compete with training for memory on small machines.
        return cmd, MLFLOW_SERVER_ENV
    if svc == "ray":
        cmd = [
            bin_path("ray"), "start", "--head", "--block", "--node-ip-address", HOST,
            "--port", str(cfg.ray_port), "--dashboard-host", HOST, "--dashboard-port", str(cfg.ray_dashboard_port),
            "--ray-client-server-port", str(cfg.ray_client_port), "--include-dashboard", "true",
            "--dashboard-agent-listen-port", str(cfg.ray_agent_port),
            "--disable-usage-stats", "--temp-dir", ray_temp_dir(home),
        ]
        if cfg.ray_num_cpus:
            cmd += ["--num-cpus", str(cfg.ray_num_cpus)]
        # Token auth on, with this stack's token file (an inherited RAY_AUTH_TOKEN is removed so it cannot
        # override it); every Ray process, job driver and Serve replica inherits this environment.
        return cmd, {"RAY_USAGE_STATS_ENABLED": "0", **RAY_LOOPBACK_ENV, **ray_auth.server_env(home)}
    raise ValueError(f"unknown service {svc!r}; choose from {SERVICES}")


def ray_temp_dir(home: Path) -> str:
    """Ray's session dir holds unix sockets (path limit ~107 bytes): keep it short."""
    d = home / "ray"
    if len(str(d)) > 40:
        import hashlib

        d = Path("/tmp") / f"lexforge-ray-{hashlib.sha256(str(home).encode()).hexdigest()[:8]}"
    return str(d)


def service_ports(cfg: StackConfig, svc: str) -> list[int]:
    return {
        "prefect": [cfg.prefect_port],
        "mlflow": [cfg.mlflow_port],
        "ray": [cfg.ray_port, cfg.ray_dashboard_port, cfg.ray_client_port],
    }[svc]


def port_in_use(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    healthy: bool
    url: str
    log: str


def status(cfg: StackConfig | None = None) -> list[ServiceStatus]:
    cfg = cfg or load_config()
    out = []
    for svc in SERVICES:
        url = {"prefect": cfg.prefect_ui_url, "mlflow": cfg.mlflow_url, "ray": cfg.ray_dashboard_url}[svc]
        pid = read_pid(cfg, svc)
        healthy = pid is not None and http_ok(health_url(cfg, svc), headers=health_headers(cfg, svc))
        out.append(ServiceStatus(svc, pid, healthy, url, str(cfg.log_dir / f"{svc}.log")))
    return out


def up(cfg: StackConfig | None = None, services: tuple[str, ...] = SERVICES, timeout: float = 180.0,
       echo=print) -> StackConfig:
    """Start the services that are not running; wait until all are healthy. Idempotent."""
    if cfg is None:
        running = load_config()
        cfg = running if any(read_pid(running, s) for s in SERVICES) else StackConfig()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    _save_config(cfg)
    to_start = []
    for svc in services:
        pid = read_pid(cfg, svc)
        if pid is not None:
            echo(f"{svc}: already running (pid {pid})")
            continue
        busy = [port for port in service_ports(cfg, svc) if port_in_use(port)]
        if busy:  # checked for every service before anything starts
            raise RuntimeError(
                f"{svc}: port(s) {', '.join(map(str, busy))} on {HOST} are already in use by another process "
                f"(not started by this stack in {cfg.home}); stop it or pick other ports, e.g. "
                f"`lexforge up --{svc}-port N` or LEXFORGE_{svc.upper()}_PORT")
        to_start.append(svc)
    started = {}
    for svc in to_start:
        cmd, env = _command(cfg, svc)
        log = cfg.log_dir / f"{svc}.log"
        proc = spawn(cmd, log, env={**env, MARKER_ENV: cfg.marker})
        _pid_file(cfg, svc).write_text(str(proc.pid))
        started[svc] = (proc, log)
        echo(f"{svc}: starting (pid {proc.pid}, log {log})")
    for svc, (proc, log) in started.items():
        try:
            wait_http(health_url(cfg, svc), timeout=timeout, proc=proc, log_path=log,
                      headers=health_headers(cfg, svc))
        except Exception:
            _stop_service(proc.pid)
            _pid_file(cfg, svc).unlink(missing_ok=True)
            raise
        echo(f"{svc}: healthy at {health_url(cfg, svc)}")
    return cfg


def _stop_service(pid: int) -> list:
    """Stop one service: its process group (``ray start --block`` stops Ray's own processes on SIGTERM), then
    whatever of its process tree (snapshot first) or its session is still alive. Returns what survived."""
    members = tree(pid)
    stop_group(pid)
    rest = {p.pid: p for p in members if alive(p)}
    rest.update({p.pid: p for p in find_processes(sessions={pid})})
    return stop_processes(list(rest.values())) if rest else []


def _is_ours(cfg: StackConfig, svc: str, pid: int) -> bool:
    """``pid`` carries this stack's marker (or, started before markers existed, runs the service's program)."""
    import psutil

    try:
        p = psutil.Process(pid)
        marker = p.environ().get(MARKER_ENV)
        return marker == cfg.marker if marker is not None else svc in " ".join(p.cmdline())
    except psutil.AccessDenied:
        return False
    except psutil.Error:
        return False


def stack_processes(cfg: StackConfig) -> list:
    """Every live process of this stack (by the marker variable its services pass to all descendants)."""
    return find_processes(env_marker=(MARKER_ENV, cfg.marker))


def down(cfg: StackConfig | None = None, services: tuple[str, ...] = SERVICES, echo=print) -> list[str]:
    """Stop the services (and everything they started); returns descriptions of processes that survived."""
    cfg = cfg or load_config()
    survivors = []
    for svc in reversed(services):
        pid = read_pid(cfg, svc)
        if pid is None:
            echo(f"{svc}: not running")
            continue
        if not _is_ours(cfg, svc, pid):  # the pid was reused by an unrelated process: never stop that one
            echo(f"{svc}: pid {pid} is no longer this stack's {svc} (stale pid file); not stopping it")
            _pid_file(cfg, svc).unlink(missing_ok=True)
            continue
        survivors += _stop_service(pid)
        _pid_file(cfg, svc).unlink(missing_ok=True)
        echo(f"{svc}: stopped (pid {pid})")
    if set(services) == set(SERVICES):
        # Processes that left their service's session, or whose service was already gone (e.g. vLLM engines of a
        # serving app whose Ray worker was killed): found by the stack's marker.
        stray = stack_processes(cfg)
        if stray:
            echo(f"stopping {len(stray)} leftover process(es) of this stack: "
                 + ", ".join(describe(p) for p in stray[:5]) + (" ..." if len(stray) > 5 else ""))
            survivors += stop_processes(stray)
    left = [describe(p) for p in survivors if alive(p)]
    for d in left:
        echo(f"could not stop {d}")
    return left


def activate_env(cfg: StackConfig | None = None) -> dict[str, str]:
    """Export the stack's client env vars into this process (unless already set) and return them."""
    cfg = cfg or load_config()
    env = cfg.env()
    for k, v in env.items():
        os.environ.setdefault(k, v)
    return env
