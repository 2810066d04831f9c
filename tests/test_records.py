"""The store layout and the run records (pure / local store, no servers), and the resume rule of lineage."""

from __future__ import annotations

import time

import pytest

from lexforge.storage import open_store
from lexforge.storage.layout import ApiLayout, DatasetLayout, RunLayout, eval_cache
from lexforge.storage.records import Lineage, Manifest, Progress, Registration, RunRecords, RunResult


def test_run_layout_builds_and_parses_its_own_keys():
    lay = RunLayout("legal-demo")
    key = lay.checkpoint_file(42, "dcp/__0_0.distcp")
    assert key == "runs/legal-demo/checkpoints/step_00000042/dcp/__0_0.distcp"
    assert lay.step_of(key) == 42 and lay.checkpoint_rel(key) == "dcp/__0_0.distcp"
    assert lay.step_of(lay.manifest(7)) == 7 and lay.checkpoint_rel(lay.manifest(7)) == "manifest.json"
    assert lay.step_of("runs/legal-demo/checkpoints/step_x/a") is None
    assert lay.step_of("runs/other/checkpoints/step_00000001/a") is None  # another run's key
    assert lay.step_of(lay.progress) is None
    assert lay.eval_label_of(lay.eval_report("base")) == "base"
    with pytest.raises(ValueError, match="run name"):
        RunLayout("../escape")
    with pytest.raises(ValueError, match="eval label"):
        lay.eval_report("a/b")
    with pytest.raises(ValueError, match="sha256"):
        DatasetLayout("abc")
    assert DatasetLayout("a" * 64).data.startswith(DatasetLayout.ROOT + "/")
    assert ApiLayout.uploaded_file("file-1").endswith("file-1.jsonl") and eval_cache("k1").endswith("k1.json")


def _lineage(**kw) -> Lineage:
    base = dict(run_name="r", spec_hash="a" * 16, dataset_digest="d" * 64, base_model="m", method="lora",
                stage="sft", strategy="ddp")
    return Lineage(**{**base, **kw})


def test_records_round_trip_and_corrupt_records_read_as_absent(tmp_path):
    rec = RunRecords(open_store(str(tmp_path)), "r")
    assert rec.read_progress() is None and rec.read_result() is None and rec.latest() is None
    rec.write_progress(Progress(step=3, total_steps=10, loss=1.5, trained_tokens=120))
    assert rec.read_progress().trained_tokens == 120
    rec.write_result(RunResult(status="completed", steps=10, trained_tokens=400, lineage=_lineage()))
    assert rec.read_result().lineage.dataset_digest == "d" * 64
    rec.store.put_bytes(rec.layout.progress, b"{not json")
    assert rec.read_progress() is None
    rec.request_stop("test")
    assert rec.stop_requested()
    rec.clear_stop()
    assert not rec.stop_requested()
    rec.write_registration(Registration(name="lexforge-legal", version="3"))
    assert rec.read_registration().uri == "models:/lexforge-legal/3"


def test_manifest_commit_marker_and_file_sizes(tmp_path):
    rec = RunRecords(open_store(str(tmp_path)), "r")
    rec.store.put_bytes(rec.layout.checkpoint_file(5, "dcp/shard"), b"12345")
    rec.write_manifest(Manifest(step=5, run="r", strategy="ddp", world_size=2, files=rec.checkpoint_file_sizes(5),
                                lineage=_lineage(), trained_tokens=99, committed_at=time.time()))
    latest = rec.latest()
    assert latest.files == {"dcp/shard": 5} and latest.trained_tokens == 99
    # the manifest is read back under its wire names (an older manifest's "async" key)
    raw = rec.store.get_bytes(rec.layout.manifest(5))
    assert b'"async"' in raw
    rec.store.put_bytes(rec.layout.checkpoint_file(5, "dcp/shard"), b"123")  # truncated after commit
    assert rec.latest() is None
    rec.delete_checkpoint(5)
    assert rec.checkpoint_steps() == []


def test_output_is_complete_only_with_its_lineage_last(tmp_path):
    rec = RunRecords(open_store(str(tmp_path / "store")), "r")
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"w")
    assert not rec.has_output()
    (out / "lineage.json").write_bytes(_lineage().to_json())
    rec.publish_output(out)
    assert rec.has_output() and set(rec.output_files()) == {"adapter_model.safetensors", "lineage.json"}
    assert rec.read_output_lineage().run_name == "r"
    assert rec.local_output(tmp_path / "cache") == rec.store.local_path(rec.layout.output)


# ---- resume: which spec changes refuse, continue, or pass -------------------------------------------------------


def _spec(**over):
    from lexforge.config import spec_from_dict

    sets = [f"{k}={v}" for k, v in over.items()]
    return spec_from_dict({"name": "run-a", "data": {"train": "x.jsonl"}}, "test", sets)


def test_training_fields_are_the_documented_list():
    from lexforge.train.lineage import training_fields

    assert set(training_fields(_spec())) == {
        "hyperparams.learning_rate", "hyperparams.lr_scheduler", "hyperparams.warmup_ratio",
        "hyperparams.weight_decay", "hyperparams.max_grad_norm", "hyperparams.epochs", "hyperparams.max_steps",
        "global_batch", "hyperparams.seed", "hyperparams.precision", "data.max_seq_len", "data.seed",
        "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules"}
    assert "hyperparams.dpo_beta" in training_fields(_spec(stage="dpo"))
    grpo = {k for k in training_fields(_spec(stage="grpo")) if k.startswith("grpo.")}
    assert grpo == {f"grpo.{k}" for k in (
        "num_generations", "max_completion_length", "temperature", "top_p", "num_iterations", "epsilon",
        "epsilon_high", "beta", "loss_type", "scale_rewards", "mask_truncated_completions", "rewards")}
    assert not any(k.startswith("grpo.") for k in training_fields(_spec(stage="dpo")))  # grpo.* only for stage=grpo
    assert not any(k.startswith("lora.") for k in training_fields(_spec(method="full")))


def _resume(old_spec, new_spec, step=24, total=None, continuation=False, new_digest="d" * 64):
    from lexforge.train.lineage import build_lineage, resumed_lineage

    old = build_lineage(old_spec, "base", "d" * 64, "chat")
    new = build_lineage(new_spec, "base", new_digest, "chat")
    return resumed_lineage(old, new, step, total_steps=total or 100, continuation=continuation)


@pytest.mark.parametrize("change, field", [
    ({"hyperparams.learning_rate": 1e-3}, "hyperparams.learning_rate"),
    ({"lora.r": 8}, "lora.r"),
    ({"lora.target_modules": "[q_proj]"}, "lora.target_modules"),
    ({"hyperparams.seed": 7}, "hyperparams.seed"),
    ({"hyperparams.per_device_batch_size": 8}, "global_batch"),
    ({"data.max_seq_len": 512}, "data.max_seq_len"),
])
def test_a_changed_training_setting_is_refused_naming_the_field(change, field):
    from lexforge.train.lineage import SpecChanged

    with pytest.raises(SpecChanged) as e:
        _resume(_spec(), _spec(**change))
    msg = str(e.value)
    assert field in msg and "new run name" in msg and "--continue" in msg and "step 24" in msg


def test_changed_data_is_refused_even_as_a_continuation():
    from lexforge.train.lineage import SpecChanged

    with pytest.raises(SpecChanged, match="dataset_digest"):
        _resume(_spec(), _spec(), new_digest="e" * 64)
    with pytest.raises(SpecChanged, match="dataset_digest"):
        _resume(_spec(), _spec(**{"hyperparams.max_steps": 50}), new_digest="e" * 64, continuation=True)


def test_elastic_resume_keeping_the_global_batch_is_not_a_change():
    old = _spec(**{"resources.num_workers": 4, "hyperparams.gradient_accumulation_steps": 1})
    new = _spec(**{"resources.num_workers": 2, "hyperparams.gradient_accumulation_steps": 2})
    lin = _resume(old, new)
    assert [s.spec_hash for s in lin.segments] == [old.spec_hash(), new.spec_hash()]


def test_explicit_continuation_records_the_chain_and_must_train_something():
    from lexforge.train.lineage import SpecChanged, close_segments

    a, b = _spec(**{"hyperparams.max_steps": 24}), _spec(**{"hyperparams.max_steps": 40,
                                                          "hyperparams.learning_rate": 1e-4})
    lin = close_segments(_resume(a, b, step=24, total=40, continuation=True), 40)
    assert [(s.spec_hash, s.first_step, s.last_step) for s in lin.segments] == [
        (a.spec_hash(), 1, 24), (b.spec_hash(), 25, 40)]
    assert lin.spec_hash == b.spec_hash()
    with pytest.raises(SpecChanged, match="would train nothing"):
        _resume(a, _spec(**{"hyperparams.max_steps": 24, "hyperparams.learning_rate": 1e-4}), step=24, total=24,
                continuation=True)
    with pytest.raises(SpecChanged, match="may change only"):
        _resume(a, _spec(**{"hyperparams.max_steps": 40, "lora.r": 4}), step=24, total=40, continuation=True)


def test_same_training_settings_resume_and_a_final_resume_adds_no_empty_segment():
    from lexforge.train.lineage import close_segments

    a = _spec()
    same = _resume(a, _spec())
    assert [s.spec_hash for s in same.segments] == [a.spec_hash()]
    evalchange = _spec(**{"eval.max_new_tokens": 9})  # not a training setting: resumes, new hash recorded
    lin = close_segments(_resume(a, evalchange, step=24), 24)
    assert [(s.spec_hash, s.last_step) for s in lin.segments] == [(a.spec_hash(), 24)]
    assert lin.spec_hash == evalchange.spec_hash()


def test_spec_hash_is_the_same_on_both_sides_of_a_submission():
    from lexforge.jobs import job_spec

    s = _spec(**{"resources.ray_address": "http://head:8265"})
    assert job_spec(s).resources.ray_address is None
    assert job_spec(s).spec_hash() == s.spec_hash() == _spec().spec_hash()


def test_vllm_engines_leave_the_host_logging_handlers_alone():
    """The flow-run deadlock: vLLM's default logging setup (dictConfig) shuts down every existing handler."""
    import logging

    from vllm.logger import configure_logging_if_needed

    from lexforge.vllm_settings import host_logging_config

    closed = []

    class Sentinel(logging.Handler):
        def emit(self, record):
            pass

        def close(self):
            closed.append(True)
            super().close()

    h = Sentinel()
    logging.getLogger().addHandler(h)
    try:
        configure_logging_if_needed(host_logging_config())
        assert h in logging.getLogger().handlers and not closed
    finally:
        logging.getLogger().removeHandler(h)


def test_elastic_settings_fail_fast_in_the_spec():
    from lexforge.config import SpecError

    with pytest.raises(SpecError, match="DeepSpeed ZeRO checkpoints cannot be loaded on another number of workers"):
        _spec(**{"strategy": "deepspeed-zero3", "resources.num_workers": 4, "resources.min_workers": 2})
    with pytest.raises(SpecError, match=r"with \[3\] worker\(s\) the global batch"):
        _spec(**{"resources.num_workers": 4, "resources.min_workers": 2})
    ok = _spec(**{"resources.num_workers": 4, "resources.min_workers": 2, "hyperparams.gradient_accumulation_steps": 3})
    assert [ok.grad_accum_for(w) for w in (4, 3, 2)] == [3, 4, 6]
