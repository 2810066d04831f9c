"""Training across Ray nodes on one machine, with Ray's own multi-node mechanism: a head and worker nodes started
as separate `ray start` processes, each with its own resources, temp dir and local disk; checkpoints in S3 (the
moto server); nothing shared between nodes but S3. One worker per node (strict spread). A whole node is lost
for real (its raylet and every process of it SIGKILLed, its local disk deleted), with and without notice.

A representative subset runs here (DDP + LoRA for node loss, FSDP for elastic resume, ZeRO-3 for the refusal);
the full strategy x method matrix is `bench/bench_multinode.py --matrix` (docs/scaling.md)."""

from __future__ import annotations

import os
import time

import pytest

from lexforge.testing import train_in_thread
from lexforge.testing_multinode import LocalRayCluster
from tests.test_train import assert_same_trajectory, make_spec

pytestmark = pytest.mark.slow

STEPS, EVERY = 8, 2


@pytest.fixture()
def cluster(tmp_path, moto_s3, lexforge_home):
    """Head (no worker slots) + two worker nodes; the pytest process drives training against it."""
    import ray

    c = LocalRayCluster(tmp_path / "cluster", env={"LEXFORGE_S3_ENDPOINT_URL": moto_s3,
                                                   "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"})
    try:  # a node that fails to start must not leave the head (or the other node) running
        c.start_head(num_cpus=0)
        c.add_node("node-a", num_cpus=1)
        c.add_node("node-b", num_cpus=1)
        os.environ["RAY_ADDRESS"] = c.gcs_address
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        c.stop()


def _spec(name, tiny, moto_s3, bucket, **kw):
    spec = make_spec(name, tiny, f"s3://{bucket}/runs", steps=STEPS, every=EVERY, **kw)
    spec.storage.s3_endpoint_url = moto_s3
    spec.resources.placement = "strict_spread"
    return spec


def straight_spec_resources(num_workers: int):
    from lexforge.config import ResourceSpec

    return ResourceSpec(num_workers=num_workers, placement="strict_spread")


def _records(spec):
    from lexforge.storage import store_for_spec
    from lexforge.storage.records import RunRecords

    return RunRecords(store_for_spec(spec), spec.name)


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (v := pred()):
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_ddp_lora_across_nodes_survives_losing_a_node_without_notice(cluster, tiny_model_dir, moto_s3, tmp_path):
    from lexforge.train import run_training

    straight = run_training(_spec("mn-straight", tiny_model_dir, moto_s3, "mn-straight"))
    assert straight.status == "completed"
    nodes = {w["node_id"] for w in straight.details["workers"]}
    assert len(nodes) == 2 and sorted(w["rank"] for w in straight.details["workers"]) == [0, 1]
    assert sorted(w["node_rank"] for w in straight.details["workers"]) == [0, 1]
    assert all(w["local_rank"] == 0 for w in straight.details["workers"])  # one worker per node
    manifest = _records(_spec("mn-straight", tiny_model_dir, moto_s3, "mn-straight")).latest()
    assert {"rank_00000.pt", "rank_00001.pt"} <= set(manifest.files)  # each node uploaded its own state
    assert sum(f.startswith("dcp/__") for f in manifest.files) == 2  # and its own DCP shard

    # preflight over the real nodes: every node probed (versions, code, S3 round trip), 2 worker slots
    from lexforge.preflight.run import run_preflight

    os.environ["LEXFORGE_RAY_DASHBOARD_URL"] = cluster.dashboard_url
    try:
        report = run_preflight(_spec("mn-pf", tiny_model_dir, moto_s3, "mn-pf"))
        too_big = run_preflight(_spec("mn-pf", tiny_model_dir, moto_s3, "mn-pf").model_copy(
            update={"resources": straight_spec_resources(3)}))
    finally:
        os.environ.pop("LEXFORGE_RAY_DASHBOARD_URL", None)
    assert report.ok, report.to_markdown()
    assert len(report.nodes) == 3 and all(n["storage"]["ok"] and n["storage"]["uri"].startswith("s3://")
                                          for n in report.nodes)
    capacity = next(c for c in too_big.checks if c.check == "capacity")
    assert not capacity.ok and "2 worker slot(s)" in capacity.detail and "need 3" in capacity.detail

    spec = _spec("mn-kill", tiny_model_dir, moto_s3, "mn-kill")
    os.environ["LEXFORGE_STEP_DELAY_S"] = "1.0"
    try:
        t, box = train_in_thread(spec)
        records = _records(spec)
        _wait(lambda: records.committed_steps() and records.committed_steps()[-1] >= EVERY, 300, "a commit")
        killed_step = records.read_progress().step
        cluster.kill_node("node-b")  # no notice: raylet + workers SIGKILLed, local disk gone
        cluster.add_node("node-c", num_cpus=1)  # the replacement joins
        t.join(timeout=600)
    finally:
        os.environ.pop("LEXFORGE_STEP_DELAY_S", None)
    assert "error" not in box, box.get("error")
    r = box["result"]
    assert r.status == "completed" and r.steps == STEPS
    assert r.resumed_from_step is not None and r.resumed_from_step >= killed_step - EVERY  # <= one interval lost
    assert_same_trajectory(straight.losses, r.losses, range(r.resumed_from_step + 1, STEPS + 1))
    assert len({w["node_id"] for w in r.details["workers"]}) == 2


def test_node_loss_with_notice_loses_no_committed_step_and_a_new_head_resumes_from_s3(
        cluster, tiny_model_dir, moto_s3, tmp_path):
    from lexforge.train import run_training

    spec = _spec("mn-notice", tiny_model_dir, moto_s3, "mn-notice")
    os.environ["LEXFORGE_STEP_DELAY_S"] = "1.0"
    try:
        t, box = train_in_thread(spec)
        records = _records(spec)
        _wait(lambda: records.read_progress() and records.read_progress().step >= 3, 300, "step 3")
        cluster.kill_node("node-b", notice_s=4.0)  # spot notice: SIGTERM to its workers, the node dies 4 s later
        t.join(timeout=300)
    finally:
        os.environ.pop("LEXFORGE_STEP_DELAY_S", None)
    assert "error" not in box, box.get("error")
    first = box["result"]
    assert first.status == "preempted" and records.latest().step == first.steps  # the notice checkpoint committed
    latest = records.latest()
    assert any(f.startswith("dcp/") for f in latest.files) and any(f.startswith("rank_00001") for f in latest.files)
    assert all(size is not None for size in latest.files.values())  # every rank's state on S3, sizes checked

    # the whole cluster is gone (head and driver too): the same command against a fresh cluster resumes from S3
    cluster.stop()
    import ray

    ray.shutdown()
    fresh = LocalRayCluster(tmp_path / "fresh", env=cluster.env)
    fresh.start_head(num_cpus=0)
    fresh.add_node("node-x", num_cpus=1)
    fresh.add_node("node-y", num_cpus=1)
    os.environ["RAY_ADDRESS"] = fresh.gcs_address
    try:
        second = run_training(spec)
    finally:
        ray.shutdown()
        fresh.stop()
    assert second.status == "completed" and second.resumed_from_step == first.steps
    assert sorted(second.losses) == list(range(first.steps + 1, STEPS + 1))
    assert second.output_uri.startswith("s3://") and (second.output_dir / "adapter_model.safetensors").is_file()
    assert _records(spec).has_output()


def test_fsdp_elastic_resume_on_fewer_nodes_keeps_the_global_batch(cluster, tiny_model_dir, moto_s3):
    """min_workers=1: after losing a node and with no replacement, training resumes on one worker instead of
    waiting; DCP re-shards, accumulation doubles (global batch kept), and every step consumes the same rows as
    on two workers: the loss trajectory after the resume follows the uninterrupted 2-worker run."""
    from lexforge.train import run_training

    straight_spec = _spec("el-straight", tiny_model_dir, moto_s3, "el-straight", strategy="fsdp")
    spec = _spec("el-run", tiny_model_dir, moto_s3, "el-run", strategy="fsdp")
    for s in (straight_spec, spec):  # no dropout: its per-rank RNG streams cannot follow a change of world size
        s.lora.dropout = 0.0
    straight = run_training(straight_spec)
    spec.resources.min_workers = 1
    os.environ["LEXFORGE_STEP_DELAY_S"] = "1.0"
    try:
        t, box = train_in_thread(spec)
        records = _records(spec)
        _wait(lambda: records.committed_steps() and records.committed_steps()[-1] >= EVERY, 300, "a commit")
        cluster.kill_node("node-b")  # and no replacement
        t.join(timeout=600)
    finally:
        os.environ.pop("LEXFORGE_STEP_DELAY_S", None)
    assert "error" not in box, box.get("error")
    r = box["result"]
    assert r.status == "completed" and r.details["world_size"] == 1 and r.resumed_from_step is not None
    rows_per_step = 2 * 2 * 2  # per_device_batch_size x gradient_accumulation_steps x num_workers of the spec
    for m in records.committed():
        assert m.data_position["rows_consumed"] == m.step * rows_per_step
    assert_same_trajectory(straight.losses, r.losses, range(r.resumed_from_step + 1, STEPS + 1))
