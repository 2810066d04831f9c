"""One small recipe per stage: how a micro-batch of tokenized examples becomes a loss.

* SFT: next-token cross-entropy on assistant tokens only (labels of everything else are -100).
* DPO: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) on summed completion log-probs; the reference is
  the same model with the LoRA adapter disabled (LoRA/QLoRA) or a frozen copy of the base (full).
* GRPO: sample ``grpo_num_generations`` completions per prompt, score them with the pluggable reward,
  normalise rewards within each group to advantages, and maximise advantage-weighted mean log-prob
  (on-policy, one update per batch, so the PPO ratio is 1 and needs no clipping).

Recipes never branch on the parallelism strategy; they call ``strategy.model`` for forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lexforge.train.data import IGNORE, pad_batch


@dataclass
class MicroResult:
    loss: torch.Tensor
    tokens: int
    metrics: dict = field(default_factory=dict)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """Sum of log-probs of label tokens per sequence."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    logp = torch.gather(F.log_softmax(logits, -1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


class SFTRecipe:
    stage = "sft"

    def __init__(self, spec, tokenizer, strategy, device, reference=None):
        self.spec, self.tok, self.strategy, self.device = spec, tokenizer, strategy, device

    def micro_step(self, examples: list[dict]) -> MicroResult:
        b = _to(pad_batch(examples, self.tok.pad_token_id), self.device)
        out = self.strategy.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        return MicroResult(out.loss, int(b["attention_mask"].sum()))


class DPORecipe:
    stage = "dpo"

    def __init__(self, spec, tokenizer, strategy, device, reference=None):
        self.spec, self.tok, self.strategy, self.device = spec, tokenizer, strategy, device
        self.reference = reference  # None for LoRA: adapter-disabled policy
        self.beta = spec.hyperparams.dpo_beta

    def _reference_logps(self, b: dict) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return sequence_logps(self.reference, b)
            with self.strategy.unwrapped().disable_adapter():
                return sequence_logps(self.strategy.model, b)

    def micro_step(self, examples: list[dict]) -> MicroResult:
        n = len(examples)
        flat = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
        b = _to(pad_batch(flat, self.tok.pad_token_id), self.device)
        ref = self._reference_logps(b)
        pol = sequence_logps(self.strategy.model, b)
        margin = (pol[:n] - ref[:n]) - (pol[n:] - ref[n:])
        loss = -F.logsigmoid(self.beta * margin).mean()
        acc = float((margin > 0).float().mean())
        return MicroResult(loss, int(b["attention_mask"].sum()), {"reward_accuracy": acc,
                                                                   "reward_margin": float(self.beta * margin.mean())})


class GRPORecipe:
    stage = "grpo"

    def __init__(self, spec, tokenizer, strategy, device, reference=None):
        from lexforge.train.rewards import get_reward

        self.spec, self.tok, self.strategy, self.device = spec, tokenizer, strategy, device
        hp = spec.hyperparams
        self.G, self.max_new = hp.grpo_num_generations, hp.grpo_max_completion_len
        self.reward = get_reward(hp.grpo_reward)

    def _generate(self, prompts: list[list[int]]) -> torch.Tensor:
        pad = self.tok.pad_token_id
        n = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), n), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding for generation
            ids[i, n - len(p):] = torch.tensor(p)
            mask[i, n - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        gen_model = self.strategy.model if hasattr(self.strategy.model, "generate") else self.strategy.unwrapped()
        was_training = gen_model.training
        gen_model.eval()
        try:
            with torch.no_grad():
                # min_new_tokens == max_new_tokens: every rank runs the same number of forwards, which sharded
                # strategies (FSDP, ZeRO-3) need; text after EOS is masked out below.
                out = gen_model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                         max_new_tokens=self.max_new, min_new_tokens=self.max_new, pad_token_id=pad,
                                         use_cache=True)
        finally:
            gen_model.train(was_training)
        return out[:, n:].cpu(), n

    def micro_step(self, examples: list[dict]) -> MicroResult:
        prompts = [e["prompt_ids"] for e in examples for _ in range(self.G)]
        completions, _ = self._generate(prompts)
        eos = self.tok.eos_token_id
        rows, rewards = [], []
        for i, comp in enumerate(completions.tolist()):
            if eos in comp:
                comp = comp[: comp.index(eos) + 1]
            ex = examples[i // self.G]
            text = self.tok.decode(comp, skip_special_tokens=True)
            rewards.append(float(self.reward(text, ex["reference"], ex.get("rubric"))))
            rows.append({"input_ids": ex["prompt_ids"] + comp, "labels": [IGNORE] * len(ex["prompt_ids"]) + comp})
        r = torch.tensor(rewards).view(len(examples), self.G)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1).to(self.device)
        b = _to(pad_batch(rows, self.tok.pad_token_id), self.device)
        n_tok = (b["labels"][:, 1:] != IGNORE).sum(-1).clamp(min=1)
        logp = sequence_logps(self.strategy.model, b) / n_tok
        loss = -(adv * logp).mean()
        return MicroResult(loss, int(b["attention_mask"].sum()), {"reward_mean": float(r.mean()),
                                                                   "reward_std": float(r.std())})


RECIPES = {"sft": SFTRecipe, "dpo": DPORecipe, "grpo": GRPORecipe}


def build_recipe(spec, tokenizer, strategy, device, reference=None):
    return RECIPES[spec.stage](spec, tokenizer, strategy, device, reference)


