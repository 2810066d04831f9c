"""The fine-tuning API against the real `retrain` deployment (deployments/prefect.yaml applied with
`lexforge deploy-flows`, a `lexforge worker` process worker): sanitize -> Ray job training on the tiny
Llama (ray_head) -> eval gate -> MLflow registry, driven only through the official `openai` SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lexforge.procs import bin_path, spawn, stop_group
from test_api import ApiServer, chat_rows, jsonl, upload, wait_status

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "lexforge" / "samples" / "data" / "legalbench" / "tasks"
POOL = "api-retrain-pool"


@pytest.fixture(scope="module")
def retrain_worker(prefect_server, mlflow_server, ray_head, lexforge_home, tmp_path_factory):
    d = tmp_path_factory.mktemp("api_retrain")
    _, dashboard = ray_head
    env = {"PREFECT_API_URL": prefect_server, "MLFLOW_TRACKING_URI": mlflow_server,
           "LEXFORGE_RAY_DASHBOARD_URL": dashboard, "LEXFORGE_HOME": str(lexforge_home), "LEXFORGE_REPO": str(ROOT),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PREFECT_WORKER_QUERY_SECONDS": "1"}
    out = subprocess.run([bin_path("lexforge"), "deploy-flows", "--pool", POOL], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    r = httpx.get(f"{prefect_server}/deployments/name/retrain/lexforge-retrain")
    assert r.status_code == 200, r.text
    log = d / "worker.log"
    proc = spawn([bin_path("prefect"), "worker", "start", "--pool", POOL, "--type", "process"], log, env=env,
                 cwd=str(ROOT))
    try:
        yield log
    finally:
        stop_group(proc.pid)


def test_api_job_runs_the_real_retrain_deployment(retrain_worker, prefect_server, lexforge_home, tiny_model_dir,
                                                  tmp_path):
    from lexforge.api.settings import ApiSettings

    models = lexforge_home / "models"
    models.mkdir(exist_ok=True)
    if not (models / "tiny-llama").exists():
        (models / "tiny-llama").symlink_to(tiny_model_dir, target_is_directory=True)
    overrides = (
        "data.max_seq_len=256", "checkpoint.every_n_steps=1", "eval.engine=transformers", "eval.max_new_tokens=4",
        f"eval.suites=[{{name: statute_mcq, path: {TASKS / 'statute_mcq'}, kind: closed}}]",
    )
    settings = ApiSettings(api_keys=("sk-retrain-test-key-123",), store_root=str(tmp_path / "store"),
                           db_path=tmp_path / "api.db", prefect_api_url=prefect_server,
                           deployment="retrain/lexforge-retrain", run_parameters={"deploy": False, "train_retries": 0},
                           spec_overrides=overrides, serve_url="", poll_interval_s=2.0)
    server = ApiServer(settings)
    try:
        client = server.client("sk-retrain-test-key-123")
        train = upload(client, jsonl(chat_rows(12)))
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train.id, suffix="real",
                                             hyperparameters={"n_epochs": 1, "batch_size": 4, "lora_rank": 4})
        done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"}, timeout=1200)
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=500)]
        if done.status != "succeeded":
            pytest.fail(f"job {done.status}: {done.error}\n--- events (oldest first):\n" + "\n".join(reversed(events))
                        + "\n--- worker log:\n" + retrain_worker.read_text()[-6000:], pytrace=False)
        assert done.fine_tuned_model == f"tiny-llama:ft-real-{job.id.removeprefix('ftjob-')}"
        out = Path(settings.store_root) / "runs" / job.id / "output"
        assert (out / "adapter_config.json").is_file() and (out / "lineage.json").is_file()
        assert done.trained_tokens and done.trained_tokens > 0
        assert any("Completed" in m for m in events) and len(events) > 6  # states + the pipeline's logs
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert ckpts and ckpts[0].step_number >= ckpts[-1].step_number
        assert client.files.content(done.result_files[0]).text.startswith("step,train_loss")
    finally:
        server.stop()
