"""Operational behaviour of training on real Ray: SIGTERM to a worker or to the driver, SIGKILL of a worker,
S3 checkpoints (moto server), MLflow tracking (real server), the DPO recipe (GRPO: tests/test_grpo.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading

import pytest

from lexforge.testing import ray_train_worker_processes, train_in_thread
from tests.test_train import assert_same_trajectory, make_spec, run_with_drill, straight_run


@pytest.mark.slow
def test_worker_sigterm_saves_at_next_step_boundary_then_resumes(tmp_path, tiny_model_dir, ray_local):
    from lexforge.storage import open_store
    from lexforge.storage.records import RunRecords
    from lexforge.train.run import wait_for_progress

    store = tmp_path / "store"
    spec = make_spec("sigterm-worker", tiny_model_dir, store, steps=400, every=1000)  # no periodic checkpoints
    t, box = train_in_thread(spec)
    wait_for_progress(open_store(str(store)), spec.name, 2, timeout=300)
    workers = ray_train_worker_processes()
    assert len(workers) == 2
    os.kill(workers[-1].pid, signal.SIGTERM)
    t.join(timeout=300)
    assert "error" not in box, box.get("error")
    r = box["result"]
    assert r.status == "preempted" and 2 <= r.steps < 400
    latest = RunRecords(open_store(str(store)), spec.name).latest()
    assert latest.step == r.steps  # nothing committed was lost: the preemption checkpoint is the last step
    from lexforge.train import run_training
    from lexforge.train.model import SetupError

    # the same run name with another training setup is refused before any work, naming what changed
    changed = make_spec("sigterm-worker", tiny_model_dir, store, steps=400, every=1000, learning_rate=1e-3)
    with pytest.raises(SetupError, match=r"hyperparams.learning_rate: 0.005 -> 0.001") as refused:
        run_training(changed)
    assert "new run name" in str(refused.value) and "--continue" in str(refused.value)

    # an explicit continuation trains on and records the lineage chain on every later checkpoint and the output
    spec2 = make_spec("sigterm-worker", tiny_model_dir, store, steps=r.steps + 2, every=1000)
    spec2.checkpoint.on_spec_change = "continue"
    r2 = run_training(spec2)
    assert r2.status == "completed" and r2.resumed_from_step == r.steps and sorted(r2.losses) == [r.steps + 1, r.steps + 2]
    chain = [(spec.spec_hash(), 1, r.steps), (spec2.spec_hash(), r.steps + 1, r.steps + 2)]
    records = RunRecords(open_store(str(store)), spec.name)
    for lineage in (records.latest().lineage, records.read_output_lineage(), records.read_result().lineage):
        assert [(s.spec_hash, s.first_step, s.last_step) for s in lineage.segments] == chain
    assert r2.trained_tokens > r.trained_tokens > 0  # counted across both attempts

    # the finished run re-submitted with the identical spec returns its result without training
    again = run_training(spec2)
    assert again.steps == r2.steps and again.losses == r2.losses and records.committed_steps()[-1] == r2.steps


@pytest.mark.slow
def test_worker_sigkill_recovered_by_ray_failure_config(tmp_path, tmp_path_factory, tiny_model_dir, ray_local):
    from lexforge.storage import open_store
    from lexforge.train.run import wait_for_progress

    steps = 12
    straight = straight_run(tmp_path_factory, tiny_model_dir, "lora", steps)
    store = tmp_path / "store"
    spec = make_spec("sigkill", tiny_model_dir, store, steps=steps, every=2)
    os.environ["LEXFORGE_STEP_DELAY_S"] = "0.5"  # slow the tiny steps down so the kill lands mid-run
    try:
        t, box = train_in_thread(spec)
        wait_for_progress(open_store(str(store)), spec.name, 3, timeout=600)
        os.kill(ray_train_worker_processes()[0].pid, signal.SIGKILL)
        t.join(timeout=400)
    finally:
        os.environ.pop("LEXFORGE_STEP_DELAY_S", None)
    assert "error" not in box, box.get("error")
    r = box["result"]
    assert r.status == "completed" and r.steps == steps
    assert r.resumed_from_step and r.resumed_from_step >= 2  # restarted worker group resumed from a checkpoint
    assert_same_trajectory(straight.losses, r.losses, sorted(r.losses))  # no data skipped or repeated


@pytest.mark.slow
def test_driver_sigterm_via_ray_job_entrypoint_then_rerun_resumes(tmp_path, tiny_model_dir, lexforge_home):
    store = tmp_path / "store"
    spec = make_spec("sigterm-driver", tiny_model_dir, store, steps=300, every=1000)
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    env = {**os.environ, "LEXFORGE_STEP_DELAY_S": "0.05"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "lexforge.train.entrypoint", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: list[str] = []
    sent = threading.Event()

    def pump():  # one reader for the whole output (communicate() after a partial read can drop buffered lines)
        for line in proc.stdout:
            lines.append(line)
            if (not sent.is_set() and line.startswith("LEXFORGE_PROGRESS")
                    and (json.loads(line.split(" ", 1)[1]).get("step") or 0) >= 2):
                proc.send_signal(signal.SIGTERM)
                sent.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=600)
        reader.join(timeout=30)  # Ray processes may hold the pipe open after the driver exits
    finally:
        if proc.poll() is None:
            from lexforge.testing import kill_pid_tree

            kill_pid_tree(proc.pid)
    out = "".join(lines)
    assert proc.returncode == 75, out[-3000:]
    res = json.loads([ln for ln in out.splitlines() if ln.startswith("LEXFORGE_RESULT ")][-1].split(" ", 1)[1])
    assert res["status"] == "preempted" and res["steps"] >= 2
    stopped = res["steps"]
    # the same command again resumes (shortened with --set so the test stays quick: an explicit continuation)
    done = subprocess.run(cmd + ["--set", f"hyperparams.max_steps={stopped + 2}",
                                 "--set", "checkpoint.on_spec_change=continue"], capture_output=True, text=True,
                          env={**os.environ}, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    res2 = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("LEXFORGE_RESULT ")][-1].split(" ", 1)[1])
    assert res2["status"] == "completed" and res2["resumed_from_step"] == stopped


@pytest.mark.slow
def test_an_older_attempt_is_fenced_out_when_a_newer_one_claims_the_run(tmp_path, tiny_model_dir, ray_local):
    """One writer per run: the workers of an attempt whose driver was lost keep training, but once a newer attempt
    claims the run (its driver claims the next epoch), none of their checkpoint commits lands."""
    import time

    from lexforge.storage import open_store
    from lexforge.storage.records import RunRecords
    from lexforge.train.run import TrainingFailed, wait_for_progress

    store = tmp_path / "store"
    spec = make_spec("fenced", tiny_model_dir, store, steps=200, every=1)
    os.environ["LEXFORGE_STEP_DELAY_S"] = "0.3"
    try:
        t, box = train_in_thread(spec)
        records = RunRecords(open_store(str(store)), spec.name)
        wait_for_progress(records.store, spec.name, 3, timeout=300)
        claimed = records.claim_epoch("test: a newer attempt")
        claimed_at = time.time()
        t.join(timeout=300)
    finally:
        os.environ.pop("LEXFORGE_STEP_DELAY_S", None)
    assert claimed.epoch == 2
    assert isinstance(box.get("error"), TrainingFailed) and "newer attempt (epoch 2)" in str(box["error"])
    late = [m.step for m in records.committed() if m.committed_at > claimed_at + 1.0]
    assert not late, f"an older attempt committed {late} after a newer one claimed the run"
    assert all(m.epoch == 1 for m in records.committed()) and records.committed_steps()[-1] < 200
    assert records.read_result() is None  # the fenced attempt wrote no result either


@pytest.mark.slow
def test_dpo_lora_with_mlflow_tracking(tmp_path, tiny_model_dir, mlflow_server, ray_local, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("LEXFORGE_JUDGE_API_KEY", "sk-super-secret-value")
    spec = make_spec("dpo-run", tiny_model_dir, tmp_path / "store", stage="dpo", steps=3, every=2)
    spec.tracking.mlflow_uri = mlflow_server
    r = run_with_drill(spec, None)
    assert r.status == "completed" and r.mlflow_run_id and all(math.isfinite(v) for v in r.losses.values())
    c = MlflowClient(mlflow_server)
    run = c.get_run(r.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["spec_hash"] == spec.spec_hash() and run.data.params["stage"] == "dpo"
    assert "sys.torch" in run.data.params
    assert [m.step for m in c.get_metric_history(r.mlflow_run_id, "loss")] == [1, 2, 3]
    for m in ("lr", "grad_norm", "tokens_per_s", "step_time_s", "checkpoint_stall_s", "reward_accuracy"):
        assert c.get_metric_history(r.mlflow_run_id, m), m
    assert [m.value for m in c.get_metric_history(r.mlflow_run_id, "checkpoint_committed")] == [2, 3]
    assert run.data.tags["lineage.dataset_digest"]
    arts = [a.path for a in c.list_artifacts(r.mlflow_run_id, "output")]
    assert "output/adapter_config.json" in arts and "output/lineage.json" in arts
    blob = json.dumps({"p": run.data.params, "t": run.data.tags})
    assert "sk-super-secret-value" not in blob


def test_entrypoint_rejects_bad_spec_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {train: /nope.jsonl}\nhyperparams: {learning_rate: -1}\n")
    p = subprocess.run([sys.executable, "-m", "lexforge.train.entrypoint", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "learning_rate" in p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1].split(" ", 1)[1])["status"] == "invalid"
