"""The user path of docs/api.md, end to end: the official `openai` SDK against the fine-tuning API, which runs the
real `retrain` deployment (deployments/prefect.yaml applied with `lexforge deploy-flows`) on a Prefect process
worker: sanitize -> Ray job training on the tiny Llama (ray_head) -> vLLM eval gate inside the flow run (the
deadlock of vLLM's logging reconfiguration against Prefect's log handler would hang it here) -> MLflow registry ->
the serving app (`lexforge serve`, Ray Serve + vLLM) serves the registered version -> chat through the API."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import SERVE_ADMIN_KEY, SERVE_KEY

from lexforge.procs import bin_path, spawn, stop_group
from test_api import ApiServer, chat_rows, jsonl, upload, wait_status

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "lexforge" / "samples" / "data" / "legalbench" / "tasks"
POOL = "api-retrain-pool"
API_KEY = "sk-retrain-test-key-123"


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


def test_openai_sdk_job_through_the_real_deployment_is_served(retrain_worker, serve_app, serve_base, prefect_server,
                                                              mlflow_server, tmp_path):
    from mlflow import MlflowClient

    from api.settings import ApiSettings
    from lexforge.storage import open_store
    from lexforge.storage.records import RunRecords

    overrides = (
        "data.max_seq_len=256", "checkpoint.every_n_steps=1", "eval.engine=vllm", "eval.max_new_tokens=4",
        "model.dtype=float32", "serve.max_model_len=512",
        f"eval.suites=[{{name: statute_mcq, path: {TASKS / 'statute_mcq'}, kind: closed}}]",
    )
    settings = ApiSettings(api_keys=(API_KEY,), store_root=str(tmp_path / "store"),
                           db_path=tmp_path / "api.db", prefect_api_url=prefect_server,
                           deployment="retrain/lexforge-retrain", run_parameters={"deploy": False, "train_retries": 0},
                           spec_overrides=overrides, serve_url=serve_app, serve_api_key=SERVE_KEY,
                           serve_admin_key=SERVE_ADMIN_KEY, poll_interval_s=2.0)
    server = ApiServer(settings)
    try:
        client = server.client(API_KEY)
        train = upload(client, jsonl(chat_rows(12)))
        job = client.fine_tuning.jobs.create(model=serve_base.name, training_file=train.id, suffix="real",
                                             hyperparameters={"n_epochs": 1, "batch_size": 4, "lora_rank": 4})
        done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"}, timeout=1500)
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=500)]
        if done.status != "succeeded":
            pytest.fail(f"job {done.status}: {done.error}\n--- events (oldest first):\n" + "\n".join(reversed(events))
                        + "\n--- worker log:\n" + retrain_worker.read_text()[-6000:], pytrace=False)
        assert done.fine_tuned_model == f"{serve_base.name}:ft-real-{job.id.removeprefix('ftjob-')}"
        assert any("Completed" in m for m in events) and len(events) > 6  # states + the pipeline's logs

        records = RunRecords(open_store(settings.store_root), job.id)
        result = records.read_result()
        assert result.status == "completed" and result.lineage.spec_hash
        # the eval in the flow run was vLLM's (the path that deadlocked)
        report = records.read_eval_report("candidate")
        assert report["engine"] == "vllm", report.get("engine_fallback_reason")

        # checkpoints carry their own commit times, newest first
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        committed = {m.step: int(m.committed_at) for m in records.committed()}
        assert ckpts and {c.step_number: c.created_at for c in ckpts} == committed
        assert [c.step_number for c in ckpts] == sorted(committed, reverse=True)
        assert job.created_at <= ckpts[-1].created_at <= ckpts[0].created_at <= done.finished_at

        # trained_tokens is what the trainer counted (every non-padding token of every step), also in MLflow
        assert done.trained_tokens == result.trained_tokens > 0
        ml = MlflowClient(mlflow_server)
        assert ml.get_run(result.mlflow_run_id).data.tags["lexforge.trained_tokens"] == str(result.trained_tokens)

        # one model, one identity: what is served is the registry version the pipeline registered and evaluated
        registered = records.read_registration()
        mv = ml.get_model_version(registered.name, registered.version)
        assert mv.tags["spec_name"] == job.id and mv.tags["spec_hash"] == result.lineage.spec_hash
        deadline = time.monotonic() + 300
        while not any(e.message.startswith(f"Model {done.fine_tuned_model} is available")
                      for e in client.fine_tuning.jobs.list_events(job.id, limit=100)):
            assert time.monotonic() < deadline, [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
            time.sleep(1)
        served = {m.id: m for m in client.models.list()}
        assert done.fine_tuned_model in served
        assert served[done.fine_tuned_model].model_extra["version"] == f"{registered.name}/{registered.version}"
        raw = client.chat.completions.with_raw_response.create(
            model=done.fine_tuned_model, max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "What is the limitation period in tort?"}])
        assert raw.headers["x-lexforge-model-version"] == f"{registered.name}/{registered.version}"
        reply = raw.parse()
        assert reply.model == done.fine_tuned_model and reply.usage.completion_tokens > 0
        assert reply.choices[0].message.role == "assistant" and isinstance(reply.choices[0].message.content, str)
        assert client.files.content(done.result_files[0]).text.startswith("step,train_loss")
    finally:
        server.stop()
