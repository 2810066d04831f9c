"""Builders for the tokenizer, the policy model (LoRA / QLoRA / full) and the DPO reference model.

Setup fails fast (torchtune style) on combinations that cannot run here, e.g. QLoRA without CUDA.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any


class SetupError(RuntimeError):
    """The job cannot run with this spec on this hardware; the message says what to change."""


def resolve_precision(spec, device_type: str) -> str:
    """``auto`` -> bf16 on CUDA GPUs that support it, else fp32. CPU always trains in fp32."""
    p = spec.hyperparams.precision
    if device_type != "cuda":
        if p in ("bf16", "fp16"):
            raise SetupError(f"hyperparams.precision={p} needs a GPU; set precision=auto or fp32 for CPU runs")
        return "fp32"
    import torch

    if p == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return p


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def resolve_attn_implementation(spec, device_type: str) -> str:
    """``auto`` -> flash_attention_2 on CUDA when flash-attn is installed, else sdpa. With ``hyperparams.packing``
    sdpa becomes :data:`lexforge.train.attention.PACKED_SDPA` (per-example SDPA on packed rows); flash-attn runs
    packed rows through its varlen kernel and eager through transformers' block-diagonal mask."""
    a = spec.model.attn_implementation
    has_fa = importlib.util.find_spec("flash_attn") is not None
    if a == "auto":
        a = "flash_attention_2" if device_type == "cuda" and has_fa else "sdpa"
    elif a == "flash_attention_2" and (device_type != "cuda" or not has_fa):
        raise SetupError("model.attn_implementation=flash_attention_2 needs CUDA and the flash-attn package; "
                         "use auto or sdpa")
    if a == "sdpa" and spec.hyperparams.packing:
        from lexforge.train.attention import register_packed_sdpa

        return register_packed_sdpa()
    return a


def check_compile_supported(spec, device_type: str) -> None:
    """torch.compile's inductor backend builds C++ kernels on CPU (needs a compiler) and Triton kernels on CUDA."""
    if not spec.hyperparams.torch_compile:
        return
    import shutil

    if device_type == "cpu" and not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
        raise SetupError("hyperparams.torch_compile=true on CPU needs a C++ compiler (g++) for inductor; install one "
                         "or set torch_compile=false")
    if device_type == "cuda" and importlib.util.find_spec("triton") is None:
        raise SetupError("hyperparams.torch_compile=true on CUDA needs the triton package; install it or set "
                         "torch_compile=false")


def activation_checkpointing_mode(spec) -> str:
    a = spec.hyperparams.activation_checkpointing
    if a == "auto":
        return "full" if spec.hyperparams.gradient_checkpointing else "none"
    return a


def decoder_blocks(model) -> list:
    """The transformer blocks (transformers' GradientCheckpointingLayer subclasses), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def apply_activation_checkpointing(model, mode: str, every: int) -> None:
    """full: recompute every block in backward; selective: every ``every``-th block (0, every, 2*every, ...)."""
    if mode == "none":
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise SetupError(f"{type(model).__name__} does not support activation checkpointing; set "
                         "hyperparams.activation_checkpointing=none")
    if not getattr(model, "is_gradient_checkpointing", False):  # QLoRA's kbit preparation may have enabled it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, block in enumerate(decoder_blocks(model)):
        block.gradient_checkpointing = mode == "full" or i % every == 0


def apply_compile(model) -> None:
    """Compile each decoder block in place (``nn.Module.compile``: parameter names, hooks and sharding stay)."""
    blocks = decoder_blocks(model)
    if not blocks:
        raise SetupError(f"{type(model).__name__} has no decoder blocks to compile; set torch_compile=false")
    for block in blocks:
        block.compile(dynamic=True)


def check_method_supported(spec, device_type: str) -> None:
    """Fail at setup for methods this machine cannot run."""
    if spec.method == "qlora":
        if device_type != "cuda":
            raise SetupError("method=qlora needs CUDA GPUs (bitsandbytes 4-bit kernels); set "
                             "resources.gpus_per_worker>0 on a GPU cluster, or use method=lora on CPU")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise SetupError("method=qlora needs the bitsandbytes package in the training image "
                             "(pip install bitsandbytes); it is not installed")
        if spec.strategy == "fsdp":
            raise SetupError("method=qlora with strategy=fsdp is not supported here; use ddp or deepspeed-zero2")


def build_tokenizer(spec, base_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.model.tokenizer or base_path, trust_remote_code=spec.model.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise SetupError(f"tokenizer of {base_path} has no chat template; set model.tokenizer to one that has")
    return tok


def _load_kwargs(spec, precision: str, attn: str) -> dict[str, Any]:
    # Full fine-tuning keeps fp32 master weights (autocast / FSDP MixedPrecision / DeepSpeed cast to bf16);
    # LoRA/QLoRA load the frozen base in the compute dtype and keep adapter weights in fp32 (PEFT default).
    dtype = torch_dtype(precision) if spec.method != "full" else torch_dtype("fp32")
    return {"dtype": dtype, "attn_implementation": attn, "trust_remote_code": spec.model.trust_remote_code}


def build_base_model(spec, base_path: str, precision: str, attn: str, device=None):
    import torch
    from transformers import AutoModelForCausalLM

    kw = _load_kwargs(spec, precision, attn)
    if spec.method == "qlora":
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=spec.lora.quant_type, bnb_4bit_use_double_quant=spec.lora.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(precision) if precision != "fp32" else torch.float32,
        )
        kw["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(base_path, **kw)
    model.config.use_cache = False
    return model


def apply_method(spec, model):
    """LoRA/QLoRA: wrap with a PEFT adapter (only adapter weights train). Full: everything trains."""
    if spec.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    if spec.method == "qlora":
        from peft import prepare_model_for_kbit_training

        ac = activation_checkpointing_mode(spec) != "none"
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ac)
    cfg = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                     target_modules=spec.lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def build_policy(spec, base_path: str, precision: str, attn: str, device):
    hp = spec.hyperparams
    model = build_base_model(spec, base_path, precision, attn, device)
    ac = activation_checkpointing_mode(spec)
    if spec.method != "qlora":  # QLoRA: prepare_model_for_kbit_training enables it (apply_method)
        apply_activation_checkpointing(model, ac, hp.activation_checkpointing_every)
        if ac != "none" and spec.method == "lora":
            model.enable_input_require_grads()
    model = apply_method(spec, model)
    if spec.method == "qlora":
        apply_activation_checkpointing(causal_lm(model), ac, hp.activation_checkpointing_every)
    if hp.torch_compile:
        apply_compile(model)
    return model


def causal_lm(model):
    """The ``*ForCausalLM`` module inside PEFT / DDP / DeepSpeed wrappers."""
    m = getattr(model, "module", model)
    return m.get_base_model() if hasattr(m, "get_base_model") else m


def build_reference(spec, base_path: str, precision: str, attn: str, device):
    """DPO reference for full fine-tuning: a frozen copy of the base. (LoRA uses the policy with adapters off.)"""
    model = build_base_model(spec, base_path, precision, attn, device)
    model.requires_grad_(False)
    model.eval()
    return model.to(device)
