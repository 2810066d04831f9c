"""GRPO pieces without Ray. The objective (lexforge.train.grpo.objective) against TRL 1.16's own
GRPOTrainer._compute_loss, called on fixed log-probs, advantages and masks for every loss normalisation, with and
without the KL term, on-policy (num_iterations=1) and off-policy (old log-probs from an earlier policy: ratios != 1,
clipping active); the advantages against TRL's; HF rollouts (EOS, seeds, RNG isolation)."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from lexforge.train.grpo.objective import group_advantages, loss_weight, token_loss

B, T, L = 6, 7, 9  # completions, longest completion, max_completion_length
EPS_LOW, EPS_HIGH = 0.2, 0.28


def _fixed(seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logps + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4  # ratios well outside 1 +- eps
    ref = logps + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    lens = torch.tensor([7, 3, 5, 1, 6, 2])
    mask = (torch.arange(T)[None] < lens[:, None]).long()
    mask[4] = 0  # a completion masked out entirely (truncated / unscorable)
    adv = torch.tensor([1.3, -0.7, 0.4, -1.9, 0.8, 0.0], dtype=torch.float64)
    entropies = torch.rand(B, T, generator=g, dtype=torch.float64)
    return logps, old, ref, mask, adv, entropies


def _trl_loss(tmp_path, loss_type, beta, corrected, logps, old, ref, mask, adv, entropies):
    """TRL's loss and metrics: a GRPOTrainer carrying the attributes _compute_loss reads (set as its __init__
    would from a real GRPOConfig), its per-token log-prob forward replaced by the fixed tensors."""
    from accelerate import Accelerator
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path), loss_type=loss_type, beta=beta, epsilon=EPS_LOW,
                      epsilon_high=EPS_HIGH, max_completion_length=L, report_to=[], use_cpu=True, use_bias_correction_kl=corrected,
                      bf16=False)
    t = object.__new__(GRPOTrainer)
    t.args, t.loss_type, t.beta, t.max_completion_length = args, loss_type, beta, L
    t.epsilon_low, t.epsilon_high = args.epsilon, args.epsilon_high
    t.importance_sampling_level, t.off_policy_mask_threshold = args.importance_sampling_level, args.off_policy_mask_threshold
    t.top_entropy_quantile, t.aux_loss_enabled, t._entropy_bonus_enabled = args.top_entropy_quantile, False, False
    t.use_vllm, t.vllm_importance_sampling_correction = False, args.vllm_importance_sampling_correction
    t.current_gradient_accumulation_steps = 1
    t.accelerator = Accelerator(cpu=True)
    t.model = torch.nn.Linear(1, 1)  # only .training is read
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    leaf = logps.clone().requires_grad_(True)
    t._get_per_token_logps_and_entropies = lambda *a, **k: (leaf, entropies, None)
    inputs = {"prompt_ids": torch.ones(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "num_items_in_batch": mask.sum()}
    if old is not None:
        inputs["old_per_token_logps"] = old
    if beta:
        inputs["ref_per_token_logps"] = ref
    loss = t._compute_loss(None, inputs)
    loss.backward()
    return loss.detach(), leaf.grad, {k: v[-1] for k, v in t._metrics["train"].items()}


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta, corrected", [(0.0, True), (0.04, True), (0.04, False)])
@pytest.mark.parametrize("off_policy", [False, True])
def test_loss_matches_trl(tmp_path, loss_type, beta, corrected, off_policy):
    logps, old, ref, mask, adv, ent = _fixed()
    old = old if off_policy else None
    want, want_grad, want_metrics = _trl_loss(tmp_path, loss_type, beta, corrected, logps, old, ref, mask, adv, ent)

    leaf = logps.clone().requires_grad_(True)
    terms = token_loss(leaf, old, ref if beta else None, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH,
                       beta=beta, loss_type=loss_type, entropies=ent, bias_correction_kl=corrected)
    weight = loss_weight(loss_type, completions=B, tokens=int(mask.sum()), max_completion_length=L)
    got = terms.loss / weight
    got.backward()
    torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(leaf.grad, want_grad, rtol=1e-10, atol=1e-12)
    tokens = float(terms.sums["tokens"])
    for k in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "entropy"):
        assert float(terms.sums[k]) / tokens == pytest.approx(want_metrics[k], rel=1e-6, abs=1e-9), k
    if beta:
        assert float(terms.sums["kl"]) / tokens == pytest.approx(want_metrics["kl"], rel=1e-6)
    else:
        assert "kl" not in terms.sums and "kl" not in want_metrics
    if off_policy:  # the fixture really exercises clipping on both sides
        assert want_metrics["clip_ratio/low_mean"] > 0 and want_metrics["clip_ratio/high_mean"] > 0


def test_split_micro_batches_sum_to_the_whole_batch_gradient():
    """Numerators summed over any split, divided once by the step's weight: the one-big-batch loss (the loop's
    gradient accumulation x ranks)."""
    logps, old, ref, mask, adv, _ = _fixed(1)
    kw = dict(epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=0.04)
    for lt in ("grpo", "dr_grpo", "dapo"):
        w = loss_weight(lt, B, int(mask.sum()), L)
        whole = token_loss(logps, old, ref, adv, mask, loss_type=lt, **kw).loss / w
        parts = sum(token_loss(logps[s], old[s], ref[s], adv[s], mask[s], loss_type=lt, **kw).loss
                    for s in (slice(0, 1), slice(1, 4), slice(4, 6))) / w
        torch.testing.assert_close(parts, whole)


def _trl_advantages(rewards: torch.Tensor, G: int, scale: str) -> torch.Tensor:
    """The lines of TRL's GRPOTrainer._generate_and_score_completions (sum_then_normalize) that turn the summed
    rewards into advantages (inline there, not a function), with TRL's own nanstd."""
    from trl.trainer.utils import nanstd

    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    if scale in ("group", "none"):
        std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl(scale):
    nan = float("nan")
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.5, 0.5, nan, 2.0, 0.3, nan, nan, 4.0])
    got = group_advantages(r, 3, scale)
    torch.testing.assert_close(got, _trl_advantages(r, 3, scale))
    assert got[6] == 0 and got[9] == 0 and got[10] == 0  # unscorable: no signal
    assert torch.count_nonzero(got[3:6]) == 0  # equal rewards in a group: no signal
    assert torch.count_nonzero(got[:3]) == 2 and (got[0] > 0 > got[1])


# ---- rollouts (lexforge.train.grpo.rollout) and the spec ----------------------------------------------------


def test_completions_stop_at_the_first_stop_token():
    from lexforge.train.grpo.rollout import cut_at_stop

    assert cut_at_stop([5, 6, 2, 7, 2], {2}, 8) == ([5, 6, 2], False)
    assert cut_at_stop([5, 6, 7, 8], {2, 9}, 4) == ([5, 6, 7, 8], True)
    assert cut_at_stop([5, 6, 7, 9, 2], {2, 9}, 3) == ([5, 6, 7], True)  # EOS past max_tokens does not count


def test_rollout_seeds_are_a_pure_function_of_seed_batch_and_rank():
    from lexforge.train.grpo.recipe import rollout_seed

    assert rollout_seed(42, 3, 1) == rollout_seed(42, 3, 1)
    assert len({rollout_seed(s, b, r) for s in (0, 42) for b in range(4) for r in range(2)}) == 16


def test_hf_rollouts_are_reproducible_and_leave_the_training_rng_alone(tiny_model_dir):
    from lexforge.config import spec_from_dict
    from lexforge.train.grpo.rollout import build_rollout_engine, stop_token_ids
    from lexforge.train.model import build_policy, build_tokenizer
    from lexforge.train.strategy import build_strategy

    spec = spec_from_dict({"name": "r", "model": {"base": str(tiny_model_dir)}, "stage": "grpo",
                           "data": {"train": "x.jsonl"}, "grpo": {"num_generations": 3}})
    tok = build_tokenizer(spec, str(tiny_model_dir))
    cpu = torch.device("cpu")
    strategy = build_strategy(spec, cpu, "fp32", 0, 1)
    strategy.wrap(build_policy(spec, str(tiny_model_dir), "fp32", "sdpa", cpu))
    engine = build_rollout_engine(spec, tok, strategy, cpu, 0, 1)
    prompts = [[1, 5, 9, 13], [1, 7, 7]]
    kw = dict(n=3, max_tokens=12, temperature=0.8, top_p=0.95)
    before = torch.get_rng_state()
    a, b, c = engine.generate(prompts, seed=7, **kw), engine.generate(prompts, seed=7, **kw), \
        engine.generate(prompts, seed=8, **kw)
    assert torch.equal(torch.get_rng_state(), before)  # sampling ran under a forked RNG
    assert a == b and a.completion_ids != c.completion_ids
    assert a.prompt_ids == [prompts[0]] * 3 + [prompts[1]] * 3
    stop = set(stop_token_ids(tok, strategy.unwrapped()))
    for comp, trunc in zip(a.completion_ids, a.truncated):
        assert 1 <= len(comp) <= 12 and not (set(comp[:-1]) & stop)
        assert trunc == (comp[-1] not in stop) and (not trunc or len(comp) == 12)
    assert strategy.unwrapped().training  # generation switched to eval and back


def test_reused_rollouts_cannot_resume_on_fewer_workers():
    from lexforge.config import spec_from_dict

    base = {"name": "r", "stage": "grpo", "data": {"train": "x.jsonl"},
            "resources": {"num_workers": 2, "min_workers": 1}}
    spec_from_dict({**base, "grpo": {"num_iterations": 1}})
    with pytest.raises(ValueError, match="grpo.num_iterations"):
        spec_from_dict({**base, "grpo": {"num_iterations": 2}})
