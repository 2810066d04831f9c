"""One small recipe per stage: how a micro-batch of tokenized examples becomes a loss.

* SFT: next-token cross-entropy on assistant tokens only (labels of everything else are -100), summed; the loop
  divides by the trained tokens of the whole optimizer step (all micro-batches, all ranks), so packing, token
  budgets and accumulation do not change the objective.
* DPO: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) on summed completion log-probs, summed over pairs
  (the loop divides by the pairs of the step); the reference is the same model with the LoRA adapter disabled
  (LoRA/QLoRA) or a frozen copy of the base (full).
* GRPO: :mod:`lexforge.train.grpo` (rollouts, the clipped objective with its normalisations, the recipe).

SFT and DPO batches are padded or packed (``hyperparams.packing``, :func:`lexforge.train.data.collate`) and their
loss comes from the model's own forward through :class:`lexforge.train.loss.LossHead` (no full-vocabulary logits).
Recipes never branch on the parallelism strategy; they call ``strategy.model`` for forward passes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lexforge.train.attention import packed_forward
from lexforge.train.data import collate
from lexforge.train.loss import LossHead, resolve_cross_entropy


@dataclass
class MicroResult:
    loss: torch.Tensor
    tokens: int
    metrics: dict = field(default_factory=dict)
    computed: int | None = None  # tokens the model computed, padding included (None: same as tokens)


def model_inputs(b: dict, device) -> dict:
    """Forward kwargs of a collated micro-batch: padded -> attention_mask; packed -> position_ids plus the varlen
    boundaries flash-attn (and :data:`PACKED_SDPA`) read, computed on the host so no layer syncs for them."""
    kw = {"input_ids": b["input_ids"].to(device)}
    if "attention_mask" in b:
        kw["attention_mask"] = b["attention_mask"].to(device)
        return kw
    cu = b["cu_seq_lens"].to(device)
    kw.update(position_ids=b["position_ids"].to(device), cu_seq_lens_q=cu, cu_seq_lens_k=cu,
              max_length_q=b["max_len"], max_length_k=b["max_len"])
    return kw


class _HeadRecipe:
    """Shared by SFT and DPO: collation (padded or packed) and the loss head on the policy."""

    loss_reduction = "sum"  # the loop normalises by the step's total weight (BatchPlan.step_weight)

    def __init__(self, spec, tokenizer, strategy, device, reference=None):
        self.spec, self.tok, self.strategy, self.device = spec, tokenizer, strategy, device
        hp = spec.hyperparams
        self.packed = hp.packing
        impl = resolve_cross_entropy(spec, device.type)
        self.head = LossHead(strategy.unwrapped(), impl, hp.cross_entropy_chunk_tokens)

    def forward(self, model, head: LossHead, b: dict, reduction: str) -> torch.Tensor:
        packed_ctx = packed_forward() if self.packed else contextlib.nullcontext()
        with head.targets(b["targets"].to(self.device), reduction), packed_ctx:
            return model(**model_inputs(b, self.device)).logits


class SFTRecipe(_HeadRecipe):
    stage = "sft"

    def micro_step(self, examples: list[dict]) -> MicroResult:
        b = collate(examples, self.tok.pad_token_id, self.packed)
        loss = self.forward(self.strategy.model, self.head, b, "sum")
        return MicroResult(loss, b["tokens"], computed=b["computed"])


def segment_sums(values: torch.Tensor, segments: torch.Tensor, n: int) -> torch.Tensor:
    """Sum ``values`` per segment id (``-1`` = padding, dropped) into ``n`` sums."""
    keep = segments.reshape(-1) >= 0
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    return out.index_add(0, segments.reshape(-1)[keep].to(values.device), values.reshape(-1)[keep])


class DPORecipe(_HeadRecipe):
    stage = "dpo"

    def __init__(self, spec, tokenizer, strategy, device, reference=None):
        super().__init__(spec, tokenizer, strategy, device, reference)
        self.reference = reference  # None for LoRA: adapter-disabled policy
        self.ref_head = LossHead(reference, self.head.impl, self.head.chunk) if reference is not None else self.head
        self.beta = spec.hyperparams.dpo_beta

    def _reference_token_logps(self, b: dict) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return self.forward(self.reference, self.ref_head, b, "token_logps")
            with self.strategy.unwrapped().disable_adapter():
                return self.forward(self.strategy.model, self.head, b, "token_logps")

    def micro_step(self, examples: list[dict]) -> MicroResult:
        n = len(examples)
        b = collate([e["chosen"] for e in examples] + [e["rejected"] for e in examples], self.tok.pad_token_id,
                    self.packed)
        ref_tok = self._reference_token_logps(b)
        pol_tok = self.forward(self.strategy.model, self.head, b, "token_logps")
        ref, pol = segment_sums(ref_tok, b["segments"], 2 * n), segment_sums(pol_tok, b["segments"], 2 * n)
        margin = (pol[:n] - ref[:n]) - (pol[n:] - ref[n:])
        loss = -F.logsigmoid(self.beta * margin).sum() + pol_tok.sum() * 0.0  # the graph holds on a filler batch
        metrics = {"reward_accuracy": float((margin > 0).float().sum()),
                   "reward_margin": float(self.beta * margin.detach().sum())}
        return MicroResult(loss, b["tokens"], metrics, computed=b["computed"])


def _grpo(*args):
    from lexforge.train.grpo.recipe import GRPORecipe  # its own package (rollouts, objective), imported lazily

    return GRPORecipe(*args)


RECIPES = {"sft": SFTRecipe, "dpo": DPORecipe, "grpo": _grpo}


def build_recipe(spec, tokenizer, strategy, device, reference=None):
    return RECIPES[spec.stage](spec, tokenizer, strategy, device, reference)


