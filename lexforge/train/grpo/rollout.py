"""Rollouts: sample ``n`` completions per (chat-templated) prompt with the current policy.

:class:`RolloutEngine` is what the GRPO recipe calls; :func:`build_rollout_engine` picks the engine named by
``grpo.rollout_engine``: ``hf`` = :class:`HFRollout`, the policy's own ``generate`` (the fallback: any strategy,
no extra processes), ``vllm`` = vLLM rollout actors (:mod:`lexforge.train.grpo.rollout_vllm`).

Every engine stops a completion at EOS (the tokenizer's EOS and the model's generation-config EOS ids, so chat
models stop at their end-of-turn token, as served) or at ``max_tokens`` (``truncated``), and is reproducible
from ``seed``: a resumed run regenerates identical rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]  # one per completion (each prompt repeated n times, consecutive)
    completion_ids: list[list[int]]  # generated tokens, ending with EOS when generation stopped there; no padding
    truncated: list[bool]  # reached max_tokens without EOS


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], *, n: int, max_tokens: int, temperature: float, top_p: float,
                 seed: int) -> Rollouts: ...

    def sync_weights(self, step: int) -> None: ...  # push current policy weights (LoRA adapter or full)

    def close(self) -> None: ...


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """EOS ids a completion stops at: the tokenizer's and the model generation config's (end of turn)."""
    ids = [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids += extra if isinstance(extra, list) else [extra]
    return sorted({i for i in ids if i is not None})


def cut_at_stop(tokens: list[int], stop: set[int], max_tokens: int) -> tuple[list[int], bool]:
    """The completion up to and including its first stop token; truncated when none came within max_tokens."""
    for i, t in enumerate(tokens[:max_tokens]):
        if t in stop:
            return tokens[: i + 1], False
    return tokens[:max_tokens], True


class HFRollout:
    """The policy's own ``generate`` on the training worker. Sharded strategies (FSDP, ZeRO-3, several ranks)
    generate with ``synced_gpus=True``: a rank whose sequences all stopped keeps running forwards until every
    rank is done, so the collectives inside the forward stay in lock-step. Sampling runs under a forked RNG
    seeded with ``seed``: the training RNG stream is untouched (and so the same on resume)."""

    def __init__(self, spec, tokenizer, strategy, device, rank: int = 0, world_size: int = 1):
        self.tok, self.strategy, self.device = tokenizer, strategy, device
        self.synced = world_size > 1 and strategy.name in ("fsdp", "deepspeed-zero3")
        self.chunk = max(1, spec.hyperparams.per_device_batch_size) * spec.grpo.num_generations  # rows per call

    def sync_weights(self, step: int) -> None:  # generates with the live weights
        return None

    def close(self) -> None:
        return None

    def _model(self):
        model = self.strategy.model
        return model if hasattr(model, "generate") else self.strategy.unwrapped()

    def generate(self, prompts: list[list[int]], *, n: int, max_tokens: int, temperature: float, top_p: float,
                 seed: int) -> Rollouts:
        rows = [p for p in prompts for _ in range(n)]
        model = self._model()
        stop = stop_token_ids(self.tok, model)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else stop[0]
        out = Rollouts([], [], [])
        devices = [self.device] if self.device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(seed)
                for s in range(0, len(rows), self.chunk):
                    part = rows[s : s + self.chunk]
                    width = max(len(p) for p in part)
                    ids = torch.full((len(part), width), pad, dtype=torch.long)
                    mask = torch.zeros_like(ids)
                    for i, p in enumerate(part):  # left padding
                        ids[i, width - len(p):] = torch.tensor(p)
                        mask[i, width - len(p):] = 1
                    gen = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                         do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                         max_new_tokens=max_tokens, eos_token_id=stop, pad_token_id=pad,
                                         synced_gpus=self.synced, use_cache=True)
                    for p, g in zip(part, gen[:, width:].tolist()):
                        comp, trunc = cut_at_stop(g, set(stop), max_tokens)
                        out.prompt_ids.append(list(p))
                        out.completion_ids.append(comp)
                        out.truncated.append(trunc)
        finally:
            model.train(was_training)
        return out


def build_rollout_engine(spec, tokenizer, strategy, device, rank: int, world_size: int) -> RolloutEngine:
    if spec.grpo.rollout_engine == "vllm":
        from lexforge.train.grpo.rollout_vllm import VLLMRollout

        return VLLMRollout(spec, tokenizer, strategy, device, rank, world_size)
    return HFRollout(spec, tokenizer, strategy, device, rank, world_size)
