"""GPU and model catalogs for the planner, plus parameter counting from an HF ``config.json``.

Both catalogs ship as YAML next to this file (``gpus.yaml``, ``models.yaml``) and can be extended or overridden
with ``LEXFORGE_GPU_CATALOG`` / ``LEXFORGE_MODEL_CATALOG`` (files of the same layout, merged entry by entry) and,
for prices, ``LEXFORGE_GPU_PRICE_<NAME>`` (e.g. ``LEXFORGE_GPU_PRICE_B200=6.2``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
GPU_CATALOG_FILE = HERE / "gpus.yaml"
MODEL_CATALOG_FILE = HERE / "models.yaml"

#: bytes per weight at each serving precision. FP8 carries per-channel/block scales (~1%); INT4 (AWQ/GPTQ,
#: group size 128 with fp16 scales and zeros) costs 4 + 32/128 = 4.25 bits.
BYTES_PER_PARAM = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.01, "int4": 0.53125, "fp32": 4.0}
PRECISIONS = ("bf16", "fp8", "int4")


class PlanError(ValueError):
    """A plan cannot be made (unknown model/GPU, bad input) or a job does not fit its hardware."""


# ---- GPUs ------------------------------------------------------------------------------------------------------


@dataclass
class GPU:
    name: str
    description: str
    memory_gb: float
    memory_bandwidth_gbs: float
    bf16_tflops: float
    fp8_tflops: float
    nvlink_gbs: float
    infiniband_gbps: float
    gpus_per_node: int
    ray_accelerator_type: str
    price_per_gpu_hour: float
    price_source: str = "catalog"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_yaml(path: Path, key: str) -> dict[str, dict]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PlanError(f"catalog file {path} not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PlanError(f"catalog file {path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise PlanError(f"catalog file {path}: expected a top-level mapping '{key}:' of name -> fields")
    return entries


def _merged(shipped: Path, env_var: str, key: str) -> dict[str, tuple[dict, str]]:
    out = {name: (dict(v or {}), str(shipped)) for name, v in _read_yaml(shipped, key).items()}
    extra = os.environ.get(env_var)
    if extra:
        for name, v in _read_yaml(Path(extra).expanduser(), key).items():
            base = out.get(name, ({}, extra))[0]
            out[name] = ({**base, **(v or {})}, extra)
    return out


def _lookup(entries: dict, name: str) -> str | None:
    if name in entries:
        return name
    low = {k.lower(): k for k in entries}
    return low.get(name.lower())


def gpu_catalog() -> dict[str, GPU]:
    """All GPUs with prices resolved (catalog < LEXFORGE_GPU_CATALOG < LEXFORGE_GPU_PRICE_<NAME>)."""
    out: dict[str, GPU] = {}
    for name, (fields, src) in _merged(GPU_CATALOG_FILE, "LEXFORGE_GPU_CATALOG", "gpus").items():
        try:
            gpu = GPU(name=name, price_source=f"catalog {Path(src).name}" if src == str(GPU_CATALOG_FILE) else src, **fields)
        except TypeError as e:
            raise PlanError(f"GPU catalog {src}: entry {name!r}: {e}") from None
        env = f"LEXFORGE_GPU_PRICE_{name.upper().replace('-', '_')}"
        if os.environ.get(env):
            try:
                gpu.price_per_gpu_hour = float(os.environ[env])
            except ValueError:
                raise PlanError(f"{env}={os.environ[env]!r} is not a number (USD per GPU-hour)") from None
            gpu.price_source = f"env {env}"
        out[name] = gpu
    return out


def get_gpu(name: str | None, price: float | None = None) -> GPU:
    cat = gpu_catalog()
    key = _lookup(cat, name or "B200")
    if key is None:
        raise PlanError(f"unknown GPU {name!r}; known: {', '.join(cat)} (add one via LEXFORGE_GPU_CATALOG)")
    gpu = cat[key]
    if price is not None:
        if price < 0:
            raise PlanError(f"--price must be >= 0 USD per GPU-hour, got {price}")
        gpu.price_per_gpu_hour = float(price)
        gpu.price_source = "--price"
    return gpu


# ---- models ----------------------------------------------------------------------------------------------------


@dataclass
class ModelArch:
    """What the planner needs to know about a model. Counts in parameters (not billions)."""

    name: str
    total_params: float
    active_params: float
    precision: str = "bf16"
    num_layers: int | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    tie_word_embeddings: bool = False
    attention: str = "gqa"  # gqa | mla
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    kv_layers: int | None = None
    sliding_window: int | None = None
    sliding_layers: int = 0
    recurrent_state_mb: float = 0.0
    num_experts: int | None = None
    experts_per_tok: int | None = None
    active_ffn_size: int | None = None  # summed intermediate width of the MLP a token passes through
    lora_linear_dims: list[tuple[int, int]] | None = None  # (d_in, d_out) of each LoRA-targetable linear per layer
    hf_id: str | None = None
    source: str = "catalog"
    assumptions: list[str] = field(default_factory=list)

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts and self.num_experts > 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_params_b"] = round(self.total_params / 1e9, 4)
        d["active_params_b"] = round(self.active_params / 1e9, 4)
        return d


def model_catalog() -> dict[str, ModelArch]:
    out: dict[str, ModelArch] = {}
    for name, (f, src) in _merged(MODEL_CATALOG_FILE, "LEXFORGE_MODEL_CATALOG", "models").items():
        f = dict(f)
        try:
            total = float(f.pop("total_params_b")) * 1e9
            active = float(f.pop("active_params_b", total / 1e9)) * 1e9
            prec = str(f.pop("precision", "bf16")).lower()
            if prec not in BYTES_PER_PARAM:
                raise ValueError(f"precision {prec!r} not one of {', '.join(BYTES_PER_PARAM)}")
            out[name] = ModelArch(name=name, total_params=total, active_params=active, precision=prec,
                                  source=f"catalog {Path(src).name}", **f)
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"model catalog {src}: entry {name!r}: {e}") from None
        _fill_defaults(out[name])
    return out


def _fill_defaults(m: ModelArch) -> None:
    if m.head_dim is None and m.hidden_size and m.num_attention_heads:
        m.head_dim = m.hidden_size // m.num_attention_heads
    if m.num_kv_heads is None and m.attention == "gqa" and m.num_attention_heads:
        m.num_kv_heads = m.num_attention_heads
    if m.kv_layers is None:
        m.kv_layers = m.num_layers


# ---- HF config.json --------------------------------------------------------------------------------------------


def _first(cfg: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def _is_moe_layer(cfg: dict, i: int, n_layers: int) -> bool:
    if i < int(cfg.get("first_k_dense_replace") or 0):
        return False
    if i in (cfg.get("mlp_only_layers") or []):
        return False
    if cfg.get("moe_layers") is not None:
        return i in cfg["moe_layers"]
    step = _first(cfg, "decoder_sparse_step", "interleave_moe_layer_step", "moe_layer_freq", default=1)
    step = int(step or 1)
    if step <= 0:
        return False
    return (i + 1) % step == 0


def arch_from_hf_config(cfg: dict, name: str = "config.json", source: str = "config.json") -> ModelArch:
    """Count total and active parameters and read the attention layout from an HF ``config.json`` dict.

    Assumes a decoder of gated (SwiGLU-style) MLPs; MoE fields understood: num_local_experts / num_experts /
    n_routed_experts, num_experts_per_tok, moe_intermediate_size, n_shared_experts /
    shared_expert_intermediate_size, first_k_dense_replace, decoder_sparse_step, mlp_only_layers,
    interleave_moe_layer_step. MLA (DeepSeek) fields: q_lora_rank, kv_lora_rank, qk_nope_head_dim,
    qk_rope_head_dim, v_head_dim. Sliding windows from ``layer_types`` or ``sliding_window``.
    """
    top = cfg
    if "text_config" in cfg and isinstance(cfg["text_config"], dict):
        cfg = {**cfg["text_config"]}
    assumptions: list[str] = []
    try:
        L = int(_first(cfg, "num_hidden_layers", "n_layer", "num_layers"))
        h = int(_first(cfg, "hidden_size", "n_embd", "d_model"))
        nh = int(_first(cfg, "num_attention_heads", "n_head"))
        V = int(cfg["vocab_size"])
    except (TypeError, KeyError, ValueError):
        raise PlanError(f"{source}: needs num_hidden_layers, hidden_size, num_attention_heads and vocab_size "
                        f"(a decoder-only causal LM config)") from None
    nkv = int(_first(cfg, "num_key_value_heads", "num_kv_heads", default=nh))
    hd = int(_first(cfg, "head_dim", default=h // nh) or h // nh)
    inter = _first(cfg, "intermediate_size", "ffn_dim", "n_inner")
    inter = int(inter) if inter else 4 * h
    tie = bool(_first(top, "tie_word_embeddings", default=cfg.get("tie_word_embeddings", False)))

    # attention
    mla = cfg.get("kv_lora_rank") is not None
    if mla:
        q_lora = cfg.get("q_lora_rank")
        kvr = int(cfg["kv_lora_rank"])
        rope = int(cfg.get("qk_rope_head_dim") or 64)
        nope = int(cfg.get("qk_nope_head_dim") or 128)
        vhd = int(cfg.get("v_head_dim") or 128)
        qdim = nh * (nope + rope)
        q_params = (h * q_lora + q_lora + q_lora * qdim) if q_lora else h * qdim
        kv_params = h * (kvr + rope) + kvr + kvr * nh * (nope + vhd)
        attn = q_params + kv_params + nh * vhd * h
        attn_linears = [(h, qdim), (h, kvr + rope), (kvr, nh * (nope + vhd)), (nh * vhd, h)]
    else:
        kvr = rope = None
        attn = h * nh * hd + 2 * h * nkv * hd + nh * hd * h
        mt = str(cfg.get("model_type", ""))
        if cfg.get("attention_bias") or mt.startswith("qwen2"):  # Qwen2 always has q/k/v biases
            attn += nh * hd + 2 * nkv * hd
        if mt.startswith("qwen3") or mt.startswith("gemma3"):  # per-head q/k RMSNorm
            attn += 2 * hd
        attn_linears = [(h, nh * hd), (h, nkv * hd), (h, nkv * hd), (nh * hd, h)]

    # experts
    n_exp = _first(cfg, "num_local_experts", "n_routed_experts", "num_experts")
    n_exp = int(n_exp) if n_exp else 0
    k = int(_first(cfg, "num_experts_per_tok", "moe_topk", "top_k", default=0) or 0)
    moe = n_exp > 1 and k > 0
    exp_inter = int(_first(cfg, "moe_intermediate_size", default=inter)) if moe else 0
    n_shared = int(_first(cfg, "n_shared_experts", "num_shared_experts", default=0) or 0)
    shared_inter = int(_first(cfg, "shared_expert_intermediate_size", default=0) or 0)
    if moe and not shared_inter and n_shared:
        shared_inter = n_shared * exp_inter
    dense_inter = int(_first(cfg, "intermediate_size_mlp", default=inter))

    total = active = 0.0
    moe_layers = 0
    mlp_linears_dense = [(h, dense_inter), (h, dense_inter), (dense_inter, h)]
    for i in range(L):
        layer_total = layer_active = attn + 2 * h  # + two norms
        if moe and _is_moe_layer(cfg, i, L):
            moe_layers += 1
            experts = n_exp * 3 * h * exp_inter
            shared = 3 * h * shared_inter + (h if shared_inter and cfg.get("shared_expert_intermediate_size") else 0)
            router = h * n_exp
            layer_total += experts + shared + router
            layer_active += k * 3 * h * exp_inter + shared + router
        else:
            mlp = 3 * h * dense_inter
            layer_total += mlp
            layer_active += mlp
        total += layer_total
        active += layer_active
    emb = V * h * (1 if tie else 2) + h  # embeddings (+ untied lm_head) + final norm
    total += emb
    active += emb

    # KV layout
    layer_types = cfg.get("layer_types")
    window = cfg.get("sliding_window")
    sliding = 0
    kv_layers = L
    state_mb = 0.0
    if isinstance(layer_types, list) and layer_types:
        sliding = sum(1 for t in layer_types if "sliding" in str(t) or "chunked" in str(t))
        linear = sum(1 for t in layer_types if "linear" in str(t) or "mamba" in str(t))
        kv_layers = len(layer_types) - linear
        if linear:
            assumptions.append(f"{linear} linear-attention/Mamba layers keep a fixed-size state (not counted as KV)")
    elif window and cfg.get("use_sliding_window", True) is not False:
        sliding = L
    if not window:
        sliding = 0
    if moe:
        assumptions.append("MoE parameter count assumes gated (3-matrix) experts; routers counted, biases ignored")
    else:
        assumptions.append("parameter count assumes a gated (SwiGLU) MLP; biases ignored")
    active_ffn = (k * exp_inter + shared_inter) if moe else dense_inter
    return ModelArch(
        name=name, total_params=total, active_params=active, precision=_hf_precision(top, cfg),
        num_layers=L, hidden_size=h, num_attention_heads=nh, num_kv_heads=None if mla else nkv, head_dim=hd,
        intermediate_size=dense_inter, vocab_size=V, tie_word_embeddings=tie, attention="mla" if mla else "gqa",
        kv_lora_rank=kvr, qk_rope_head_dim=rope, kv_layers=kv_layers, sliding_window=int(window) if window else None,
        sliding_layers=sliding, recurrent_state_mb=state_mb, num_experts=n_exp if moe else None,
        experts_per_tok=k if moe else None, active_ffn_size=active_ffn,
        lora_linear_dims=attn_linears + ([] if moe_layers == L else mlp_linears_dense),
        source=source, assumptions=assumptions,
    )


def _hf_precision(top: dict, cfg: dict) -> str:
    q = top.get("quantization_config") or cfg.get("quantization_config") or {}
    if isinstance(q, dict) and q:
        qm = str(q.get("quant_method", "")).lower()
        if "fp8" in qm or q.get("fmt") == "e4m3" or qm == "compressed-tensors":
            return "fp8"
        if qm in ("awq", "gptq", "bitsandbytes", "mxfp4"):
            return "int4"
    dt = str(_first(top, "torch_dtype", "dtype", default=cfg.get("torch_dtype") or "bfloat16"))
    return {"float16": "fp16"}.get(dt, "bf16")


def load_hf_config(path: str | Path) -> dict:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise PlanError(f"{p}: no config.json (give a model directory, a config.json or a catalog name)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PlanError(f"{p} line {e.lineno}: not valid JSON: {e.msg}") from None


def resolve_model(model: str | dict | ModelArch) -> ModelArch:
    """A catalog name, a model directory / config.json path, a config dict, or a :class:`ModelArch`."""
    if isinstance(model, ModelArch):
        return model
    if isinstance(model, dict):
        return arch_from_hf_config(model, name=str(model.get("_name_or_path") or model.get("model_type") or "config"))
    cat = model_catalog()
    key = _lookup(cat, model)
    if key is not None:
        return cat[key]
    p = Path(model).expanduser()
    if p.is_dir() and not (p / "config.json").is_file() and (p / "adapter_config.json").is_file():
        try:
            base = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (json.JSONDecodeError, KeyError):
            raise PlanError(f"{p / 'adapter_config.json'}: no base_model_name_or_path to plan from") from None
        arch = resolve_model(str(base))
        arch.assumptions = arch.assumptions + [f"{p} is a PEFT adapter: planned as its base model {base}"]
        return arch
    if p.is_dir() or p.suffix == ".json":
        cfg = load_hf_config(p)
        name = p.name if p.is_dir() else p.parent.name or p.name
        return arch_from_hf_config(cfg, name=name, source=str(p if p.suffix == ".json" else p / "config.json"))
    from lexforge.models import models_dir

    local = models_dir() / model
    if (local / "config.json").is_file():
        return arch_from_hf_config(load_hf_config(local), name=model, source=str(local / "config.json"))
    raise PlanError(
        f"unknown model {model!r}: not in the catalog ({', '.join(cat)}), not a directory with config.json and not "
        f"under {models_dir()}. The planner never downloads: for a hub id, download the model (or just its "
        f"config.json) to a directory and pass that path, or add it to a LEXFORGE_MODEL_CATALOG file"
    )
