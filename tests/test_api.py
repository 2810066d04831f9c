"""The OpenAI-compatible fine-tuning API, driven end to end with the official ``openai`` SDK against a real
Prefect server and a Prefect runner executing the job flow; files land in a real lexforge store and the
job's adapter is a real PEFT LoRA on the tiny Llama."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from lexforge.procs import spawn, stop_group
from lexforge.testing import free_port

pytestmark = pytest.mark.slow

API_KEY = "sk-lexforge-test-7f3a9c"
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "lexforge" / "samples" / "data" / "legal_qa.jsonl"
TEST_FLOW = "api-test-retrain"
TEST_DEPLOYMENT = "api-test"

# A stand-in for the retrain deployment: it receives the JobSpec exactly as the real one does and writes the
# run's records with the real writers (lexforge.storage.records: Progress, Manifest, RunResult, the output,
# the registration), so the API's readers are checked against what the trainer and the registry really write.
# It logs through Prefect. Its behaviour is picked by the job suffix (slow -> cancellable, boom -> fails).
FLOW_SCRIPT = textwrap.dedent('''
    import json, os, tempfile, time
    from pathlib import Path
    from prefect import flow, get_run_logger

    @flow(name="%(flow)s")
    def retrain(spec_path: str, overrides: list[str] | None = None, train_retries: int = 2, deploy: bool = True):
        from lexforge.config import load_spec
        from lexforge.storage import store_for_spec
        from lexforge.storage.records import (Lineage, Manifest, Progress, Registration, RunRecords,
                                              RunResult)

        logger = get_run_logger()
        s = load_spec(spec_path, overrides)
        received = Path(os.environ["TEST_RECEIVED_DIR"]) / f"{s.name}.json"
        received.write_text(json.dumps({"spec": s.model_dump(mode="json"), "deploy": deploy}))
        logger.info("training %%s from %%s", s.name, s.data.train)
        suffix = s.tags.get("api_suffix")
        if suffix == "boom":
            raise RuntimeError("simulated training failure: CUDA out of cheese")
        if suffix == "slow":
            for _ in range(1200):
                time.sleep(0.25)
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        records = RunRecords(store_for_spec(s), s.name)
        lineage = Lineage(run_name=s.name, spec_hash=s.spec_hash(), dataset_digest="0" * 64, base_model=s.model.base,
                          method=s.method, stage=s.stage, strategy=s.strategy)
        tokens = 0
        for step in (1, 2):
            tokens += 100 * step
            records.write_progress(Progress(step=step, total_steps=2, loss=3.0 / step, tokens_per_s=100.0,
                                            trained_tokens=tokens, eta_s=1.0))
            records.store.put_bytes(records.layout.checkpoint_file(step, "rank_00000.pt"), b"state")
            records.write_manifest(Manifest(step=step, run=s.name, strategy=s.strategy, world_size=1,
                                            files={"rank_00000.pt": 5}, lineage=lineage,
                                            metrics={"loss": 3.0 / step}, trained_tokens=tokens,
                                            committed_at=time.time()))
            time.sleep(1.1)  # distinct commit times (whole seconds in the API)
        model = AutoModelForCausalLM.from_pretrained(s.model.base)
        model = get_peft_model(model, LoraConfig(r=s.lora.r, lora_alpha=s.lora.alpha, target_modules="all-linear"))
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            (Path(d) / "lineage.json").write_bytes(lineage.to_json())
            uri = records.publish_output(Path(d))
        records.write_result(RunResult(status="completed", steps=2, total_steps=2, final_loss=1.5,
                                       trained_tokens=tokens, lineage=lineage, base_model=s.model.base,
                                       output_uri=uri))
        records.write_registration(Registration(name="stand-in-registry", version="1", base_model=s.model.base))
        logger.info("adapter written")
        return {"trained_tokens": tokens}

    if __name__ == "__main__":
        retrain.serve(name="%(dep)s", print_starting_message=False)
''') % {"flow": TEST_FLOW, "dep": TEST_DEPLOYMENT}


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [
        {"role": "system", "content": "You are a careful legal assistant."},
        {"role": "user", "content": f"Question {i}: what is the limitation period for an action in tort?"},
        {"role": "assistant", "content": f"Six years from accrual (Limitation Act 1980, s.2). [{i}]"}]}
        for i in range(n)]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class ApiServer:
    """The API app under uvicorn in a background thread on a free port."""

    def __init__(self, settings):
        import uvicorn

        from api.app import create_app

        self.port = free_port()
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "API server did not start"
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def flow_runner(prefect_server, lexforge_home, tmp_path_factory):
    """The stand-in retrain flow served by a Prefect runner process (stopped by PID)."""
    d = tmp_path_factory.mktemp("api_flow")
    script = d / "api_test_flow.py"
    script.write_text(FLOW_SCRIPT)
    received = d / "received"
    received.mkdir()
    env = {"PREFECT_API_URL": prefect_server, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "LEXFORGE_HOME": str(lexforge_home),
           "TEST_RECEIVED_DIR": str(received)}
    proc = spawn([sys.executable, str(script)], d / "runner.log", env=env, cwd=str(d))
    try:
        deadline = time.monotonic() + 120
        while True:
            r = httpx.get(f"{prefect_server}/deployments/name/{TEST_FLOW}/{TEST_DEPLOYMENT}")
            if r.status_code == 200:
                break
            assert proc.poll() is None, (d / "runner.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "runner did not create its deployment"
            time.sleep(1)
        yield proc, d / "runner.log", received
    finally:
        stop_group(proc.pid)


@pytest.fixture(scope="module")
def base_model(lexforge_home, tiny_model_dir) -> str:
    """The tiny Llama registered under $LEXFORGE_HOME/models so clients name it like any base model."""
    models = lexforge_home / "models"
    models.mkdir(exist_ok=True)
    link = models / "tiny-llama"
    if not link.exists():
        link.symlink_to(tiny_model_dir, target_is_directory=True)
    return "tiny-llama"


@pytest.fixture(scope="module")
def api_settings(prefect_server, lexforge_home, tmp_path_factory):
    from api.settings import ApiSettings

    d = tmp_path_factory.mktemp("api")
    return ApiSettings(
        api_keys=(API_KEY, "sk-second-key-0123456789"), store_root=str(d / "store"), db_path=d / "meta" / "api.db",
        max_file_bytes=256 * 1024, prefect_api_url=prefect_server, deployment=f"{TEST_FLOW}/{TEST_DEPLOYMENT}",
        run_parameters={"deploy": False},
        serve_url="", poll_interval_s=1.0)


@pytest.fixture(scope="module")
def api(api_settings):
    server = ApiServer(api_settings)
    yield server
    server.stop()


@pytest.fixture
def client(api) -> openai.OpenAI:
    return api.client()


def upload(client: openai.OpenAI, data: bytes, name: str = "train.jsonl"):
    return client.files.create(file=(name, data, "application/jsonl"), purpose="fine-tune")


def wait_status(client, job_id: str, statuses: set[str], timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {timeout}s"
        time.sleep(1)


# ---- auth -------------------------------------------------------------------------------------------------


def test_requests_without_a_valid_key_are_refused(api, caplog):
    with pytest.raises(openai.AuthenticationError) as e:
        api.client("sk-wrong").files.list()
    assert e.value.body["code"] == "invalid_api_key"
    r = httpx.get(f"{api.base_url}/files")
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert api.client("sk-second-key-0123456789").files.list().object == "list"
    assert API_KEY not in caplog.text


def test_app_refuses_to_start_without_keys(api_settings):
    from dataclasses import replace

    from api.app import create_app

    with pytest.raises(ValueError, match="LEXFORGE_API_KEYS"):
        create_app(replace(api_settings, api_keys=()))


# ---- files ------------------------------------------------------------------------------------------------


def test_file_upload_list_retrieve_content_delete(client, api_settings):
    data = jsonl(chat_rows(6))
    f = upload(client, data, "../../etc/passwd.jsonl")
    assert f.object == "file" and f.purpose == "fine-tune" and f.status == "processed"
    assert f.bytes == len(data) and f.filename == "passwd.jsonl" and f.id.startswith("file-")
    # stored by generated id inside the store, never under the client's name
    stored = [p for p in Path(api_settings.store_root).rglob("*") if p.is_file()]
    assert [p.name for p in stored if "passwd" in str(p)] == []
    assert any(p.name == f"{f.id}.jsonl" for p in stored)

    assert client.files.retrieve(f.id).bytes == len(data)
    assert f.id in [x.id for x in client.files.list(purpose="fine-tune")]
    assert client.files.content(f.id).content == data

    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-../../api.db")


def test_invalid_file_is_rejected_with_the_checker_report(client):
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, SAMPLE.read_bytes(), "legal_qa.jsonl")
    err = e.value.body
    assert err["param"] == "file" and err["code"] == "invalid_file_format"
    problems = err["report"]["problems"]
    assert problems and all(isinstance(p["line"], int) and p["reason"] for p in problems)
    assert f"line {problems[0]['line']}" in err["message"]

    with pytest.raises(openai.BadRequestError, match="cannot detect the data format"):
        upload(client, b'{"messages": [}\n')


def test_size_limit_and_purpose(client, api_settings):
    big = jsonl(chat_rows(2)) * (api_settings.max_file_bytes // 300)
    assert len(big) > api_settings.max_file_bytes
    with pytest.raises(openai.APIStatusError) as e:
        upload(client, big)
    assert e.value.status_code == 413 and e.value.body["code"] == "file_too_large"
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", jsonl(chat_rows(2))), purpose="batch")
    assert e.value.body["param"] == "purpose"


def test_files_paginate(client):
    ids = {upload(client, jsonl(chat_rows(2 + i))).id for i in range(3)}
    first = client.files.list(limit=1, purpose="fine-tune")
    assert len(first.data) == 1 and first.has_more
    seen = [f.id for f in client.files.list(limit=1, purpose="fine-tune")]  # SDK follows `after` cursors
    assert ids <= set(seen) and len(seen) == len(set(seen))


# ---- jobs -------------------------------------------------------------------------------------------------


def test_job_requests_are_validated(client, base_model):
    f = upload(client, jsonl(chat_rows(4)))
    with pytest.raises(openai.NotFoundError) as e:
        client.fine_tuning.jobs.create(model=base_model, training_file="file-" + "0" * 24)
    assert e.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="/etc", training_file=f.id)
    assert e.value.body["param"] == "model" and base_model in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=base_model, training_file=f.id, method={"type": "dpo"})
    assert "preference" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=base_model, training_file=f.id, hyperparameters={"n_epochs": 0})
    assert e.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model=base_model, training_file=f.id,
                                       hyperparameters={"learning_rate": 1e-4, "learning_rate_multiplier": 2})


def test_job_runs_to_success_with_events_checkpoints_and_results(client, base_model, flow_runner, api_settings):
    from lexforge.config import HyperParams

    rows = chat_rows(8)
    train = upload(client, jsonl(rows))
    val = upload(client, jsonl([{"messages": [{"role": "user", "content": "Held-out: time limit for contract claims?"},
                                              {"role": "assistant", "content": "Six years (s.5)."}]}]), "val.jsonl")
    job = client.fine_tuning.jobs.create(
        model=base_model, training_file=train.id, validation_file=val.id, suffix="Legal QA", seed=7,
        hyperparameters={"n_epochs": 2, "learning_rate_multiplier": 0.5, "batch_size": 2, "lora_rank": 4},
        metadata={"team": "litigation"})
    assert job.object == "fine_tuning.job" and job.id.startswith("ftjob-")
    assert job.status in ("validating_files", "queued") and job.fine_tuned_model is None
    assert job.model == base_model and job.training_file == train.id and job.seed == 7
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 2
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(0.5)

    done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", (done.error, flow_runner[1].read_text()[-3000:])
    short = job.id.removeprefix("ftjob-")
    assert done.fine_tuned_model == f"{base_model}:ft-legal-qa-{short}"
    assert done.finished_at >= done.created_at and done.error is None

    # the flow received the JobSpec built from the request
    from lexforge.storage import open_store
    from lexforge.storage.records import RunRecords

    received = json.loads((flow_runner[2] / f"{job.id}.json").read_text())
    spec = received["spec"]
    assert received["deploy"] is False and spec["promotion"]["auto_promote"] is False  # the champion stays put
    assert spec["name"] == job.id and spec["stage"] == "sft" and spec["hyperparams"]["epochs"] == 2
    assert spec["hyperparams"]["learning_rate"] == pytest.approx(HyperParams().learning_rate * 0.5)
    assert spec["hyperparams"]["per_device_batch_size"] == 2 and spec["hyperparams"]["seed"] == 7
    assert spec["lora"]["r"] == 4 and spec["data"]["train"].endswith(f"{train.id}.jsonl")
    assert spec["data"]["validation"].endswith(f"{val.id}.jsonl") and done.validation_file == val.id
    records = RunRecords(open_store(api_settings.store_root), job.id)
    assert "adapter_config.json" in records.output_files()
    assert done.trained_tokens == records.read_result().trained_tokens == 300  # what was trained, not an estimate

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))  # SDK pages with `after`
    assert len({e.id for e in events}) == len(events)
    times = [e.created_at for e in events]
    assert times == sorted(times, reverse=True)
    messages = [e.message for e in events]
    assert any(m.startswith("Created fine-tuning job") for m in messages)
    assert any("Running" in m for m in messages) and any("Completed" in m for m in messages)
    assert any(f"training {job.id}" in m for m in messages)  # a log line of the flow run
    assert any(m == "The job has successfully completed" for m in messages)
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and {e.data["step"] for e in metrics} <= {1, 2}

    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [2, 1]
    assert ckpts[0].metrics.train_loss == pytest.approx(1.5)
    assert ckpts[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-2"
    committed = {m.step: int(m.committed_at) for m in records.committed()}
    assert {c.step_number: c.created_at for c in ckpts} == committed  # each checkpoint's own commit time
    assert ckpts[0].created_at > ckpts[1].created_at >= job.created_at

    assert len(done.result_files) == 1
    csv_text = client.files.content(done.result_files[0]).text
    assert csv_text.splitlines()[0].startswith("step,train_loss")
    assert client.files.retrieve(done.result_files[0]).purpose == "fine-tune-results"

    listed = client.fine_tuning.jobs.list(limit=100)
    assert job.id in [j.id for j in listed]


def test_dpo_job_with_method_and_metadata_filter(client, base_model, flow_runner, api_settings):
    prefs = [{"prompt": f"Is a verbal contract for land valid? ({i})", "chosen": "No: it must be in writing "
              f"(LP(MP)A 1989 s.2). [{i}]", "rejected": f"Yes, always. [{i}]"} for i in range(6)]
    train = upload(client, jsonl(prefs), "prefs.jsonl")
    assert "format preference" in client.files.retrieve(train.id).status_details
    with pytest.raises(openai.BadRequestError):  # preference data cannot train a supervised job
        client.fine_tuning.jobs.create(model=base_model, training_file=train.id)
    job = client.fine_tuning.jobs.create(
        model=base_model, training_file=train.id, metadata={"matter": "m-42"},
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == pytest.approx(0.2)
    assert [j.id for j in client.fine_tuning.jobs.list(extra_query={"metadata[matter]": "m-42"})] == [job.id]
    done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    spec = json.loads((flow_runner[2] / f"{job.id}.json").read_text())["spec"]
    assert spec["stage"] == "dpo" and spec["hyperparams"]["dpo_beta"] == pytest.approx(0.2)
    assert spec["data"]["format"] == "preference"


def test_job_failure_is_reported(client, base_model, flow_runner):
    train = upload(client, jsonl(chat_rows(3)))
    job = client.fine_tuning.jobs.create(model=base_model, training_file=train.id, suffix="boom")
    done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "failed" and done.fine_tuned_model is None
    assert "out of cheese" in done.error.message and done.error.code == "training_failed"
    levels = {e.level for e in client.fine_tuning.jobs.list_events(job.id, limit=100)}
    assert "error" in levels


def test_cancel_a_running_job(client, base_model, flow_runner):
    train = upload(client, jsonl(chat_rows(3)))
    job = client.fine_tuning.jobs.create(model=base_model, training_file=train.id, suffix="slow")
    wait_status(client, job.id, {"running"}, timeout=180)
    with pytest.raises(openai.ConflictError):  # its training file is in use
        client.files.delete(train.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)
    # Prefect really stops the flow run: its Cancelled state shows up among the job's events
    deadline = time.monotonic() + 120
    while True:
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        if any("Flow run Cancelled" in m for m in events):
            break
        assert time.monotonic() < deadline, events
        time.sleep(1)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert client.files.delete(train.id).deleted


def test_jobs_list_paginates(client, base_model, flow_runner):
    ids = [j.id for j in client.fine_tuning.jobs.list(limit=100)]
    assert len(ids) >= 3
    page = client.fine_tuning.jobs.list(limit=1)
    assert len(page.data) == 1 and page.has_more and page.data[0].id == ids[0]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == ids
    nxt = client.fine_tuning.jobs.list(limit=2, after=ids[0])
    assert [j.id for j in nxt.data] == ids[1:3]


def test_cli_serves_the_api(prefect_server, tmp_path):
    from lexforge.procs import bin_path, wait_http

    port = free_port()
    env = {"LEXFORGE_HOME": str(tmp_path / "home"), "PREFECT_API_URL": prefect_server}
    bad = subprocess.run([bin_path("lexforge"), "api", "--port", str(port)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **env, "LEXFORGE_API_KEYS": ""})
    assert bad.returncode == 2 and "LEXFORGE_API_KEYS" in bad.stderr
    log = tmp_path / "api.log"
    proc = spawn([bin_path("lexforge"), "api", "--port", str(port)], log,
                 env={**env, "LEXFORGE_API_KEYS": "sk-cli-key-0123456789"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc, log_path=log)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-cli-key-0123456789", max_retries=0)
        f = c.files.create(file=("t.jsonl", jsonl(chat_rows(2))), purpose="fine-tune")
        assert c.files.retrieve(f.id).status == "processed"
        assert (tmp_path / "home" / "api" / "api.db").is_file()
        assert (tmp_path / "home" / "store" / "api" / "files" / f"{f.id}.jsonl").is_file()
    finally:
        stop_group(proc.pid)
    assert "sk-cli-key-0123456789" not in log.read_text()


def test_state_survives_a_restart(api, api_settings, base_model):
    client = api.client()
    before_files = {f.id for f in client.files.list()}
    before_jobs = {j.id: j.status for j in client.fine_tuning.jobs.list(limit=100)}
    assert before_jobs
    api.stop()
    second = ApiServer(api_settings)
    try:
        c2 = second.client()
        assert {f.id for f in c2.files.list()} == before_files
        assert {j.id: j.status for j in c2.fine_tuning.jobs.list(limit=100)} == before_jobs
    finally:
        second.stop()
        api.__init__(api_settings)  # later tests (if any) get a running server again


# ---- Prefect client: idempotent create --------------------------------------------------------------------
# (Chat with a fine-tuned model through this API is tested on the real pipeline: tests/test_api_retrain.py.)


def test_create_run_is_idempotent_on_the_job_id(prefect_server, flow_runner):
    """A create_flow_run retried after a lost answer must not start the job twice (real Prefect server)."""
    from api.orchestrator import PrefectJobs

    jobs = PrefectJobs(prefect_server, f"{TEST_FLOW}/{TEST_DEPLOYMENT}")
    params = {"spec_path": "/nonexistent/spec.yaml"}
    first = jobs.create_run(params, name="ftjob-idempotency-check", tags=["test"])
    try:
        again = jobs.create_run(params, name="ftjob-idempotency-check", tags=["test"])
        assert again["id"] == first["id"]
    finally:
        jobs.cancel_run(first["id"])
