"""Batched, deterministic (greedy) generation for eval, the way the model is served: the vLLM engine with the
serving settings (dtype, context length, LoRA rank limit from ``lexforge.serve.settings``) where it works,
transformers otherwise. Both engines get the same prompt token ids, built like the serving engine builds a
chat request (the base model's tokenizer and chat template, one user turn), so scores are comparable across
engines and with what clients are served.
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


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt exactly as the serving engine builds them (``lexforge.serve.engine.Engine.
    chat_prompt_ids``): the model's chat template with the generation prompt, or a plain role transcript."""
    if not getattr(tokenizer, "chat_template", None):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def prompt_token_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Each filled prompt as one user turn, tokenised the way serving tokenises a chat request."""
    return [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]


def load_tokenizer(base_model: str, trust_remote_code: bool = False):
    """The tokenizer serving uses: the base model's own (``lexforge.serve.engine.Engine``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def generate_transformers(base_model: str, adapter: str | None, prompt_ids: list[list[int]], max_new_tokens: int,
                          batch_size: int, dtype: str = "auto", trust_remote_code: bool = False,
                          progress: Progress | None = None) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(base_model, trust_remote_code)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=_torch_dtype(dtype),
                                                 trust_remote_code=trust_remote_code).to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            batch = prompt_ids[start:start + batch_size]
            width = max(len(p) for p in batch)  # left padding: every row's answer starts at column `width`
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            with torch.inference_mode():
                gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, num_beams=1, pad_token_id=pad_id, temperature=None, top_p=None,
                                     top_k=None)
            out += [t.strip() for t in tok.batch_decode(gen[:, width:], skip_special_tokens=True)]
            if progress:
                progress(len(out), len(prompt_ids))
    finally:
        del model
        gc.collect()
    return out


def lora_rank(adapter: str) -> int:
    """The adapter's LoRA rank ``r`` (from adapter_config.json)."""
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return int(cfg.get("r", 16))


@dataclass(frozen=True)
class EngineConfig:
    """How a model is run for eval: the serving engine's settings (``lexforge.serve.settings.settings_from_spec``)
    so the candidate is scored the way it will be served."""

    requested: str  # eval.engine: auto | vllm | transformers
    dtype: str
    max_model_len: int
    max_lora_rank: int
    trust_remote_code: bool = False

    def to_dict(self) -> dict:
        return {"requested": self.requested, "dtype": self.dtype, "max_model_len": self.max_model_len,
                "max_lora_rank": self.max_lora_rank}


def engine_config(spec, base_path: str) -> EngineConfig:
    from lexforge.serve.settings import ChampionSourceConfig, settings_from_spec

    s = settings_from_spec(spec, base_model=base_path, champion=ChampionSourceConfig(kind="none"))
    return EngineConfig(requested=spec.eval.engine, dtype=s.dtype, max_model_len=s.max_model_len,
                        max_lora_rank=s.max_lora_rank, trust_remote_code=s.trust_remote_code)


def generate_vllm(base_model: str, adapter: str | None, prompt_ids: list[list[int]], max_new_tokens: int,
                  batch_size: int, cfg: EngineConfig, progress: Progress | None = None) -> list[str]:
    # In-process engine core: no spawn of a child that re-imports __main__ (breaks under pytest/CLI), and
    # nothing left running after we return. A small KV cache on CPU unless the operator set one.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    from lexforge.vllm_settings import host_logging_config

    # the serving engine's dtype, context length and LoRA rank limit (lexforge.serve.engine.engine_args); the
    # host process's logging is left alone (vLLM's dictConfig deadlocks against Prefect's log handler)
    kwargs = dict(model=base_model, enforce_eager=True, seed=0, max_model_len=cfg.max_model_len,
                  max_num_seqs=batch_size, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                  logging_config=host_logging_config())
    if adapter:
        kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=cfg.max_lora_rank)
    llm = LLM(**kwargs)
    try:
        lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("eval-adapter", 1, str(adapter))
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=0)
        results = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, lora_request=lora,
                               use_tqdm=False)
        if progress:
            progress(len(results), len(prompt_ids))
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


def generate(cfg: EngineConfig, base_model: str, adapter: str | None, prompts: list[str], *, max_new_tokens: int,
             batch_size: int, progress: Progress | None = None) -> Generations:
    """Greedy generation for ``prompts`` (each one user turn, tokenised as serving does).

    ``cfg.requested``: ``vllm`` (the serving engine; fail if it does not work), ``transformers``, or ``auto``
    (vLLM, else transformers, with the reason recorded)."""
    ids = prompt_token_ids(load_tokenizer(base_model, cfg.trust_remote_code), prompts)
    engine = cfg.requested
    if engine in ("vllm", "auto") and (engine == "vllm" or vllm_importable()):
        try:
            return Generations(generate_vllm(base_model, adapter, ids, max_new_tokens, batch_size, cfg, progress),
                               "vllm")
        except Exception as e:
            if engine == "vllm":
                raise RuntimeError(f"eval.engine=vllm failed on {base_model}: {type(e).__name__}: {e}; "
                                   "set eval.engine=transformers (or auto) to use the transformers engine") from e
            reason = f"vllm failed: {type(e).__name__}: {str(e)[:300]}"
            log.warning("eval: %s; falling back to transformers", reason)
            texts = generate_transformers(base_model, adapter, ids, max_new_tokens, batch_size, cfg.dtype,
                                          cfg.trust_remote_code, progress)
            return Generations(texts, "transformers", reason)
    reason = "vllm not importable" if engine == "auto" else None
    texts = generate_transformers(base_model, adapter, ids, max_new_tokens, batch_size, cfg.dtype,
                                  cfg.trust_remote_code, progress)
    return Generations(texts, "transformers", reason)
