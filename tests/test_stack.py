"""The embedded stack's guards: stale pid files, bad port settings, ports taken by strangers (nothing starts).
Starting, idempotency, token auth, loopback binding and a complete `down` are measured on one real stack in
tests/test_security.py."""

import os
import subprocess
import sys

import pytest

from lexforge.testing import isolated_stack_env

pytestmark = pytest.mark.slow


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "lexforge.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture()
def stack_env(tmp_path):
    env = dict(os.environ)
    env.update(isolated_stack_env(tmp_path / "home"))
    yield env
    _cli("down", env=env)


def test_stale_pid_file_is_ignored(stack_env, tmp_path):
    state = tmp_path / "home" / "stack"
    state.mkdir(parents=True)
    # a pid that cannot be alive
    (state / "mlflow.pid").write_text("999999999")
    from lexforge import stack

    os.environ_backup = dict(os.environ)
    cfg = stack.StackConfig(home=tmp_path / "home")
    assert stack.read_pid(cfg, "mlflow") is None
    assert not (state / "mlflow.pid").exists()


def test_bad_port_env_is_a_clear_error(monkeypatch):
    from lexforge import stack

    monkeypatch.setenv("LEXFORGE_MLFLOW_PORT", "fivethousand")
    with pytest.raises(ValueError, match="LEXFORGE_MLFLOW_PORT"):
        stack.StackConfig()


def test_port_taken_by_a_stranger_is_refused_before_anything_starts(stack_env, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", int(stack_env["LEXFORGE_MLFLOW_PORT"])))
        s.listen(1)
        r = _cli("up", env=stack_env)
    assert r.returncode != 0
    assert f"port(s) {stack_env['LEXFORGE_MLFLOW_PORT']}" in r.stderr and "already in use" in r.stderr
    assert not list((tmp_path / "home" / "stack").glob("*.pid")), "nothing may be started"


def test_down_never_stops_a_stranger_that_reused_a_pid(tmp_path):
    """A pid file whose pid now belongs to an unrelated process: `down` leaves that process alone."""
    from lexforge import stack

    home = tmp_path / "home"
    cfg = stack.StackConfig(home=home)
    cfg.state_dir.mkdir(parents=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (cfg.state_dir / "mlflow.pid").write_text(str(stranger.pid))
        msgs = []
        assert stack.down(cfg, echo=msgs.append) == []
        assert stranger.poll() is None, "down killed a process that is not part of the stack"
        assert any("stale pid file" in m for m in msgs) and not (cfg.state_dir / "mlflow.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()
