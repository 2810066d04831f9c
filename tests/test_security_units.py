"""Pure checks behind docs/security.md (no servers): bearer-key rules, the Ray token file, redaction of paths
in the serving app's payloads, ANSI/progress-bar cleaning of logs, the demo's summary table."""

from __future__ import annotations

import os
import stat

import pytest

from lexforge import auth, ray_auth
from lexforge.console import clean_line, is_progress_bar, progress_bar_done, status_text
from lexforge.serve.errors import APIError, redact_locations

KEY = "sk-unit-test-key-0123456789"
OTHER = "sk-unit-other-key-0123456789"


# ---- bearer keys: one parser, one checker ------------------------------------------------------------------


def test_key_lists_parse_the_same_everywhere(monkeypatch, tmp_path):
    monkeypatch.setenv("LEXFORGE_API_KEYS", f" {KEY} ,\n# a comment\n,{OTHER}\n")
    assert auth.keys_from_env() == [KEY, OTHER]
    f = tmp_path / "keys"
    f.write_text(f"# team a\n{OTHER}\n")
    assert auth.load_keys("LEXFORGE_API_KEYS", f) == [KEY, OTHER, OTHER]
    # the fine-tuning API reads the same list with the same rules
    from api.settings import ApiSettings

    assert ApiSettings().api_keys == (KEY, OTHER)


def test_short_keys_are_refused_by_both_surfaces(monkeypatch, tmp_path):
    monkeypatch.setenv("LEXFORGE_API_KEYS", "short-key")
    with pytest.raises(auth.AuthConfigError, match="shorter than 16"):
        auth.load_key_digests()
    from api.settings import ApiSettings

    with pytest.raises(ValueError, match="shorter than 16"):
        ApiSettings(store_root=str(tmp_path)).validate()
    with pytest.raises(auth.AuthConfigError, match="not found"):
        auth.load_keys("LEXFORGE_API_KEYS", tmp_path / "missing")


def test_authorize_rules():
    allowed = auth.digests([KEY])
    assert auth.authorize(f"Bearer {KEY}", allowed) == auth.fingerprint(auth.digest(KEY))
    assert auth.authorize(f"bearer   {KEY} ", allowed)  # scheme is case-insensitive, blanks trimmed
    for header, reason in ((None, "missing"), ("", "missing"), (f"Basic {KEY}", "missing"), ("Bearer ", "missing"),
                           (f"Bearer {OTHER}", "invalid"), (f"Bearer {KEY}x", "invalid")):
        with pytest.raises(auth.KeyRejected) as e:
            auth.authorize(header, allowed)
        assert e.value.reason == reason, header
    with pytest.raises(auth.KeyRejected) as e:  # a client key on an admin route
        auth.authorize(f"Bearer {OTHER}", allowed, known=auth.digests([OTHER]))
    assert e.value.reason == "forbidden"
    assert len(auth.fingerprint(auth.digest(KEY))) == 8 and KEY not in auth.digest(KEY)


def test_serving_app_and_api_use_the_shared_checker(monkeypatch):
    from lexforge.serve import auth as serve_auth

    serve_auth.set_replica_keys(auth.digests([KEY]), auth.digests([OTHER]))
    try:
        assert serve_auth.check_key(f"Bearer {KEY}", admin=False)
        assert serve_auth.check_key(f"Bearer {OTHER}", admin=True)
        with pytest.raises(APIError) as e:
            serve_auth.check_key(f"Bearer {KEY}", admin=True)
        assert e.value.status == 403
        with pytest.raises(APIError) as e:
            serve_auth.check_key("Bearer nope-nope-nope-nope", admin=False)
        assert e.value.status == 401
    finally:
        serve_auth.set_replica_keys([], [])


def test_admin_key_lookup_of_clients(monkeypatch):
    for var in ("LEXFORGE_SERVE_ADMIN_KEY", "LEXFORGE_ADMIN_API_KEYS", "LEXFORGE_API_KEYS"):
        monkeypatch.delenv(var, raising=False)
    assert auth.serve_admin_key() == ""
    monkeypatch.setenv("LEXFORGE_API_KEYS", f"{KEY},{OTHER}")
    assert auth.serve_admin_key() == KEY
    monkeypatch.setenv("LEXFORGE_ADMIN_API_KEYS", f"# old\n{OTHER}")
    assert auth.serve_admin_key() == OTHER
    monkeypatch.setenv("LEXFORGE_SERVE_ADMIN_KEY", "sk-explicit-admin-0123456789")
    assert auth.serve_admin_key() == "sk-explicit-admin-0123456789"
    from tasks.serve import admin_key

    assert admin_key() == "sk-explicit-admin-0123456789"


# ---- the Ray token ----------------------------------------------------------------------------------------


def test_ray_token_file_is_private_and_stable(tmp_path):
    f = ray_auth.ensure_token_file(tmp_path)
    assert f == tmp_path / "stack" / "ray_auth_token"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and stat.S_IMODE(f.parent.stat().st_mode) == 0o700
    token = f.read_text()
    assert len(token) == 64 and int(token, 16)  # 256 random bits
    os.chmod(f, 0o644)
    assert ray_auth.ensure_token_file(tmp_path).read_text() == token  # kept, permissions tightened
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    env = ray_auth.server_env(tmp_path)
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(f), "RAY_AUTH_TOKEN": None}
    assert token not in repr(env) and token not in repr(ray_auth.client_env(tmp_path))
    assert ray_auth.client_env(tmp_path)["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_ray_token_sources_for_clients(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LEXFORGE_HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # no ~/.ray/auth_token
    assert ray_auth.http_headers("http://127.0.0.1:8265") == {}
    stack_token = ray_auth.ensure_token_file(home).read_text()
    assert ray_auth.http_headers("http://127.0.0.1:8265") == {"Authorization": f"Bearer {stack_token}"}
    assert ray_auth.token_for("10.0.0.5:6379") is None  # the local stack's token is not sent to other hosts
    other = tmp_path / "other-token"
    other.write_text("kuberay-token-value\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(other))
    assert ray_auth.token_for("ray-head.lexforge.svc:8265") == "kuberay-token-value"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-a-secret")
    assert ray_auth.token_for("http://127.0.0.1:8265") == "from-a-secret"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    other.write_text("")
    with pytest.raises(ray_auth.RayAuthError, match="empty"):
        ray_auth.token_for("http://127.0.0.1:8265")
    for a, loop in (("local", True), (None, True), ("auto", True), ("127.0.0.1:6380", True),
                    ("http://localhost:8265", True), ("http://[::1]:8265", True), ("10.1.2.3:6379", False),
                    ("http://ray-head:8265", False)):
        assert ray_auth.is_loopback(a) is loop, a


def test_ray_init_env_keeps_a_local_cluster_on_loopback_without_leaking(tmp_path, monkeypatch):
    import ray._private.ray_constants as constants
    from ray._private import services

    monkeypatch.setenv("LEXFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    before = constants.ENABLE_RAY_CLUSTER
    with ray_auth.ray_init_env("local"):
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        assert services.get_node_ip_address() == "127.0.0.1"  # what a new local node is given
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(ray_auth.token_file())
        assert ray_auth.token_file().is_file()
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ and constants.ENABLE_RAY_CLUSTER == before
    assert os.environ["RAY_AUTH_MODE"] == "token"  # the token stays: the driver keeps using it
    with ray_auth.ray_init_env("127.0.0.1:6380"):  # a driver of the embedded stack keeps the loopback address
        assert services.canonicalize_bootstrap_address("127.0.0.1:6380") == "127.0.0.1:6380"
    for remote in ("auto", "10.1.2.3:6379"):
        with ray_auth.ray_init_env(remote):
            assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


# ---- no paths or internal URIs to clients -----------------------------------------------------------------


def test_redaction_of_paths_and_uris():
    msg = ("champion version 3 was fine-tuned from /home/firm/models/llama-8b, but this server runs "
           "/srv/models/qwen; could not load models:/lexforge-legal@champion from "
           "mlflow-artifacts:/4/abc/artifacts (s3://firm-bucket/lexforge/x, http://10.0.0.3:5000); "
           "use POST /admin/reload-champion")
    out = redact_locations(msg)
    for leak in ("/home/firm", "/srv/models", "firm-bucket", "10.0.0.3", "mlflow-artifacts", "models:/"):
        assert leak not in out, leak
    assert "<path>/llama-8b" in out and "<path>/qwen" in out and "/admin/reload-champion" in out
    body = APIError(422, "adapter directory /tmp/secret/adapters/a does not exist").body()
    assert body["error"]["message"] == "adapter directory <path>/a does not exist"


def test_model_card_has_ids_versions_and_parents_only():
    from lexforge.serve.adapters import AdapterRef
    from lexforge.serve.app import model_card

    card = model_card(AdapterRef("legal-champion", "/srv/runs/x/output", "7", 1, "champion"), "base-8b", 0)
    assert card == {"id": "legal-champion", "object": "model", "created": 0, "owned_by": "lexforge",
                    "parent": "base-8b", "version": "7", "kind": "lora"}


# ---- logs: ANSI codes and progress bars --------------------------------------------------------------------


def test_clean_line_strips_ansi_and_keeps_the_last_bar_state():
    raw = "\x1b[36m(RayTrainWorker pid=123)\x1b[0m \x1b]8;;http://x\x07link\x1b]8;;\x07 loss \x1b[1;31m2.1\x1b[0m"
    assert clean_line(raw) == "(RayTrainWorker pid=123) link loss 2.1"
    bar = "Loading:  10%|█         | 1/10\rLoading:  50%|█████     | 5/10\rLoading: 100%|██████████| 10/10\r\n"
    assert clean_line(bar) == "Loading: 100%|██████████| 10/10"
    assert is_progress_bar(clean_line(bar)) and progress_bar_done(clean_line(bar))
    assert not progress_bar_done("Loading:  50%|█████     | 5/10")
    assert status_text("12:00:01.123 | INFO    | Task run 'train-1' - progress: step 3/12") == "progress: step 3/12"
    assert status_text(bar) is None and status_text("   ") is None


# ---- the demo's closing table --------------------------------------------------------------------------------


def _render(table) -> str:
    from rich.console import Console

    c = Console(record=True, width=200, file=open(os.devnull, "w"))
    c.print(table)
    return c.export_text()


def test_demo_summary_table_from_gate_results():
    from lexforge.demo import summary_table

    text = _render(summary_table({
        "scores": {"base": {"blended": 0.412, "ci": [0.35, 0.47], "suites": {"statute_yes_no": 0.5}},
                   "fine_tuned": {"blended": 0.538, "ci": [0.48, 0.6]}},
        "decision": {"promote": True, "reasons": ["PASS blended +0.126 >= min_improvement 0.01"]},
        "model": "lexforge-legal", "version": "2", "question": "Q?", "answer": " The limitation period is six years. ",
        "served_model": "legal-champion", "endpoint": "http://127.0.0.1:8000/v1", "api_key_file": "/h/demo_api_key",
        "ray_token_file": "/h/stack/ray_auth_token", "logs": "/h/logs/demo/1", "prefect_ui": "http://127.0.0.1:4200"}))
    for want in ("base model score", "0.412", "95% CI 0.350-0.470", "statute_yes_no 0.500", "fine-tuned score",
                 "0.538", "lexforge-legal v2: promoted to @champion", "PASS blended", "six years.",
                 "/h/stack/ray_auth_token", "/h/logs/demo/1", "http://127.0.0.1:4200"):
        assert want in text, (want, text)


def test_demo_summary_table_with_todays_flow_result():
    from lexforge.demo import summary_table

    text = _render(summary_table({"model": "m", "version": "1", "blended": 0.5, "promoted": False}))
    assert "fine-tuned score" in text and "0.500" in text and "not promoted" in text
    assert "base model score" not in text


# ---- docs/security.md: every line of the check list is backed by a test that exists ----------------------


def test_every_check_list_line_names_existing_tests():
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "security.md").read_text()
    section = text.split("## Reviewer's check list", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"\n- \[ \] ", "\n" + section.split("\n- [ ] ", 1)[1])
    assert len(items) >= 10
    for item in filter(None, items):
        refs = re.findall(r"`(test_\w+\.py)::(test_\w+)`", item)
        assert refs, f"check list line without a test: {item[:80]!r}"
        for file, name in refs:
            tree = ast.parse((root / "tests" / file).read_text())
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in names, f"docs/security.md names {file}::{name}, which does not exist"


def test_a_phase_shows_one_line_and_keeps_everything_in_its_log(tmp_path):
    """What `lexforge demo`/`up` do per step: the terminal gets one result line naming the log; the log gets the
    step's whole output (a subprocess's and this process's own), without ANSI codes."""
    import io
    import sys

    from rich.console import Console

    from lexforge.console import Phase, run_phase

    term = io.StringIO()
    console = Console(file=term, width=200)
    noisy = ("import sys\nfor i in range(3): print(f'\\x1b[36m(RayTrainWorker pid={i})\\x1b[0m step {i}')\n"
             "sys.stderr.write('Loading: 50%|#####     | 1/2\\rLoading: 100%|##########| 2/2\\n')\n")
    with Phase(console, "3/5 train", tmp_path / "3-train.log") as ph:
        out = run_phase([sys.executable, "-c", noisy], {}, ph)
        with ph.capture():
            print("in-process noise")
    assert "step 2" in out
    shown = term.getvalue()
    assert "RayTrainWorker" not in shown and "Loading" not in shown and "in-process noise" not in shown
    assert "3/5 train" in shown and f"log: {tmp_path / '3-train.log'}" in shown.replace("\n", "")
    log = (tmp_path / "3-train.log").read_text()
    assert "(RayTrainWorker pid=2) step 2" in log and "Loading: 100%|##########| 2/2" in log
    assert "in-process noise" in log and "\x1b[" not in log
    with pytest.raises(RuntimeError, match="3-fail.log"):
        with Phase(console, "fail", tmp_path / "3-fail.log") as ph:
            run_phase([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], {}, ph)
    assert "boom" in term.getvalue()  # a failed step shows the tail of its log
