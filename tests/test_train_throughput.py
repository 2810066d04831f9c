"""Throughput options (packing, token budgets, chunked loss, compile, activation checkpointing) must not change
what is trained.

Pure-function checks of the plan, the collator and the loss head, then the proof: the real Trainer (in process, no
Ray) trains the same rows packed and unpacked with the same loss trajectory, and on Ray Train with 2 DDP workers
(packed + token budget vs padded fixed rows, then exact resume of the packed run).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from lexforge.config import SpecError, spec_from_dict

SAMPLES = Path(__file__).resolve().parents[1] / "lexforge" / "samples" / "data"
DATA = {"sft": "legal_qa.jsonl", "dpo": "legal_pref.jsonl"}
#: packed vs padded differ only by float summation order (fp32 on CPU): measured <= 1e-5 relative
LOSS_RTOL = 1e-4


def _plan(sizes, world, ga, bs=2, max_tokens=None, packed=False, seed=7):
    from lexforge.train.data import BatchPlan

    return BatchPlan(sizes, [max(1, sum(s) // 2) for s in sizes], bs, world, ga, seed, max_tokens=max_tokens,
                     packed=packed)


def test_rows_of_a_step_depend_only_on_seed_and_step_not_on_the_split():
    rng = random.Random(0)
    sizes = [(rng.randint(20, 230),) for _ in range(101)]
    # the same 16 rows per step: 1 worker x 8 accumulation, 2 x 4, 4 x 2, and token budgets padded/packed
    plans = [_plan(sizes, 1, 8), _plan(sizes, 2, 4), _plan(sizes, 4, 2), _plan(sizes, 2, 4, max_tokens=600),
             _plan(sizes, 4, 2, max_tokens=300, packed=True), _plan(sizes, 1, 8, max_tokens=256, packed=True)]
    for step in (0, 3, 6, 7, 12):  # 101 rows: step 6 straddles epochs 0 and 1
        want = Counter(plans[0].step_rows(step))
        for p in plans:
            split = p.step_split(step)
            assert len({len(rank) for rank in split}) == 1  # every rank runs the same number of micro-batches
            assert Counter(i for rank in split for mb in rank for i in mb) == want
            if p.max_tokens:
                assert all(p.cost(mb) <= p.max_tokens for rank in split for mb in rank)
            assert split == type(p)(p.sizes, p.weights, p.batch_size, p.world_size, p.grad_accum, p.seed,
                                    p.max_tokens, p.packed).step_split(step)  # pure: a fresh plan agrees
        assert plans[0].step_weight(step) == plans[4].step_weight(step)
    # within an epoch no row is seen twice; the next epoch is reshuffled
    epoch0 = [i for s in range(6) for i in plans[0].step_rows(s)]
    assert len(epoch0) == len(set(epoch0)) == 96
    assert plans[0].step_rows(7) != plans[0].step_rows(1)
    assert plans[0].total_steps(epochs=2, max_steps=None) == 12


def test_token_budget_packs_more_rows_per_micro_batch_and_pads_less():
    rng = random.Random(1)
    sizes = [(rng.randint(40, 234),) for _ in range(256)]
    fixed = _plan(sizes, 1, 8, bs=4)
    packed = _plan(sizes, 1, 8, bs=4, max_tokens=2048, packed=True)
    padded_real, padded_computed = fixed.token_counts(0)
    real, computed = packed.token_counts(0)
    assert real == padded_real == computed and padded_computed > real  # packing: no padding at all
    assert len(packed.micro_batches(0, 0)) < len(fixed.micro_batches(0, 0))


def test_data_position_is_json_and_counts_rows_of_the_stream():
    p = _plan([(10,)] * 50, 2, 3)
    pos = p.position(4)
    assert json.loads(json.dumps(pos)) == pos
    assert pos["rows_consumed"] == 4 * 12 and pos["rows_per_step"] == 12
    assert (pos["epoch"], pos["row_in_epoch"]) == divmod(48, 50) and pos["micro_batches_consumed"] == 12


def test_plan_rejects_an_example_over_the_token_budget():
    from lexforge.train.data import DataError

    with pytest.raises(DataError, match="max_tokens_per_batch=100"):
        _plan([(50,), (120,), (30,), (30,)], 1, 2, bs=1, max_tokens=100, packed=True)


def test_collate_packed_keeps_examples_apart():
    from lexforge.train.data import IGNORE, collate

    rows = [{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    b = collate(rows, pad_id=0, packed=True)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5]] and b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # position 2 (last of row 0) predicts nothing: never the next example's first token
    assert b["targets"].tolist() == [[2, 3, IGNORE, 5, IGNORE]]
    assert b["cu_seq_lens"].tolist() == [0, 3, 5] and b["max_len"] == 3 and b["segments"].tolist() == [[0, 0, 0, 1, 1]]
    assert b["tokens"] == b["computed"] == 5
    p = collate(rows, pad_id=0, packed=False)
    assert p["targets"].tolist() == [[2, 3, IGNORE], [5, IGNORE, IGNORE]] and p["computed"] == 6
    assert p["segments"].tolist() == [[0, 0, 0], [1, 1, -1]]
    empty = collate([], pad_id=0, packed=True)
    assert empty["rows"] == empty["tokens"] == 0 and (empty["targets"] == IGNORE).all()


@pytest.mark.parametrize("chunk", [3, 64])
def test_chunked_cross_entropy_equals_materialised_logits_in_value_and_gradient(chunk):
    from lexforge.train.loss import cross_entropy_sum, token_logps

    torch.manual_seed(0)
    h0, w0 = torch.randn(10, 16), torch.randn(50, 16)
    t = torch.randint(0, 50, (10,))
    grads = {}
    for impl in ("full", "chunked"):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = cross_entropy_sum(h, w, t, impl, chunk) + (token_logps(h, w, t, impl, chunk) * torch.arange(10)).sum()
        loss.backward()
        grads[impl] = (loss.detach(), h.grad, w.grad)
    for a, b in zip(grads["full"], grads["chunked"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_packed_sdpa_attention_matches_padded_batches(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from lexforge.train.attention import packed_forward, register_packed_sdpa
    from lexforge.train.data import collate
    from lexforge.train.recipes import model_inputs

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_packed_sdpa())
    rows = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in (7, 3, 11)]
    packed, padded = collate(rows, 0, packed=True), collate(rows, 0, packed=False)
    with torch.no_grad(), packed_forward():
        lp = model(**model_inputs(packed, "cpu")).logits[0]
    with torch.no_grad():
        lpad = model(**model_inputs(padded, "cpu")).logits
    seg, pos = packed["segments"][0], packed["position_ids"][0]
    torch.testing.assert_close(lp, lpad[seg, pos], rtol=1e-5, atol=1e-5)


def spec_dict(name, tiny, store, stage="sft", method="lora", steps=4, workers=1, **hp):
    return {"name": name, "model": {"base": str(tiny)}, "method": method, "stage": stage,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"train": str(SAMPLES / DATA[stage]), "max_seq_len": 128},
            "hyperparams": {"max_steps": steps, "per_device_batch_size": 2, "gradient_accumulation_steps": 2,
                            "learning_rate": 5e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0, **hp},
            "resources": {"num_workers": workers}, "checkpoint": {"every_n_steps": 2, "keep_last": 2},
            "storage": {"root": str(store)}}


def in_process_losses(tmp_path, tiny, name, steps=4, **kw) -> tuple[list[float], list[dict]]:
    """The real worker Trainer, in this process (world size 1, no Ray): losses and stats of ``steps`` steps."""
    from lexforge.train.data import resolve_train_data
    from lexforge.train.lineage import build_lineage
    from lexforge.train.loop import Trainer

    spec = spec_from_dict(spec_dict(name, tiny, tmp_path / name, steps=steps, **kw))
    data = resolve_train_data(spec)
    trainer = Trainer({"spec": spec.model_dump(mode="json"), "data": data.to_dict(), "base_model": str(tiny),
                       "lineage": build_lineage(spec, str(tiny), data.digest, data.format)})
    out = [trainer.train_step(s) for s in range(steps)]
    return [loss for loss, _ in out], [stats for _, stats in out]


def assert_same_losses(a: list[float], b: list[float]) -> None:
    assert all(math.isfinite(x) for x in a)
    for x, y in zip(a, b, strict=True):
        assert math.isclose(x, y, rel_tol=LOSS_RTOL), (a, b)


@pytest.mark.slow
@pytest.mark.parametrize("stage,method", [("sft", "lora"), ("sft", "full"), ("dpo", "lora"), ("dpo", "full")])
def test_packed_token_budget_training_has_the_unpacked_loss_trajectory(stage, method, tmp_path, tiny_model_dir,
                                                                       lexforge_home):
    budget = 300 if stage == "sft" else 600  # sft: 2-3 rows per micro-batch (not 2), dpo: 2-4 pairs
    kw = {"stage": stage, "method": method, **({"learning_rate": 1e-3} if method == "full" else {})}
    padded, padded_stats = in_process_losses(tmp_path, tiny_model_dir, "padded", **kw)
    packed, packed_stats = in_process_losses(tmp_path, tiny_model_dir, "packed", packing=True,
                                             max_tokens_per_batch=budget, **kw)
    assert_same_losses(padded, packed)
    assert padded[-1] != padded[0]  # it trained
    assert all(s["padding_share"] > 0 for s in padded_stats) and all(s["padding_share"] == 0 for s in packed_stats)
    assert [s["tokens"] for s in padded_stats] == [s["tokens"] for s in packed_stats]  # the same rows
    # the gradient itself, not only the (Adam-normalised) trajectory: same norm before clipping
    assert_same_losses([s["grad_norm"] for s in padded_stats], [s["grad_norm"] for s in packed_stats])
    if stage == "sft" and method == "lora":
        full_ce, _ = in_process_losses(tmp_path, tiny_model_dir, "full-ce", cross_entropy="full", packing=True, **kw)
        assert_same_losses(padded, full_ce)


@pytest.mark.slow
def test_activation_checkpointing_and_compile_are_applied_and_keep_the_loss(tmp_path, tiny_model_dir, lexforge_home):
    from transformers import AutoModelForCausalLM

    from lexforge.train.model import apply_activation_checkpointing, decoder_blocks

    m = AutoModelForCausalLM.from_pretrained(build_tiny(tmp_path))
    apply_activation_checkpointing(m, "selective", 2)
    assert [b.gradient_checkpointing for b in decoder_blocks(m)] == [True, False, True, False]
    apply_activation_checkpointing(m, "full", 2)
    assert all(b.gradient_checkpointing for b in decoder_blocks(m))
    eager, _ = in_process_losses(tmp_path, tiny_model_dir, "eager", steps=2, packing=True)
    tuned, _ = in_process_losses(tmp_path, tiny_model_dir, "tuned", steps=2, packing=True, torch_compile=True,
                                 activation_checkpointing="selective")
    assert_same_losses(eager, tuned)


def build_tiny(tmp_path):
    from lexforge.testing import build_tiny_llama

    return build_tiny_llama(tmp_path / "tiny4", num_layers=4)


def test_throughput_options_fail_fast():
    from lexforge.train.loss import resolve_cross_entropy
    from lexforge.train.model import SetupError, resolve_attn_implementation

    base = spec_dict("v", "/m", "/s")
    with pytest.raises(SpecError, match="GRPO"):
        spec_from_dict({**base, "stage": "grpo", "data": {"train": "x.jsonl"}}, overrides=["hyperparams.packing=true"])
    with pytest.raises(SpecError, match="DeepSpeed"):
        spec_from_dict({**base, "strategy": "deepspeed-zero2"}, overrides=["hyperparams.max_tokens_per_batch=4096"])
    with pytest.raises(SpecError, match="at least 256"):
        spec_from_dict({**base, "stage": "dpo"}, overrides=["hyperparams.max_tokens_per_batch=200"])
    with pytest.raises(SpecError, match="contradicts"):
        spec_from_dict(base, overrides=["hyperparams.gradient_checkpointing=true",
                                        "hyperparams.activation_checkpointing=none"])
    with pytest.raises(SetupError, match="liger needs CUDA"):
        resolve_cross_entropy(spec_from_dict(base, overrides=["hyperparams.cross_entropy=liger"]), "cpu")
    assert resolve_cross_entropy(spec_from_dict(base), "cpu") == "chunked"
    packed = spec_from_dict(base, overrides=["hyperparams.packing=true"])
    assert resolve_attn_implementation(packed, "cpu") == "lexforge_packed_sdpa"
    assert resolve_attn_implementation(spec_from_dict(base), "cpu") == "sdpa"


# ---- on Ray Train: 2 DDP workers ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_packed_token_budget_matches_padded_and_resumes_exactly(tmp_path, tiny_model_dir, ray_local,
                                                                      monkeypatch):
    from lexforge.train import run_training

    def spec(name, store, **hp):
        return spec_from_dict(spec_dict(name, tiny_model_dir, tmp_path / store, steps=4, workers=2, **hp))

    padded = run_training(spec("padded", "a"))
    packed_spec = spec("packed", "b", packing=True, max_tokens_per_batch=300)
    monkeypatch.setenv("LEXFORGE_PREEMPT_AT_STEP", "2")  # the preemption drill: SIGTERM's code path
    first = run_training(packed_spec)
    monkeypatch.delenv("LEXFORGE_PREEMPT_AT_STEP")
    assert first.status == "preempted" and first.steps == 2
    second = run_training(packed_spec)
    assert second.status == "completed" and second.resumed_from_step == 2
    losses = [{**first.losses, **second.losses}[s] for s in range(1, 5)]
    assert_same_losses([padded.losses[s] for s in range(1, 5)], losses)
    # 2 workers x 2 accumulation and 1 worker x 4 take the same rows per step: the same trajectory
    one_worker, _ = in_process_losses(tmp_path, tiny_model_dir, "one-worker", gradient_accumulation_steps=4)
    assert_same_losses(one_worker, losses)
