"""Test helpers for the eval/registry tests: teach a tiny random model one fixed reply (so scores are
predictable from first principles), and a minimal OpenAI-compatible chat server that serves a real model's
greedy outputs (used as the LLM judge)."""

from __future__ import annotations

import random
from pathlib import Path


def _chat_texts(tok, prompts: list[str], reply: str, system: str | None) -> list[tuple[str, str]]:
    out = []
    for p in prompts:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        prefix = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        out.append((prefix, reply + tok.eos_token))
    return out


def teach_fixed_reply(base_dir: Path, out_dir: Path, prompts: list[str], reply: str, *, lora: bool,
                      steps: int = 60, lr: float = 3e-2, seed: int = 0, system: str | None = None) -> Path:
    """Fine-tune ``base_dir`` so that any of ``prompts`` (chat-templated) is answered with ``reply``.

    lora=True saves a PEFT adapter, else full weights (+ tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rnd = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    pairs = _chat_texts(tok, prompts, reply, system)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        batch = rnd.sample(pairs, min(4, len(pairs)))
        loss = 0.0
        for prefix, target in batch:
            p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
            t_ids = tok(target, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + t_ids])
            labels = torch.tensor([[-100] * len(p_ids) + t_ids])
            loss = loss + model(input_ids=ids, labels=labels).loss
        (loss / len(batch)).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if not lora:
        tok.save_pretrained(out_dir)
    return out_dir
