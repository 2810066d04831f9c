"""Orchestration: Ray job dispatch (submit / re-attach / resume), Prefect flows, deployments, automations.

Everything is real: a Ray head with the jobs API (ray_head), a Prefect server (prefect_server), an MLflow
server (mlflow_server), a Prefect process worker started here, tiny models. The dispatch machinery is tested
with a small checkpointing trainer script run as the Ray job (fast); the pipeline tests run the real engine.
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

# The prefect_server fixture does not tell its UI where the API is (it defaults to port 4200); same-origin "/api"
# lets the UI screenshot test render pages of the fixture's server.

from lexforge import jobs
from lexforge.config import load_spec

ROOT = Path(__file__).resolve().parents[1]

# A trainer with the same store contract as lexforge.train.entrypoint: resumes from the latest committed
# checkpoint (manifest.json written last), writes progress.json, prints LEXFORGE_RESULT at the end.
FAKE_TRAINER = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    import yaml
    spec = yaml.safe_load(open(sys.argv[1]))
    run = spec["name"]; total = spec["hyperparams"]["max_steps"]; every = spec["checkpoint"]["every_n_steps"]
    root = Path(spec["storage"]["root"]) / "runs" / run
    ck = root / "checkpoints"
    done = sorted(int(p.parent.name[5:]) for p in ck.glob("step_*/manifest.json")) if ck.exists() else []
    start = done[-1] if done else 0
    print(f"starting at step {start} of {total}", flush=True)
    for step in range(start + 1, total + 1):
        time.sleep(float(os.environ.get("FAKE_STEP_S", "0.4")))
        (root).mkdir(parents=True, exist_ok=True)
        (root / "progress.json").write_text(json.dumps({"step": step, "total_steps": total, "loss": 1.0 / step,
                                                        "tokens_per_s": 100.0, "eta_s": 0, "status": "running"}))
        print(f"step {step} loss {1.0/step:.3f}", flush=True)
        if step % every == 0:
            d = ck / f"step_{step:08d}"; d.mkdir(parents=True, exist_ok=True)
            (d / "state.json").write_text(json.dumps({"step": step}))
            (d / "manifest.json").write_text(json.dumps({"step": step}))
    print("LEXFORGE_RESULT " + json.dumps({"run_name": run, "steps": total, "final_loss": 1.0 / total,
                                           "resumed_from_step": start or None, "mlflow_run_id": None}), flush=True)
''')


def _wait(pred, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture()
def ray_jobs_env(ray_head, lexforge_home, monkeypatch):
    _, dashboard = ray_head
    monkeypatch.setenv("LEXFORGE_RAY_DASHBOARD_URL", dashboard)
    return dashboard


def _fake_spec(tmp_path: Path, name: str, steps: int = 12, every: int = 2) -> Path:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({
        "name": name, "data": {"train": str(data)}, "hyperparams": {"max_steps": steps},
        "checkpoint": {"every_n_steps": every}, "storage": {"root": str(tmp_path / "store")},
    }))
    return p


def _fake_entrypoint(tmp_path: Path) -> str:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    return f"{sys.executable} {script} spec.yaml"


def test_dispatch_reattaches_and_resumes_after_stop(tmp_path, ray_jobs_env):
    spec = load_spec(_fake_spec(tmp_path, "dispatch-run", steps=12, every=2))
    entry = _fake_entrypoint(tmp_path)
    client = jobs.job_client(spec)

    first = jobs.dispatch_training(client, spec, "0f0f0f0f-aaaa", dataset_digest="d1", entrypoint=entry)
    assert (first.how, first.attempt) == ("submitted", 1)
    assert first.submission_id == "lexforge-dispatch-run-0f0f0f0f-1"
    # a retried task (same or another flow run) re-attaches instead of starting a second trainer
    again = jobs.dispatch_training(client, spec, "0f0f0f0f-aaaa", dataset_digest="d1", entrypoint=entry)
    assert (again.how, again.submission_id) == ("attached", first.submission_id)
    other = jobs.dispatch_training(client, spec, "99999999-bbbb", dataset_digest="d1", entrypoint=entry)
    assert (other.how, other.submission_id) == ("attached", first.submission_id)

    _wait(lambda: len(jobs.committed_steps(spec)) >= 2, 120, "two committed checkpoints")
    client.stop_job(first.submission_id)  # preemption
    _wait(lambda: str(client.get_job_status(first.submission_id)) in ("STOPPED", "FAILED"), 60, "job to stop")
    committed_before = jobs.committed_steps(spec)[-1]
    assert committed_before < 12

    resumed = jobs.dispatch_training(client, spec, "0f0f0f0f-aaaa", dataset_digest="d1", entrypoint=entry)
    assert (resumed.how, resumed.attempt) == ("submitted", 2)
    lines: list[str] = []
    progress: list[dict] = []
    outcome = jobs.follow_job(client, resumed.submission_id, on_log=lines.append, on_progress=progress.append,
                              read_progress=lambda: jobs.read_progress(spec), poll_s=0.5)
    result = jobs.raise_for_outcome(outcome)
    assert result["steps"] == 12
    assert result["resumed_from_step"] >= committed_before  # no committed step lost
    assert f"starting at step {result['resumed_from_step']} of 12" in lines
    assert progress and progress[-1]["step"] == 12
    assert jobs.committed_steps(spec)[-1] == 12

    # done: the same spec + data reuses the finished job; different data trains again
    reused = jobs.dispatch_training(client, spec, "77777777-cccc", dataset_digest="d1", entrypoint=entry)
    assert (reused.how, reused.submission_id) == ("reused", resumed.submission_id)
    runs = {j.submission_id: str(j.status) for j in jobs.jobs_for_run(client, "dispatch-run")}
    assert runs == {first.submission_id: "STOPPED", resumed.submission_id: "SUCCEEDED"}


def test_failed_job_raises_with_log_tail(tmp_path, ray_jobs_env):
    spec = load_spec(_fake_spec(tmp_path, "broken-run"))
    client = jobs.job_client(spec)
    d = jobs.dispatch_training(client, spec, "12345678", entrypoint=f"{sys.executable} -c \"import sys; print('boom: bad data'); sys.exit(3)\"")
    out = jobs.follow_job(client, d.submission_id, poll_s=0.5)
    assert out.status == "FAILED"
    with pytest.raises(jobs.TrainJobError, match="boom: bad data") as e:
        jobs.raise_for_outcome(out)
    assert e.value.status == "FAILED"


def test_unreachable_ray_cluster_is_a_clear_error(tmp_path, lexforge_home):
    from lexforge.testing import free_port

    spec = load_spec(_fake_spec(tmp_path, "nowhere"), [f"resources.ray_address=http://127.0.0.1:{free_port()}"])
    with pytest.raises(ConnectionError, match="cannot reach the Ray jobs API"):
        jobs.job_client(spec)


def _artifacts(flow_run_id) -> dict[str, object]:
    """Latest artifact per key of a flow run (including its task runs)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    out: dict[str, object] = {}
    for a in sorted(arts, key=lambda a: a.created):
        out[a.key or str(a.id)] = a
    return out


def _logs(flow_run_id) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    msgs: list[str] = []
    with get_client(sync_client=True) as c:
        offset = 0
        while True:
            page = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=offset)
            msgs += [l.message for l in page]
            if len(page) < 200:
                return msgs
            offset += 200


def test_train_task_streams_job_logs_and_progress_to_prefect(tmp_path, ray_jobs_env, prefect_server):
    from prefect import flow

    from tasks.spec import load_job_spec
    from tasks.train import train

    spec_path = _fake_spec(tmp_path, "prefect-train", steps=8, every=4)
    entry = _fake_entrypoint(tmp_path)

    @flow(name="train-only")
    def train_only(path: str):
        spec = load_job_spec(path)
        return train(spec, "d1", entrypoint=entry)

    state = train_only(str(spec_path), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["steps"] == 8
    fr_id = state.state_details.flow_run_id
    arts = _artifacts(fr_id)
    assert arts["training-progress-prefect-train"].data == 100.0
    links = arts["training-links-prefect-train"].data
    sid = jobs.submission_id("prefect-train", str(fr_id), 1)
    assert f"{ray_jobs_env}/#/jobs/{sid}" in links and "SUCCEEDED" in links
    assert "spec-prefect-train" in arts
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    logs = _wait(lambda: (lambda l: l if any("[ray] step 8 loss" in m for m in l) else None)(_logs(fr_id)), 30,
                 "the job's log lines in the flow run's Prefect logs")
    assert any(m.startswith("progress: step 8/8") for m in logs)


# ---- the real pipeline ----------------------------------------------------------------------------------------

SAMPLES = ROOT / "lexforge" / "samples" / "data"


def _real_spec(tmp_path: Path, tiny_model_dir: Path, mlflow_url: str, name: str, steps: int = 40) -> Path:
    tasks = SAMPLES / "legalbench" / "tasks"
    spec = {
        "name": name, "model": {"base": str(tiny_model_dir)}, "method": "lora", "stage": "sft", "strategy": "ddp",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(SAMPLES / "legal_qa.jsonl"), "max_seq_len": 128, "holdout_fraction": 0.1},
        "hyperparams": {"max_steps": steps, "per_device_batch_size": 2, "learning_rate": 5e-3, "warmup_ratio": 0.0},
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "checkpoint": {"every_n_steps": 4, "keep_last": 3},
        "eval": {"engine": "transformers", "max_new_tokens": 4, "batch_size": 16, "suites": [
            {"name": "statute_yes_no", "path": str(tasks / "statute_yes_no"), "kind": "closed"},
            {"name": "statute_explain", "path": str(tasks / "statute_explain"), "kind": "open"}]},
        "promotion": {"registered_model": f"lexforge-{name}", "max_suite_regression": 1.0},
        "storage": {"root": str(tmp_path / "store")},
        "tracking": {"mlflow_uri": mlflow_url, "experiment": f"flows-{name}"},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def test_retrain_flow_in_process(tmp_path, ray_jobs_env, prefect_server, mlflow_server, tiny_model_dir):
    from flows.retrain import retrain

    spec_path = _real_spec(tmp_path, tiny_model_dir, mlflow_server, "flows-inproc", steps=6)
    state = retrain(str(spec_path), ["hyperparams.learning_rate=0.004"], return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert out["steps"] == 6 and out["promoted"] is True and out["version"] == "1"
    arts = _artifacts(state.state_details.flow_run_id)
    for key in ("spec", "dataset-report", "training-plan", "training-progress", "training-links", "eval-candidate",
                "model-version", "promotion-decision", "deployment"):
        assert f"{key}-flows-inproc" in arts, sorted(arts)
    assert arts["training-progress-flows-inproc"].data == 100.0
    links = arts["training-links-flows-inproc"].data
    assert f"{mlflow_server}/#/experiments/" in links and ray_jobs_env in links
    table = json.loads(arts["eval-candidate-flows-inproc"].data)
    assert {r["suite"] for r in table} >= {"statute_yes_no", "statute_explain", "[blended]"}
    assert "v1 is now **@champion**" in arts["promotion-decision-flows-inproc"].data
    assert "dropped" in arts["dataset-report-flows-inproc"].data.lower()
    # resubmitting the same run is idempotent: training resumes from its final checkpoint, the same weights map
    # to the version registered before (no duplicate), which is already champion, and deploy runs again
    again = retrain(str(spec_path), ["hyperparams.learning_rate=0.004"], return_state=True)
    assert again.is_completed(), again.message
    out2 = again.result()
    assert out2["version"] == "1" and out2["promoted"] is True and out2["steps"] == 6
    from lexforge.registry.core import client

    assert [v.version for v in client(mlflow_server).search_model_versions("name = 'lexforge-flows-inproc'")] == ["1"]


# ---- deployments + worker + automation: a killed training run is resumed ------------------------------------------


def _driver_pids(run_name: str) -> list[int]:
    """PIDs of the Ray job driver(s) (the entrypoint process) of this run, found by the job metadata Ray puts in
    the driver's environment."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "lexforge.train.entrypoint" not in " ".join(p.info["cmdline"] or []):
                continue
            cfg = p.environ().get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if f'"lexforge_run": "{run_name}"' in cfg:
            pids.append(p.info["pid"])
    return pids


def _flow_runs(flow_name: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as c:
        return c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


def _read_flow_run(fr_id):
    from prefect import get_client

    with get_client(sync_client=True) as c:
        return c.read_flow_run(fr_id)


@pytest.fixture(scope="module")
def orchestrated(prefect_server, ray_head, mlflow_server, tiny_model_dir, lexforge_home, tmp_path_factory):
    """Deployments applied from deployments/prefect.yaml to a fresh process pool, and a worker polling it."""
    from flows.cli import apply_deployments
    from lexforge.procs import bin_path, spawn, stop_group

    _, dashboard = ray_head
    old = os.environ.get("LEXFORGE_RAY_DASHBOARD_URL")
    os.environ["LEXFORGE_RAY_DASHBOARD_URL"] = dashboard
    d = tmp_path_factory.mktemp("orchestrated")
    spec_path = _real_spec(d, tiny_model_dir, mlflow_server, "flows-e2e", steps=48)
    pool = f"lexforge-test-{os.getpid()}"
    created = apply_deployments(pool=pool, spec=str(spec_path), echo=lambda *a: None)
    env = {"PREFECT_API_URL": prefect_server, "LEXFORGE_RAY_DASHBOARD_URL": dashboard,
           "MLFLOW_TRACKING_URI": mlflow_server, "PREFECT_WORKER_QUERY_SECONDS": "3"}
    log = d / "worker.log"
    worker = spawn([bin_path("prefect"), "worker", "start", "--pool", pool, "--type", "process"], log, env=env)
    try:
        yield {"spec_path": spec_path, "pool": pool, "deployments": created, "dashboard": dashboard,
               "worker_log": log, "prefect": prefect_server, "mlflow": mlflow_server}
    finally:
        stop_group(worker.pid)
        if old is None:
            os.environ.pop("LEXFORGE_RAY_DASHBOARD_URL", None)
        else:
            os.environ["LEXFORGE_RAY_DASHBOARD_URL"] = old


def test_deployments_schedule_and_automation_applied(orchestrated):
    from prefect import get_client

    assert set(orchestrated["deployments"]) == {"retrain/lexforge-retrain", "resume/lexforge-resume",
                                                "evaluate/lexforge-evaluate", "promote/lexforge-promote",
                                                "deploy/lexforge-deploy"}
    with get_client(sync_client=True) as c:
        dep = c.read_deployment_by_name("retrain/lexforge-retrain")
        assert dep.work_pool_name == orchestrated["pool"]
        assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * 1"]
        assert dep.parameters["spec_path"] == str(orchestrated["spec_path"])
        assert {"lexforge", "lexforge-train"} <= set(dep.tags)
        resume_dep = c.read_deployment_by_name("resume/lexforge-resume")
        autos = c.read_automations_by_name("lexforge-resume-on-failure")
    assert len(autos) == 1
    trig = autos[0].trigger
    assert trig.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    action = autos[0].actions[0]
    assert action.type == "run-deployment" and action.deployment_id == resume_dep.id
    # applying again is idempotent (no second automation, same deployment ids)
    from flows.cli import apply_deployments

    again = apply_deployments(pool=orchestrated["pool"], spec=str(orchestrated["spec_path"]), echo=lambda *a: None)
    assert again == orchestrated["deployments"]
    with get_client(sync_client=True) as c:
        assert len(c.read_automations_by_name("lexforge-resume-on-failure")) == 1


def test_killed_training_is_resumed_by_the_automation(orchestrated):
    from prefect.deployments import run_deployment

    from flows.cli import cancel_run, resume_run, run_summaries

    spec = load_spec(orchestrated["spec_path"])
    total = spec.hyperparams.max_steps
    client = jobs.job_client(spec)
    retrain_run = run_deployment("retrain/lexforge-retrain", parameters={"train_retries": 0}, timeout=0)

    def committed_while_running():
        job = jobs.active_job(client, spec.name)
        steps = jobs.committed_steps(spec)
        p = jobs.read_progress(spec) or {}
        if job is not None and steps and (p.get("step") or 0) < total - 4 and _driver_pids(spec.name):
            return job, steps[-1]
        return None

    job, committed_at_kill = _wait(committed_while_running, 1200, "a committed checkpoint while training runs", 0.2)
    for pid in _driver_pids(spec.name):  # preemption: the job's driver dies without warning
        os.kill(pid, 9)
    _wait(lambda: str(client.get_job_status(job.submission_id)) == "FAILED", 120, "the killed job to be FAILED")
    assert committed_at_kill < total
    # the flow run that owned the killed job (the retrain run, or a resume run if Ray's OOM killer on this shared
    # machine already failed an earlier attempt) fails; the automation starts `resume` for it
    owner = job.metadata["flow_run_id"]
    _wait(lambda: _read_flow_run(owner).state.is_final(), 300, "the flow run of the killed job to end")
    assert _read_flow_run(owner).state.type.value in ("FAILED", "CRASHED")

    def resume_of(fr_id: str):
        runs = [r for r in _flow_runs("resume") if (r.parameters or {}).get("failed_flow_run_id") == fr_id]
        return runs[0] if runs else None

    resumed = _wait(lambda: resume_of(owner), 180, "the automation to start the resume flow")
    final = _wait(lambda: (lambda r: r if r.state.is_final() else None)(_read_flow_run(resumed.id)), 1500,
                  "the resume flow run to finish", 2)
    if not final.state.is_completed():  # OOM-killed again: the automation resumes the resume (retry budget 3)
        resumed = _wait(lambda: resume_of(str(final.id)), 180, "the automation to resume the resume")
        final = _wait(lambda: (lambda r: r if r.state.is_final() else None)(_read_flow_run(resumed.id)), 1500,
                      "the second resume flow run to finish", 2)
    assert final.state.is_completed(), (final.state.message, orchestrated["worker_log"].read_text()[-5000:])

    history = jobs.jobs_for_run(client, spec.name)
    by_id = {j.submission_id: str(j.status) for j in history}
    assert by_id[job.submission_id] == "FAILED" and str(history[-1].status) == "SUCCEEDED", by_id
    assert history[-1].metadata["flow_run_id"] == str(resumed.id)
    result = jobs.parse_result(client.get_job_logs(history[-1].submission_id))
    assert result["status"] == "completed" and result["steps"] == total
    assert result["resumed_from_step"] is not None and result["resumed_from_step"] >= committed_at_kill
    assert jobs.read_progress(spec)["step"] == total

    arts = _artifacts(resumed.id)
    for key in ("dataset-report", "training-progress", "training-links", "eval-candidate", "promotion-decision"):
        assert f"{key}-flows-e2e" in arts, sorted(arts)
    assert f"resumed from step: {result['resumed_from_step']}" in arts["training-links-flows-e2e"].data

    # on-call view and idempotent commands
    rows = {r["run"]: r for r in run_summaries()}
    assert rows["flows-e2e"]["job_status"] == "SUCCEEDED" and rows["flows-e2e"]["flow_state"] == "COMPLETED"
    assert rows["flows-e2e"]["jobs"] == len(history) and rows["flows-e2e"]["progress"].startswith(f"{total}/{total}")
    msgs: list[str] = []
    assert resume_run("flows-e2e", echo=msgs.append)["action"] == "none"
    assert "already completed" in msgs[-1]
    assert cancel_run("flows-e2e", echo=msgs.append) == {"flow_runs": [], "ray_jobs": []}
    assert "nothing to cancel" in msgs[-1]
    orchestrated["resume_flow_run"] = final


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium) for a "
                    "headless screenshot of the Prefect UI; manual check described in docs/orchestration.md")
def test_prefect_ui_renders_pipeline_run(orchestrated, tmp_path):
    import subprocess

    fr = orchestrated.get("resume_flow_run")
    if fr is None:
        pytest.skip("needs the pipeline run of test_killed_training_is_resumed_by_the_automation")
    ui = orchestrated["prefect"][: -len("/api")]
    base = [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1100", "--virtual-time-budget=30000", f"--user-data-dir={tmp_path / 'profile'}"]

    def render(url: str, name: str) -> str:
        shot = tmp_path / f"{name}.png"
        subprocess.run(base + [f"--screenshot={shot}", url], check=True, timeout=240, capture_output=True)
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
        if os.environ.get("LEXFORGE_SAVE_SCREENSHOTS"):  # refresh the docs' screenshots on demand
            (ROOT / "docs" / "img").mkdir(exist_ok=True)
            (ROOT / "docs" / "img" / shot.name).write_bytes(shot.read_bytes())
        dom = subprocess.run(base + ["--dump-dom", url], check=True, timeout=240, capture_output=True, text=True).stdout
        return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script).*?</\1>", "", dom, flags=re.S))))

    page = render(f"{ui}/runs/flow-run/{fr.id}", "prefect-flow-run")
    assert f"Flow Run: {fr.name}" in page and "Completed" in page and "resume" in page, page[:2000]
    art = render(f"{ui}/artifacts/key/promotion-decision-flows-e2e", "prefect-artifact")
    assert "promotion-decision-flows-e2e" in art, art[:2000]


def test_resume_retry_budget_and_noop(tmp_path, prefect_server):
    """The budget counts the chain of automatic resumes; beyond it the run ends FAILED as RetryBudgetExhausted
    (an event name the automation does not match). A run that did not fail is not resumed."""
    from prefect import get_client
    from prefect.states import Completed, Failed

    from flows.resume import resume
    from flows.retrain import retrain

    spec_path = str(_fake_spec(tmp_path, "budget-run"))
    with get_client(sync_client=True) as c:
        origin = c.create_flow_run(retrain, parameters={"spec_path": spec_path, "overrides": []}, state=Failed())
        first = c.create_flow_run(resume, parameters={"failed_flow_run_id": str(origin.id)}, state=Failed())
        second = c.create_flow_run(resume, parameters={"failed_flow_run_id": str(first.id)}, state=Failed())
        done = c.create_flow_run(retrain, parameters={"spec_path": spec_path}, state=Completed())

    state = resume(failed_flow_run_id=str(second.id), max_attempts=2, return_state=True)
    assert state.type.value == "FAILED" and state.name == "RetryBudgetExhausted"
    assert "2 automatic resumes already failed" in state.message
    stored = _read_flow_run(state.state_details.flow_run_id).state
    assert (stored.type.value, stored.name) == ("FAILED", "RetryBudgetExhausted")
    assert "resume-budget-exhausted" in _artifacts(state.state_details.flow_run_id)

    state = resume(failed_flow_run_id=str(done.id), return_state=True)
    assert state.is_completed() and "not failed/crashed: nothing to resume" in state.message
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # before the session's server stops
