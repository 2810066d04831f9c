"""GRPO: sample ``num_generations`` completions per prompt, score them, and take ``num_iterations`` clipped
policy-gradient steps on each batch of rollouts (TRL's GRPOTrainer semantics; the loss is
:mod:`lexforge.train.grpo.objective`).

Per optimizer step ``s`` the loop calls :meth:`GRPORecipe.begin_step` (before the micro-batches), then
:meth:`GRPORecipe.micro_step` per micro-batch, then :meth:`GRPORecipe.end_step` (metrics). The loop feeds step
``s`` the prompts of batch ``s // num_iterations`` (each batch of prompts trains ``num_iterations`` steps, as
TRL's repeat sampler does), and:

* at ``s % num_iterations == 0`` :meth:`begin_step` generates the rollouts for every micro-batch of the step
  (``sync_weights`` first), scores them, turns rewards into group-normalised advantages over the whole step
  (every rank's completions), and computes once, without gradients, the old policy's log-probs (only when
  ``num_iterations > 1``; else the ratio is 1) and the reference's (``beta > 0``: the adapter-disabled policy for
  LoRA/QLoRA, a frozen copy of the base for full). That buffer is reused by the following steps of the cycle;
* the step's loss weight (:func:`objective.loss_weight`: completions, completions x max_completion_length, or
  completion tokens, summed over ranks) is returned to the loop, which divides the summed micro-batch losses by
  it: the gradient is the one-big-batch gradient for any accumulation / world size.

Completions whose rewards all failed (NaN total) get advantage 0 and no loss; with
``mask_truncated_completions`` the same holds for completions cut at ``max_completion_length``.

Log-probs are those of the sampling distribution (logits / temperature, as TRL), computed through the loss head
(no full-vocabulary logits). ``entropy`` is estimated from the sampled tokens (-mean log p of the completion
tokens: the entropy of the sampling policy in expectation, exact at top_p=1) instead of a second vocabulary pass.

Exact resume: rollout seeds derive from (hyperparams.seed, rollout batch, rank), generation runs under a forked
RNG, and the mid-cycle buffer (completions, advantages, old and reference log-probs) is part of the checkpoint
(:meth:`state_dict`), so a resumed run continues with exactly the rollouts the straight run used.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.distributed as dist

from lexforge.train.data import IGNORE, collate
from lexforge.train.grpo.objective import group_advantages, loss_weight, nanstd, token_loss
from lexforge.train.grpo.rollout import build_rollout_engine
from lexforge.train.loss import LossHead
from lexforge.train.recipes import MicroResult, model_inputs
from lexforge.train.rewards import build_rewards


#: RewardBatch.metrics() keys that count things (summed over ranks, not averaged)
REWARD_COUNTS = {"failures", "skipped", "requests", "cache_hits", "failed_items"}


def rollout_seed(seed: int, batch: int, rank: int) -> int:
    """The sampling seed of rollout batch ``batch`` on ``rank`` (a pure function: resumed runs regenerate)."""
    return int(np.random.SeedSequence([seed, batch, rank]).generate_state(1)[0])


class GRPORecipe:
    stage = "grpo"
    loss_reduction = "sum"  # begin_step returns the step's weight (objective.loss_weight)

    def __init__(self, spec, tokenizer, strategy, device, reference=None):
        self.spec, self.tok, self.strategy, self.device = spec, tokenizer, strategy, device
        self.g, self.hp = spec.grpo, spec.hyperparams
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.pg = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self.head = LossHead(strategy.unwrapped(), "chunked", self.hp.cross_entropy_chunk_tokens)
        self.reference = reference  # None for LoRA/QLoRA: the policy with its adapter disabled
        self.ref_head = LossHead(reference, "chunked", self.hp.cross_entropy_chunk_tokens) \
            if reference is not None else self.head
        self._tempered = False
        for h in {id(self.head.head): self.head.head, id(self.ref_head.head): self.ref_head.head}.values():
            h.register_forward_pre_hook(self._temper)
        self.rewards = build_rewards(self.g.rewards, served_name=spec.serve.served_name)
        self.engine = build_rollout_engine(spec, tokenizer, strategy, device, self.rank, self.world)
        self.buffer: list[dict] | None = None  # per micro-batch rollouts of the current cycle
        self.batch: int | None = None  # the rollout batch (step // num_iterations) the buffer holds
        self.weight = 1.0
        self.rollout_stats: dict[str, float] = {}
        self._m, self._sums = 0, {}

    # ---- log-probs ---------------------------------------------------------------------------------------------
    def _temper(self, module, args):
        return (args[0] / self.g.temperature,) if self._tempered and self.g.temperature != 1.0 else None

    def _token_logps(self, model, head: LossHead, b: dict) -> torch.Tensor:
        """log p(token) of the sampling distribution at every trained (completion) position, 0 elsewhere."""
        self._tempered = True
        try:
            with head.targets(b["targets"].to(self.device), "token_logps"):
                return model(**model_inputs(b, self.device)).logits
        finally:
            self._tempered = False

    def _reference_logps(self, b: dict) -> torch.Tensor:
        if self.reference is not None:
            return self._token_logps(self.reference, self.ref_head, b)
        with self.strategy.unwrapped().disable_adapter():
            return self._token_logps(self.strategy.model, self.head, b)

    # ---- collectives -------------------------------------------------------------------------------------------
    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's equally long 1-D tensor, concatenated in rank order."""
        if self.pg is None:
            return t
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t, group=self.pg)
        return torch.cat(out)

    def _sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.pg is not None:
            dist.all_reduce(t, group=self.pg)
        return t.tolist()

    # ---- the step ----------------------------------------------------------------------------------------------
    def begin_step(self, step: int, micro_batches: list[list[dict]]) -> float:
        batch = step // self.g.num_iterations
        if step % self.g.num_iterations == 0:
            self._rollout(step, batch, micro_batches)
        elif self.batch != batch:
            raise RuntimeError(f"GRPO step {step} continues rollout batch {batch} (grpo.num_iterations="
                               f"{self.g.num_iterations}), but this rank holds no buffer for it; a mid-cycle resume "
                               "needs the checkpoint of the same number of workers")
        self._m, self._sums = 0, {}
        return self.weight

    def _rollout(self, step: int, batch: int, micro_batches: list[list[dict]]) -> None:
        g, G = self.g, self.g.num_generations
        self.engine.sync_weights(step)
        examples = [e for mb in micro_batches for e in mb]
        ro = self.engine.generate([e["prompt_ids"] for e in examples], n=G, max_tokens=g.max_completion_length,
                                  temperature=g.temperature, top_p=g.top_p,
                                  seed=rollout_seed(self.hp.seed, batch, self.rank))
        texts = self.tok.batch_decode(ro.completion_ids, skip_special_tokens=True)
        scored = self.rewards(texts, [e for e in examples for _ in range(G)])
        total = torch.tensor(scored.total, dtype=torch.float64)
        everyone = self._gather(total)
        adv = group_advantages(everyone, G, g.scale_rewards).view(self.world, -1)[self.rank].float()
        trunc = torch.tensor(ro.truncated)
        keep = ~torch.isnan(total) & ~(trunc if g.mask_truncated_completions else torch.zeros_like(trunc))
        lens = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float64)
        n_all, tok_all, len_all, trunc_all, masked_all = self._sum(
            [len(lens), float((lens * keep).sum()), float(lens.sum()), float(trunc.sum()), float((~keep).sum())])
        self.weight = loss_weight(g.loss_type, int(n_all), int(tok_all), g.max_completion_length)
        self.buffer, start = [], 0
        for mb in micro_batches:
            k = len(mb) * G
            rows = [{"input_ids": p + c, "labels": [IGNORE] * len(p) + c}
                    for p, c in zip(ro.prompt_ids[start : start + k], ro.completion_ids[start : start + k])]
            entry = {"rows": rows, "adv": adv[start : start + k].to(self.device),
                     "keep": keep[start : start + k].to(self.device), "old": None, "ref": None}
            b = collate(rows, self.tok.pad_token_id, False)
            with torch.no_grad(), self.strategy.autocast():
                if g.num_iterations > 1:
                    entry["old"] = self._token_logps(self.strategy.model, self.head, b).float()
                if g.beta > 0:
                    entry["ref"] = self._reference_logps(b).float()
            self.buffer.append(entry)
            start += k
        self.batch = batch
        ok = everyone[~torch.isnan(everyone)]
        stats = {"reward_mean": float(ok.mean()) if ok.numel() else math.nan,
                 "reward_std": float(nanstd(everyone)) if ok.numel() > 1 else math.nan,
                 "completion_length_mean": len_all / n_all, "truncated_share": trunc_all / n_all,
                 "masked_completions": masked_all, "reward_failures": float(self.world * len(total) - ok.numel())}
        per = scored.metrics()
        # the same keys on every rank (a reward that scored nothing here has no mean: NaN), so one all-reduce fits
        fixed = {f"reward/{label}/{k}" for label in self.rewards.labels for k in ("mean", "failures", "skipped")}
        keys = sorted(set(per) | fixed | {"reward/total/mean", "reward/total/std", "reward/total/failed_items"})
        summed = self._sum([float(per.get(k, 0.0 if k.rsplit("/", 1)[-1] in REWARD_COUNTS else math.nan))
                            for k in keys])
        for k, v in zip(keys, summed):  # counts add up over ranks; means are averaged
            stats[k] = v if k.rsplit("/", 1)[-1] in REWARD_COUNTS else v / self.world
        self.rollout_stats = stats

    def micro_step(self, examples: list[dict]) -> MicroResult:
        entry = self.buffer[self._m]
        self._m += 1
        b = collate(entry["rows"], self.tok.pad_token_id, False)
        logps = self._token_logps(self.strategy.model, self.head, b)
        mask = (b["targets"].to(self.device) != IGNORE) & entry["keep"][:, None]
        g = self.g
        terms = token_loss(logps, entry["old"], entry["ref"], entry["adv"], mask, epsilon_low=g.epsilon,
                           epsilon_high=g.epsilon_high if g.epsilon_high is not None else g.epsilon, beta=g.beta,
                           loss_type=g.loss_type, entropies=-logps.detach())
        for k, v in terms.sums.items():
            self._sums[k] = self._sums.get(k, 0.0) + v.double()
        loss = terms.loss + logps.sum() * 0.0  # the graph reaches every parameter even when all is masked
        return MicroResult(loss, b["tokens"], computed=b["computed"])

    def end_step(self) -> dict[str, float]:
        """The step's metrics over every rank: token means of the clip ratios, KL and entropy, plus the rollout's."""
        keys = sorted(self._sums)
        summed = dict(zip(keys, self._sum([float(self._sums[k]) for k in keys])))
        tokens = max(1.0, summed.pop("tokens", 0.0))
        return {**{k: v / tokens for k, v in summed.items()}, **self.rollout_stats}

    # ---- checkpoint --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The rollout buffer of the current cycle (what a mid-cycle resume cannot regenerate: the old
        policy's log-probs), on the CPU."""
        cpu = [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in e.items()} for e in self.buffer or []]
        return {"batch": self.batch, "buffer": cpu, "weight": self.weight, "rollout_stats": dict(self.rollout_stats),
                "rank": self.rank, "world_size": self.world}

    def load_state_dict(self, st: dict) -> None:
        if st.get("rank") != self.rank or st.get("world_size") != self.world:
            return  # another worker's buffer: begin_step regenerates at a cycle boundary, refuses mid-cycle
        self.batch, self.weight, self.rollout_stats = st["batch"], st["weight"], dict(st["rollout_stats"])
        self.buffer = [{k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in e.items()}
                       for e in st["buffer"]]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.close()
