"""Shared fixtures: real servers (MLflow, moto S3, Prefect, Ray) started per session on free ports and
stopped by PID; a tiny random Llama with a locally trained tokenizer."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
# Fake AWS credentials for the moto server (never real ones in tests).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from lexforge import ray_auth  # noqa: E402
from lexforge.procs import bin_path, spawn, stop_group, wait_http  # noqa: E402
from lexforge.stack import MLFLOW_SERVER_ENV, RAY_LOOPBACK_ENV  # noqa: E402
from lexforge.testing import build_tiny_llama, free_port  # noqa: E402

# Every Ray cluster of the test session runs with token authentication (as the embedded stack does): one
# session token in a private 0600 file, passed by path; any inherited RAY_AUTH_MODE=disabled is overridden.
_RAY_TOKEN_HOME = Path(tempfile.mkdtemp(prefix="lexforge-test-raytoken-"))
atexit.register(shutil.rmtree, _RAY_TOKEN_HOME, True)
RAY_TOKEN_FILE = ray_auth.ensure_token_file(_RAY_TOKEN_HOME)
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(RAY_TOKEN_FILE)})
os.environ.pop("RAY_AUTH_TOKEN", None)

ROOT = Path(__file__).resolve().parents[1]

#: Fixtures that start servers, clusters or model engines: a test using one is `slow`, whatever its own marks, so
#: the fast lane (`make test-fast` = `-m "not slow"`) never starts a server.
HEAVY_FIXTURES = {"moto_s3", "mlflow_server", "prefect_server", "ray_head", "ray_local", "serve_app", "smollm2_dir"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def lexforge_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("lexforge_home")
    os.environ["LEXFORGE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def smollm2_dir(lexforge_home) -> Path:
    """The real embedded default model (converted from the PyPI GGUF once per session)."""
    from lexforge.models import bootstrap_smollm2

    return bootstrap_smollm2()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """A real S3 API (moto_server) on 127.0.0.1; yields its endpoint URL and sets LEXFORGE_S3_ENDPOINT_URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = spawn([bin_path("moto_server"), "-H", "127.0.0.1", "-p", str(port)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", timeout=60, proc=proc, log_path=log)
        os.environ["LEXFORGE_S3_ENDPOINT_URL"] = url
        yield url
    finally:
        os.environ.pop("LEXFORGE_S3_ENDPOINT_URL", None)
        stop_group(proc.pid)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (sqlite backend, local artifacts); sets MLFLOW_TRACKING_URI."""
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = d / "mlflow.log"
    proc = spawn([
        bin_path("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}", "--artifacts-destination", str(d / "artifacts"),
        "--serve-artifacts", "--workers", "1",
    ], log, env=MLFLOW_SERVER_ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120, proc=proc, log_path=log)
        os.environ["MLFLOW_TRACKING_URI"] = url
        yield url
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        stop_group(proc.pid)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (sqlite) on a free port; sets PREFECT_API_URL for this process."""
    d = tmp_path_factory.mktemp("prefect")
    port = free_port()
    log = d / "prefect.log"
    env = {
        "PREFECT_HOME": str(d),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{d / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",  # else the UI talks to the default port 4200
    }
    proc = spawn([bin_path("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], log, env=env)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{url}/health", timeout=180, proc=proc, log_path=log)
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stop_group(proc.pid)


@pytest.fixture(scope="session")
def ray_head():
    """A real Ray head (`ray start --head --block`) on free ports with the jobs API and token auth (the session
    token); yields (address, dashboard).

    It gets its own short --temp-dir: Ray job supervisors resolve a driver's cluster from
    ``<temp dir>/ray_current_cluster``, and in the shared default /tmp/ray that is whichever cluster started last,
    so a job's driver could join another test's cluster."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="rayf", dir="/tmp"))
    gcs, dash, client, agent = free_port(), free_port(), free_port(), free_port()
    log = d / "ray.log"
    proc = spawn([
        bin_path("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent), "--include-dashboard", "true", "--disable-usage-stats",
        "--num-cpus", "4", "--temp-dir", str(d / "t"),
    ], log, env={"RAY_USAGE_STATS_ENABLED": "0", **RAY_LOOPBACK_ENV, "RAY_AUTH_MODE": "token",
                 "RAY_AUTH_TOKEN_PATH": str(RAY_TOKEN_FILE), "RAY_AUTH_TOKEN": None})
    dashboard = f"http://127.0.0.1:{dash}"
    try:
        wait_http(f"{dashboard}/api/version", timeout=180, proc=proc, log_path=log,
                  headers=ray_auth.http_headers(dashboard))
        yield f"127.0.0.1:{gcs}", dashboard
    finally:
        stop_group(proc.pid)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_local(lexforge_home):
    """An in-process local Ray cluster (``ray.init(address="local")``) for one test module, shut down after it."""
    import ray

    if not ray.is_initialized():
        with ray_auth.ray_init_env("local"):  # token auth and loopback, as lexforge's own ray.init calls do
            ray.init(address="local", num_cpus=8, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


SERVE_KEY = "sk-serve-inference-0123456789"
SERVE_ADMIN_KEY = "sk-serve-admin-0123456789ab"


@pytest.fixture(scope="session")
def serve_base(lexforge_home) -> Path:
    """A tiny Llama that vLLM's CPU kernels accept (head_dim >= 32), registered under $LEXFORGE_HOME/models."""
    return build_tiny_llama(lexforge_home / "models" / "tiny-llama-hd32", hidden_size=64, num_heads=2,
                            num_kv_heads=1)


@pytest.fixture(scope="session")
def serve_app(serve_base, ray_head, mlflow_server, tmp_path_factory):
    """The session's one serving app: `lexforge serve` (Ray Serve + vLLM CPU) on the Ray head, the tiny base model,
    registry versions resolved from the session's MLflow. Yields its base URL; stopped by process group."""
    d = tmp_path_factory.mktemp("serve_app")
    spec = d / "serve.yaml"
    spec.write_text(f"name: serve-app\ndata: {{train: '-'}}\nmodel: {{base: {serve_base}, dtype: float32}}\n"
                    "serve: {max_model_len: 512, max_loras: 2, max_lora_rank: 8}\n"
                    f"tracking: {{mlflow_uri: '{mlflow_server}'}}\n", encoding="utf-8")
    port = free_port()
    log = d / "serve.log"
    gcs, _ = ray_head
    env = {"LEXFORGE_API_KEYS": SERVE_KEY, "LEXFORGE_ADMIN_API_KEYS": SERVE_ADMIN_KEY, "RAY_ADDRESS": gcs,
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = spawn([bin_path("lexforge"), "serve", str(spec), "--champion", "none", "--port", str(port),
                  "--accelerator", "cpu", "--max-num-seqs", "4"], log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=600, proc=proc, log_path=log)
        yield url
    finally:
        stop_group(proc.pid)
