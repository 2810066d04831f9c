"""The GRPO objective on per-token log-probs (pure torch, no model): TRL's ``GRPOTrainer._compute_loss`` for
``loss_type`` grpo, dr_grpo and dapo, and TRL's group-normalised advantages.

Per completion token (``mask`` = trained completion tokens)::

    ratio = exp(logp - old_logp)                       # old = logp.detach() when num_iterations == 1
    l     = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * kl
    kl    = ratio * (exp(ref - logp) - (ref - logp) - 1)  # k3 estimator, only when beta > 0

The KL term is multiplied by the importance ratio (TRL's default ``use_bias_correction_kl=True``, DeepSeek-V3.2:
the unbiased reverse-KL gradient off-policy; value unchanged on-policy, the gradient is not).

How the token losses of one optimizer step become one number (``N`` completions, ``T`` completion tokens and
``L = max_completion_length``, all counted over every micro-batch and every rank of the step):

* ``grpo``:    sum_i (sum_t l_it / |i|) / N          (mean over each completion's tokens, then over completions)
* ``dr_grpo``: sum_it l_it / (N * L)
* ``dapo``:    sum_it l_it / T                         (token-level, over the whole step)

:func:`token_loss` returns the numerator of one micro-batch (a sum) and :func:`loss_weight` the denominator of
the step, so summing numerators over micro-batches and ranks and dividing once by the weight gives the same
gradient for any gradient accumulation / world size split as one big batch (TRL's grpo and dr_grpo average
per-micro-batch means, equal to this when micro-batches have the same number of completions, as ours do).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str) -> torch.Tensor:
    """TRL's advantages (``multi_objective_aggregation="sum_then_normalize"``) of the rewards of a whole step
    (every rank's, in rank order; each prompt's ``num_generations`` completions consecutive). NaN rewards
    (unscorable completions) are left out of the group statistics and get advantage 0.

    ``A = r - mean_group(r)``, divided by ``std + 1e-4`` where std is the (unbiased, NaN-ignoring) std of the
    group (``group``) or of the whole step (``batch``); ``none`` does not divide (Dr. GRPO)."""
    r = rewards.double()
    grouped = r.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    adv = r - mean
    if scale_rewards == "group":
        adv = adv / (nanstd(grouped, dim=1).repeat_interleave(num_generations) + 1e-4)
    elif scale_rewards == "batch":
        adv = adv / (nanstd(r) + 1e-4)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards={scale_rewards!r}: choose group, batch or none")
    return torch.nan_to_num(adv, nan=0.0).to(rewards.dtype)


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased std ignoring NaN (NaN below two values, as TRL's)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    n = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    out = (var * n / (n - 1)).sqrt()
    return out.squeeze(dim) if dim is not None else out.squeeze()


@dataclass
class LossTerms:
    loss: torch.Tensor  # the micro-batch's numerator (see the module docstring); divide the step's sum by loss_weight
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # detached sums over trained tokens; "tokens" counts them


def token_loss(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
               advantages: torch.Tensor, mask: torch.Tensor, *, epsilon_low: float, epsilon_high: float,
               beta: float, loss_type: str, entropies: torch.Tensor | None = None,
               bias_correction_kl: bool = True) -> LossTerms:
    """Clipped policy-gradient (+ KL) loss of a micro-batch: ``logps``, ``old_logps``, ``ref_logps`` and ``mask``
    are ``[B, T]`` (completion positions), ``advantages`` ``[B]``. ``old_logps=None``: on-policy (ratio 1 with the
    gradient of the ratio); ``ref_logps`` is needed when ``beta > 0``."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: choose one of {LOSS_TYPES}")
    m = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    sums: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
        if bias_correction_kl:
            kl = kl * ratio
        per_token = per_token + beta * kl
        sums["kl"] = (kl.detach() * m).sum()
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum()
    else:  # dr_grpo and dapo: a plain token sum; they differ in the step's weight
        loss = (per_token * m).sum()
    with torch.no_grad():
        low = (ratio < 1 - epsilon_low) & (adv < 0)
        high = (ratio > 1 + epsilon_high) & (adv > 0)
        sums.update({"clip_ratio/low_mean": (low * m).sum(), "clip_ratio/high_mean": (high * m).sum(),
                     "clip_ratio/region_mean": ((low | high) * m).sum(), "tokens": m.sum()})
        if entropies is not None:
            sums["entropy"] = (entropies * m).sum()
    return LossTerms(loss, sums)


def loss_weight(loss_type: str, completions: int, tokens: int, max_completion_length: int) -> float:
    """The step's denominator: completions (grpo), completions x max_completion_length (dr_grpo) or trained
    completion tokens (dapo), all counted over the whole step (every micro-batch, every rank); at least 1."""
    if loss_type == "grpo":
        return float(max(1, completions))
    if loss_type == "dr_grpo":
        return float(max(1, completions * max_completion_length))
    if loss_type == "dapo":
        return float(max(1, tokens))
    raise ValueError(f"loss_type={loss_type!r}: choose one of {LOSS_TYPES}")
