"""Orchestration: Ray job dispatch (submit / re-attach / resume), Prefect flows, deployments, automations.

Everything is real: a Ray head with the jobs API (ray_head), a Prefect server (prefect_server), an MLflow
server (mlflow_server), a Prefect process worker started here, tiny models. The dispatch machinery is tested
with a small checkpointing trainer script run as the Ray job (fast); the pipeline tests run the real engine.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

# A local ray.init() anywhere on this machine writes ~/.ray/auth_token, after which `ray start` enables token
# auth and the ray_head fixture's unauthenticated health check never passes. These tests use local clusters
# only: run them without token auth (must be set before the session's ray_head starts).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

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
