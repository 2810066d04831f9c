"""Starting, health-checking and stopping local server processes (used by the embedded stack and tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def bin_path(name: str) -> str:
    """An executable installed next to the running interpreter (the project's venv)."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def spawn(cmd: list[str], log_path: Path, env: dict[str, str | None] | None = None,
          cwd: str | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so its whole process group can be stopped), output to ``log_path``.
    ``env`` is added to this process's environment; a ``None`` value removes that variable."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
        start_new_session=True,
    )


def http_ok(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None, log_path: Path | None = None,
              headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(url, headers=headers):
            return
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before {url} was healthy:\n{tail}")
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s\n{tail}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_group(pid: int, timeout: float = 20.0) -> bool:
    """SIGTERM the process group of ``pid`` (then SIGKILL after ``timeout``). True if something was stopped."""
    if not pid_alive(pid):
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)  # stragglers in the group
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


# ---- process trees ------------------------------------------------------------------------------------------


def tree(pid: int) -> list:
    """``pid`` and all its live descendants (psutil processes; empty if ``pid`` is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def find_processes(sessions: set[int] = frozenset(), env_marker: tuple[str, str] | None = None,
                   pids: set[int] = frozenset()) -> list:
    """Live processes (zombies excluded) that are in ``pids``, or belong to one of ``sessions`` (a process
    keeps its session when re-parented to init, e.g. a vLLM engine whose Ray worker died), or carry the
    environment variable ``env_marker`` = (name, value) (inherited by every descendant, even one that left the
    session). This process and its ancestors are never returned."""
    import psutil

    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        if p.pid in me or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            hit = p.pid in pids or (sessions and os.getsid(p.pid) in sessions)
            if not hit and env_marker:
                hit = p.environ().get(env_marker[0]) == env_marker[1]
        except (psutil.Error, OSError):
            continue
        if hit:
            out.append(p)
    return out


def alive(p) -> bool:
    """A psutil process that still runs (not gone, not a zombie)."""
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def describe(p) -> str:
    try:
        return f"pid {p.pid} ({' '.join(p.cmdline())[:120] or p.name()})"
    except Exception:
        return f"pid {p.pid}"


def stop_processes(procs: list, timeout: float = 10.0) -> list:
    """SIGTERM ``procs``, SIGKILL what is left after ``timeout``; returns those still alive after that."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in procs):
        time.sleep(0.2)
    for p in procs:
        if alive(p):
            try:
                p.kill()
            except psutil.Error:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in procs):
        time.sleep(0.2)
    return [p for p in procs if alive(p)]
