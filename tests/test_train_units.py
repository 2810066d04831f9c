"""Fast checks of the training building blocks (no Ray): batching, masking, rewards, checkpoint discovery,
GPU configuration and fail-fast setup."""

from __future__ import annotations

import json

import pytest

from lexforge.config import spec_from_dict


def spec(**kw):
    base = {"name": "u", "data": {"train": "/nonexistent.jsonl"}}
    for k, v in kw.items():
        base[k] = v
    return spec_from_dict(base)


def test_batch_plan_is_a_pure_function_of_step_and_covers_each_epoch():
    from lexforge.train.data import BatchPlan

    plan = BatchPlan([(5,)] * 10, [1] * 10, batch_size=2, world_size=2, grad_accum=1, seed=3)
    assert plan.rows_per_step == 4
    epoch0 = [i for s in (0, 1) for rank in (0, 1) for mb in plan.micro_batches(s, rank) for i in mb]
    assert len(set(epoch0)) == 8  # disjoint across ranks, micro-batches and steps
    assert plan.micro_batches(5, 1) == BatchPlan([(5,)] * 10, [1] * 10, 2, 2, 1, 3).micro_batches(5, 1)
    assert plan.step_rows(0) != plan.step_rows(3)  # epoch 1 is reshuffled
    assert plan.position(3) == {"step": 3, "rows_consumed": 12, "epoch": 1, "row_in_epoch": 2, "rows_per_step": 4,
                                "seed": 3, "examples_consumed": 12, "micro_batches_consumed": 3}
    assert plan.total_steps(epochs=2, max_steps=None) == 5


def test_batch_plan_too_little_data_is_a_clear_error():
    from lexforge.train.data import BatchPlan, DataError

    with pytest.raises(DataError, match="per_device_batch_size"):
        BatchPlan([(5,)] * 3, [1] * 3, batch_size=2, world_size=2, grad_accum=1, seed=0)


def test_sft_labels_cover_only_assistant_content(tiny_model_dir):
    from transformers import AutoTokenizer

    from lexforge.train.data import IGNORE, tokenize_chat

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Limitation for tort?"},
                        {"role": "assistant", "content": "Six years."}]}
    ex = tokenize_chat(row, tok, 512)
    trained = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE])
    assert "Six years." in trained and "tort" not in trained and "Be brief" not in trained and "user" not in trained
    assert tokenize_chat({"messages": row["messages"][:2]}, tok, 512) is None  # nothing to learn from


def test_read_clean_rows_names_file_and_line(tmp_path):
    from lexforge.train.data import DataError, read_clean_rows

    p = tmp_path / "d.jsonl"
    p.write_text('{"messages": []}\n{oops\n')
    with pytest.raises(DataError, match=r"d.jsonl line 2"):
        read_clean_rows(p)


def test_rewards():
    from lexforge.train.rewards import exact_match, get_reward, reference_overlap, register_reward, rubric_reward

    assert exact_match("Yes.", "yes") == 1.0 and exact_match("Yes, because s.2", "Yes") == 1.0
    assert exact_match("No", "Yes") == 0.0
    assert reference_overlap("six years from accrual", "Six years from the date of accrual") > 0.7
    assert reference_overlap("banana", "six years") == 0.0
    r = {"must_include": ["six years"], "must_not_include": ["two years"], "cite": True}
    assert rubric_reward("Six years (s.2).", "", r) == 1.0
    assert rubric_reward("Six years.", "", r) == 0.5
    assert rubric_reward("Two years or six years", "", r) == 0.0
    register_reward("const", lambda c, ref, rub: 0.25)
    assert get_reward("const")("", "", None) == 0.25
    with pytest.raises(KeyError, match="unknown GRPO reward"):
        get_reward("nope")


def _write_ckpt(records, step, files, manifest=True, sizes=None):
    """A checkpoint as the CheckpointManager writes it: shard files, then the manifest (the real record writer)."""
    import time

    from lexforge.storage.records import Lineage, Manifest

    layout = records.layout
    for f in files:
        records.store.put_bytes(layout.checkpoint_file(step, f), b"x" * 10)
    if manifest is True:
        lineage = Lineage(run_name=records.run, spec_hash="s" * 16, dataset_digest="d" * 64, base_model="b",
                          method="lora", stage="sft", strategy="ddp")
        records.write_manifest(Manifest(step=step, run=records.run, strategy="ddp", world_size=1,
                                        files={f: (sizes or {}).get(f, 10) for f in files}, lineage=lineage,
                                        committed_at=time.time()))
    elif manifest:
        records.store.put_bytes(layout.manifest(step), manifest)


def test_latest_checkpoint_skips_incomplete_and_corrupt_ones(tmp_path):
    from lexforge.storage import open_store
    from lexforge.storage.records import RunRecords

    records = RunRecords(open_store(str(tmp_path)), "r")
    assert records.latest() is None
    _write_ckpt(records, 2, ["dcp/__0_0.distcp", "rank_00000.pt"])
    _write_ckpt(records, 4, ["dcp/__0_0.distcp"], manifest=False)  # crashed before commit
    _write_ckpt(records, 6, ["dcp/__0_0.distcp"], manifest=b"{not json")  # corrupt manifest
    _write_ckpt(records, 8, ["dcp/__0_0.distcp"], sizes={"dcp/__0_0.distcp": 999})  # truncated shard
    _write_ckpt(records, 10, ["a"])
    records.store.delete(records.layout.checkpoint_file(10, "a"))  # listed shard missing
    assert records.latest().step == 2
    assert records.committed_steps() == [2]
    assert records.checkpoint_steps() == [2, 4, 6, 8, 10]


def test_scaling_and_torch_config_for_gpu_clusters():
    from lexforge.train.run import build_run_config, build_scaling_config, build_torch_config, worker_env

    s = spec(resources={"num_workers": 8, "gpus_per_worker": 1, "cpus_per_worker": 8, "accelerator_type": "H100"},
             strategy="fsdp", hyperparams={"precision": "bf16"})
    sc = build_scaling_config(s)
    assert sc.num_workers == 8 and sc.use_gpu and sc.accelerator_type == "H100"
    assert sc.resources_per_worker == {"CPU": 8, "GPU": 1}
    assert build_torch_config(s).backend == "nccl"
    assert worker_env(s)["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert "DS_ACCELERATOR" not in worker_env(s)
    cpu = spec(resources={"num_workers": 2})
    assert build_torch_config(cpu).backend == "gloo" and not build_scaling_config(cpu).use_gpu
    rc = build_run_config(cpu)
    assert rc.name == "u" and rc.failure_config.max_failures >= 1
    assert not any("SECRET" in k or "PASSWORD" in k for k in rc.worker_runtime_env["env_vars"])


def test_deepspeed_config_per_stage_and_precision():
    import torch

    from lexforge.train.strategy import DeepSpeedStrategy

    s = spec(strategy="deepspeed-zero3", resources={"num_workers": 4, "gpus_per_worker": 1},
             hyperparams={"per_device_batch_size": 2, "gradient_accumulation_steps": 4, "max_grad_norm": 0.5})
    cfg = DeepSpeedStrategy(s, torch.device("cuda", 0), "bf16", 0, 4, stage=3).ds_config()
    assert cfg["train_batch_size"] == 32 and cfg["zero_optimization"]["stage"] == 3
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"] and cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    cpu = DeepSpeedStrategy(s, torch.device("cpu"), "fp32", 0, 2, stage=2).ds_config()
    assert not cpu["bf16"]["enabled"] and cpu["zero_optimization"]["reduce_bucket_size"] < 1e7


def test_setup_fails_fast_on_cpu_for_gpu_only_options():
    from lexforge.train.model import SetupError, check_method_supported, resolve_attn_implementation, resolve_precision
    from lexforge.train.run import validate_for_launch

    q = spec(method="qlora")
    with pytest.raises(SetupError, match="qlora needs CUDA"):
        validate_for_launch(q)
    with pytest.raises(SetupError, match="qlora needs CUDA"):
        check_method_supported(q, "cpu")
    with pytest.raises(SetupError, match="precision=bf16 needs a GPU"):
        resolve_precision(spec(hyperparams={"precision": "bf16"}), "cpu")
    assert resolve_precision(spec(), "cpu") == "fp32"
    with pytest.raises(SetupError, match="flash_attention_2 needs CUDA"):
        resolve_attn_implementation(spec(model={"attn_implementation": "flash_attention_2"}), "cpu")
    assert resolve_attn_implementation(spec(), "cpu") == "sdpa"


def test_train_cli_is_registered():
    from typer.testing import CliRunner

    from lexforge.cli import _register_plugins, app

    _register_plugins()
    out = CliRunner().invoke(app, ["train", "--help"])
    assert out.exit_code == 0 and "SPEC" in out.output.upper()
