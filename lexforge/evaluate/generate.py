"""Batched, deterministic (greedy) generation for eval: vLLM offline engine where it works, transformers
otherwise. Both engines get the same prompt text (chat-templated with the model's own template when it has
one), so scores are comparable across engines.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class Generations:
    texts: list[str]
    engine: str
    fallback_reason: str | None = None


def format_prompts(tokenizer, prompts: list[str]) -> tuple[list[str], bool]:
    """Wrap each prompt as a user turn with the model's chat template, if it has one."""
    if not getattr(tokenizer, "chat_template", None):
        return list(prompts), False
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts], True


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def generate_transformers(base_model: str, adapter: str | None, prompts: list[str], max_new_tokens: int,
                          batch_size: int, dtype: str = "auto", trust_remote_code: bool = False,
                          progress: Progress | None = None) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file()
                                        else base_model, padding_side="left", trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=_torch_dtype(dtype),
                                                 trust_remote_code=trust_remote_code).to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    texts, _ = format_prompts(tok, prompts)
    out: list[str] = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
            if progress:
                progress(len(out), len(texts))
    finally:
        del model
        gc.collect()
    return out


def _lora_rank(adapter: str) -> int:
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    r = int(cfg.get("r", 16))
    for supported in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= supported:
            return supported
    return r


def generate_vllm(base_model: str, adapter: str | None, prompts: list[str], max_new_tokens: int, batch_size: int,
                  max_model_len: int = 2048, progress: Progress | None = None, dtype: str = "auto") -> list[str]:
    # In-process engine core: no spawn of a child that re-imports __main__ (breaks under pytest/CLI), and
    # nothing left running after we return. A small KV cache on CPU unless the operator set one.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    from lexforge.vllm_settings import host_logging_config

    # the same precision as the transformers engine (spec model.dtype), so both engines score the same model
    kwargs = dict(model=base_model, enforce_eager=True, seed=0, max_model_len=max_model_len,
                  max_num_seqs=batch_size, dtype=dtype, logging_config=host_logging_config())
    if adapter:
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=_lora_rank(adapter))
    llm = LLM(**kwargs)
    try:
        texts, _ = format_prompts(llm.get_tokenizer(), prompts)
        lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("eval-adapter", 1, str(adapter))
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=0)
        results = llm.generate(texts, params, lora_request=lora, use_tqdm=False)
        if progress:
            progress(len(results), len(texts))
        return [r.outputs[0].text.strip() for r in results]
    finally:
        _shutdown_vllm(llm)


def _shutdown_vllm(llm) -> None:
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    for obj in (core, engine):
        fn = getattr(obj, "shutdown", None)
        if callable(fn):
            try:
                fn()
                break
            except Exception:  # best effort; never hide the real result
                pass
    del llm
    gc.collect()


def vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
        return True
    except Exception:
        return False


def generate(engine: str, base_model: str, adapter: str | None, prompts: list[str], *, max_new_tokens: int,
             batch_size: int, dtype: str = "auto", max_model_len: int = 2048, trust_remote_code: bool = False,
             progress: Progress | None = None) -> Generations:
    """engine: ``vllm`` (fail if it does not work), ``transformers``, or ``auto`` (vLLM, else transformers)."""
    if engine in ("vllm", "auto") and (engine == "vllm" or vllm_importable()):
        try:
            texts = generate_vllm(base_model, adapter, prompts, max_new_tokens, batch_size, max_model_len, progress,
                                  dtype=dtype)
            return Generations(texts, "vllm")
        except Exception as e:
            if engine == "vllm":
                raise RuntimeError(f"eval.engine=vllm failed on {base_model}: {type(e).__name__}: {e}; "
                                   "set eval.engine=transformers (or auto) to use the transformers engine") from e
            reason = f"vllm failed: {type(e).__name__}: {str(e)[:300]}"
            log.warning("eval: %s; falling back to transformers", reason)
            texts = generate_transformers(base_model, adapter, prompts, max_new_tokens, batch_size, dtype,
                                          trust_remote_code, progress)
            return Generations(texts, "transformers", reason)
    reason = "vllm not importable" if engine == "auto" else None
    texts = generate_transformers(base_model, adapter, prompts, max_new_tokens, batch_size, dtype,
                                  trust_remote_code, progress)
    return Generations(texts, "transformers", reason)
