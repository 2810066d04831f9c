"""GRPO on the real trainer (Ray Train, 2 gloo workers on CPU, the tiny random Llama): rollouts reused for
grpo.num_iterations steps with clipping, a KL penalty to the reference, and exact resume from a checkpoint taken
in the middle of a rollout cycle."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from lexforge.config import spec_from_dict
from tests.test_train import SAMPLES, assert_same_trajectory, make_spec, run_with_drill

GRPO = {"num_iterations": 2, "beta": 0.04, "max_completion_length": 6, "num_generations": 2,
        "rewards": [{"name": "reference_overlap"}, {"name": "exact_match", "weight": 0.5}]}


def vocab_reference_data(tiny, out: Path) -> Path:
    """The sample GRPO prompts with every word of the tiny tokenizer's vocabulary as the reference: the random
    model's completions then overlap it by different amounts, so rewards (and advantages) differ in a group."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    words = sorted({w for i in range(len(tok)) for w in re.findall(r"[a-z0-9]+", tok.decode([i]).lower())})
    rows = [json.loads(line) for line in (SAMPLES / "legal_grpo.jsonl").read_text().splitlines() if line.strip()]
    out.write_text("".join(json.dumps({"prompt": r["prompt"], "reference": " ".join(words)}) + "\n" for r in rows))
    return out


def grpo_spec(name, tiny, store, data: Path, **kw):
    d = make_spec(name, tiny, store, stage="grpo", **kw).model_dump(mode="json")
    return spec_from_dict({**d, "data": {**d["data"], "train": str(data), "max_seq_len": 512}})  # reference: ~400


@pytest.mark.slow
def test_grpo_lora_kl_exact_resume_mid_rollout_cycle(tmp_path, tiny_model_dir, ray_local):
    from lexforge.storage import open_store
    from lexforge.storage.layout import RunLayout
    from lexforge.storage.records import RunRecords

    data = vocab_reference_data(tiny_model_dir, tmp_path / "grpo.jsonl")
    kw = dict(steps=4, every=2, grpo=GRPO, per_device_batch_size=1)
    straight = run_with_drill(grpo_spec("grpo-straight", tiny_model_dir, tmp_path / "a", data, **kw), None)
    assert straight.status == "completed" and sorted(straight.losses) == [1, 2, 3, 4]
    assert all(math.isfinite(v) for v in straight.losses.values())

    store = tmp_path / "b"
    spec = grpo_spec("grpo-resumed", tiny_model_dir, store, data, **kw)
    first = run_with_drill(spec, 3)  # steps 2 and 3 train on the rollouts generated at step 2: stop in between
    assert first.status == "preempted" and first.steps == 3
    assert_same_trajectory(straight.losses, first.losses, range(1, 4))
    records = RunRecords(open_store(str(store)), spec.name)
    latest = records.latest()
    assert latest.step == 3 and latest.data_position["rows_consumed"] == 2 * 2 * 2  # two prompt batches began
    rank1 = open_store(str(store)).local_path(RunLayout(spec.name).checkpoint_file(3, "rank_00001.pt"))
    state = torch.load(rank1, weights_only=False)["recipe"]
    assert state["batch"] == 1 and state["rank"] == 1 and len(state["buffer"]) == 2  # grad accumulation 2
    entry = state["buffer"][0]
    assert entry["old"] is not None and entry["ref"] is not None and len(entry["rows"]) == 2  # 1 prompt x 2
    assert entry["old"].shape == entry["ref"].shape and torch.isfinite(entry["old"]).all()
    assert any(bool(e["adv"].abs().sum() > 0) for e in state["buffer"])  # the rewards differ within a group

    second = run_with_drill(spec, None)
    assert second.status == "completed" and second.resumed_from_step == 3 and sorted(second.losses) == [4]
    assert_same_trajectory(straight.losses, second.losses, [4])
    out = second.output_dir
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "lineage.json").read_text())["stage"] == "grpo"


@pytest.mark.slow
def test_grpo_full_fsdp_with_frozen_reference_matches_ddp(tmp_path, tiny_model_dir, ray_local):
    """Full fine-tuning with beta > 0 builds a frozen reference; FSDP2 generates with synced_gpus. Both strategies
    compute the same math on CPU (fp32), rollouts included (same seeds), so the trajectories agree."""
    data = vocab_reference_data(tiny_model_dir, tmp_path / "grpo.jsonl")
    kw = dict(method="full", steps=3, every=3, per_device_batch_size=1, gradient_accumulation_steps=1,
              grpo={"beta": 0.1, "loss_type": "grpo", "scale_rewards": "batch",
                    "rewards": [{"name": "reference_overlap"}]})
    ddp = run_with_drill(grpo_spec("grpo-full-ddp", tiny_model_dir, tmp_path / "a", data, strategy="ddp", **kw), None)
    fsdp = run_with_drill(grpo_spec("grpo-full-fsdp", tiny_model_dir, tmp_path / "b", data, strategy="fsdp", **kw),
                          None)
    assert ddp.status == fsdp.status == "completed" and sorted(fsdp.losses) == [1, 2, 3]
    assert ddp.losses[3] != ddp.losses[1]  # the policy moved away from the reference (KL enters the loss)
    assert_same_trajectory(ddp.losses, fsdp.losses, [1, 2, 3])
    assert not fsdp.is_adapter and (fsdp.output_dir / "config.json").is_file()
