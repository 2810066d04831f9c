"""Fine-tuning plan: memory per GPU for LoRA / QLoRA / full under DDP, FSDP, ZeRO-2 and ZeRO-3, the minimum
cluster that holds it, and time and cost from FLOPs at a stated MFU.

Per-GPU memory = model states (weights, gradients, AdamW states; sharded or not by the strategy)
+ gathered-parameter buffers (FSDP / ZeRO-3) + activations of one micro-batch (+ logits) + a fixed overhead,
against a budget of ``memory_fraction`` x GPU memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lexforge.plan.catalog import GPU, ModelArch, PlanError, get_gpu, model_catalog, resolve_model

GB = 1e9
STRATEGIES = ("ddp", "deepspeed-zero2", "fsdp", "deepspeed-zero3")  # least communication first
METHODS = ("lora", "qlora", "full")
DEFAULT_MFU = 0.35
DEFAULT_MEMORY_FRACTION = 0.92   # allocator fragmentation headroom
DEFAULT_OVERHEAD_GB = 2.0        # CUDA context, NCCL buffers, cuBLAS workspace
DEFAULT_MAX_GPUS = 1024
NF4_BYTES = 4.127 / 8            # NF4 + double-quantised absmax (bitsandbytes)
ZERO3_MAX_LIVE_PARAMS = 1e9      # DeepSpeed stage3_max_live_parameters default
CPU_GFLOPS_PER_CORE = 20.0       # effective fp32 training throughput per core (assumption)


@dataclass
class TrainPlan:
    fits: bool
    reasons: list[str]
    num_workers: int
    gpus_per_worker: float
    strategy: str
    memory_per_gpu_gb: float
    hours: float | None
    cost_usd: float | None
    assumptions: list[str]
    model: str = ""
    method: str = "lora"
    stage: str = "sft"
    device: str = "gpu"                 # "gpu" | "cpu"
    gpu: str | None = None
    accelerator_type: str | None = None
    nodes: int = 0
    budget_per_gpu_gb: float = 0.0      # (or RAM per worker on CPU)
    memory_breakdown_gb: dict[str, float] = field(default_factory=dict)
    strategies: list[dict[str, Any]] = field(default_factory=list)
    total_params_b: float = 0.0
    active_params_b: float = 0.0
    trainable_params: float = 0.0
    tokens: float | None = None
    flops: float | None = None
    mfu: float = DEFAULT_MFU
    price_per_gpu_hour: float | None = None
    seq_len: int = 0
    micro_batch: int = 1
    gradient_checkpointing: bool = False
    suggested_overrides: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self) -> str:
        from lexforge.plan.render import train_markdown

        return train_markdown(self)

    def scaling_config(self) -> dict[str, Any]:
        """Keyword arguments for ``ray.train.ScalingConfig``."""
        out: dict[str, Any] = {"num_workers": self.num_workers, "use_gpu": self.gpus_per_worker > 0}
        if self.gpus_per_worker > 0:
            out["resources_per_worker"] = {"GPU": self.gpus_per_worker}
            if self.accelerator_type:
                out["accelerator_type"] = self.accelerator_type
        return out


def check_fits_or_raise(plan: TrainPlan) -> TrainPlan:
    """For the training flow: refuse a job that cannot fit, with the planner's reasons and a suggested fix."""
    if not plan.fits:
        fix = f" Suggested: {' '.join('--set ' + o for o in plan.suggested_overrides)}" if plan.suggested_overrides else ""
        raise PlanError(f"job does not fit ({plan.method} {plan.model} on {plan.gpu or 'CPU'}): "
                        + "; ".join(plan.reasons) + "." + fix)
    return plan


# ---- model-level quantities --------------------------------------------------------------------------------------


def _embed_params(m: ModelArch) -> float:
    if not (m.vocab_size and m.hidden_size):
        return 0.0
    return m.vocab_size * m.hidden_size * (1 if m.tie_word_embeddings else 2)


def _attn_dims(m: ModelArch) -> tuple[int, int]:
    """(query width, total K+V width) of one layer's projections."""
    h = m.hidden_size or 0
    q = (m.num_attention_heads or 0) * (m.head_dim or 0) or h
    if m.attention == "mla":
        return q, (m.kv_lora_rank or 512) + (m.qk_rope_head_dim or 64)
    return q, 2 * (m.num_kv_heads or 0) * (m.head_dim or 0) or 2 * h


def active_ffn_width(m: ModelArch) -> float:
    """Summed MLP intermediate width one token passes through; estimated from active params when unknown."""
    if m.active_ffn_size:
        return float(m.active_ffn_size)
    if not m.is_moe and m.intermediate_size:
        return float(m.intermediate_size)
    h, L = m.hidden_size or 0, m.num_layers or 0
    if not (h and L):
        return 4.0 * h
    q, kv = _attn_dims(m)
    per_layer = (m.active_params - _embed_params(m)) / L
    attn = h * (2 * q) + h * kv
    return max(per_layer - attn, 0) / (3 * h)


def lora_trainable_params(m: ModelArch, r: int) -> float:
    """r x (d_in + d_out) summed over LoRA-targeted linears of every layer.

    With the dims known from config.json: attention projections + dense MLPs (routed experts are not targeted).
    Otherwise: q, k, v, o and, for dense models, gate/up/down from intermediate_size.
    """
    L, h = m.num_layers or 0, m.hidden_size or 0
    if m.lora_linear_dims:
        return float(r * L * sum(a + b for a, b in m.lora_linear_dims))
    q, kv = _attn_dims(m)
    dims = [(h, q), (h, kv // 2), (h, kv // 2), (q, h)]
    if not m.is_moe and m.intermediate_size:
        i = m.intermediate_size
        dims += [(h, i), (h, i), (i, h)]
    return float(r * L * sum(a + b for a, b in dims))


def activation_bytes_per_token_layer(m: ModelArch, act_bytes: float = 2.0) -> float:
    """Saved activations per token per decoder layer with FlashAttention/SDPA (no s^2 scores), no dropout:
    norm inputs and outputs (3h, plus the residual 2h), Q and K/V projections, the attention output, and for a
    gated MLP four tensors of the active intermediate width (gate, up, activation, product)."""
    h = m.hidden_size or 0
    q, kv = _attn_dims(m)
    return act_bytes * (5 * h + 2 * q + kv + 4 * active_ffn_width(m))


@dataclass
class _Inputs:
    m: ModelArch
    method: str
    stage: str
    compute_bytes: float          # 2 for bf16/fp16, 4 for fp32
    seq_len: int
    micro_batch: int
    grad_ckpt: bool
    lora_r: int
    budget: float                 # bytes per GPU (or per worker on CPU)
    overhead: float


def memory_per_gpu(x: _Inputs, strategy: str, n: int) -> dict[str, float]:
    """Bytes per GPU, by component, for ``n`` data-parallel GPUs."""
    m, c = x.m, x.compute_bytes
    P = m.total_params
    L = max(m.num_layers or 1, 1)
    shard_all = strategy in ("fsdp", "deepspeed-zero3")
    shard_states = shard_all or strategy == "deepspeed-zero2"
    out: dict[str, float] = {}
    if x.method == "full":
        opt_per_param = 8.0 + (4.0 if c < 4 else 0.0)   # AdamW m + v in fp32 (+ fp32 master weights)
        out["weights"] = c * P / (n if shard_all else 1)
        out["gradients"] = c * P / (n if shard_states else 1)
        out["optimizer"] = opt_per_param * P / (n if shard_states else 1)
        trainable = P
        unit_bytes = c
        if x.stage in ("dpo", "grpo"):
            out["reference_model"] = c * P / (n if shard_all else 1)
    else:
        emb = _embed_params(m)
        if x.method == "qlora":
            base = (P - emb) * NF4_BYTES + emb * c
        else:
            base = P * c
        out["weights"] = base / (n if shard_all else 1)
        trainable = lora_trainable_params(m, x.lora_r)
        # LoRA adapters in fp32: weight 4 + grad 4 + AdamW 8 bytes per trainable parameter
        out["adapters+optimizer"] = 4 * trainable / (n if shard_all else 1) + 12 * trainable / (n if shard_states else 1)
        unit_bytes = NF4_BYTES if x.method == "qlora" else c
    if shard_all and n > 1:
        layer = (P - _embed_params(m)) / L
        unit = max(layer, _embed_params(m) / (1 if m.tie_word_embeddings else 2))
        if strategy == "fsdp":   # one decoder layer gathered + one prefetched
            gathered = 2 * unit * unit_bytes + (unit * c if x.method == "full" else 0)
        else:                    # ZeRO-3 keeps at most stage3_max_live_parameters gathered
            live = min(unit, ZERO3_MAX_LIVE_PARAMS)
            gathered = 2 * live * unit_bytes + (live * c if x.method == "full" else 0)
        out["gathered_params"] = gathered
    seqs = x.micro_batch * (2 if x.stage == "dpo" else 1)
    tokens = seqs * x.seq_len
    act_b = x.compute_bytes
    per_layer = activation_bytes_per_token_layer(m, act_b)
    if x.grad_ckpt:
        acts = tokens * (L * act_b * (m.hidden_size or 0) + per_layer)
    else:
        acts = tokens * L * per_layer
    out["activations"] = acts
    out["logits"] = tokens * (m.vocab_size or 0) * (c + 4)  # logits + fp32 upcast for the loss
    if x.overhead:
        out["overhead"] = x.overhead
    out["_trainable"] = trainable
    return out


def _total(parts: dict[str, float]) -> float:
    return sum(v for k, v in parts.items() if not k.startswith("_"))


def _gpu_counts(max_gpus: int, per_node: int) -> list[int]:
    counts, n = [], 1
    while n < per_node and n <= max_gpus:
        counts.append(n)
        n *= 2
    n = per_node
    while n <= max_gpus:
        counts.append(n)
        n += per_node
    return counts


def min_gpus(x: _Inputs, strategy: str, max_gpus: int, per_node: int) -> tuple[int | None, dict[str, float]]:
    parts: dict[str, float] = {}
    for n in _gpu_counts(max_gpus, per_node):
        parts = memory_per_gpu(x, strategy, n)
        if _total(parts) <= x.budget:
            return n, parts
        if strategy == "ddp":
            break
    return None, parts


# ---- plan --------------------------------------------------------------------------------------------------------


def _training_flops_factor(method: str, stage: str, grad_ckpt: bool) -> tuple[float, str]:
    k = 6.0 if method == "full" else 4.0
    why = ("6 x active params per token (forward 2 + backward 4)" if method == "full" else
           "4 x active params per token (forward 2 + backward activation-gradients 2; frozen weights get no "
           "weight-gradient GEMMs; adapter FLOPs negligible)")
    if grad_ckpt:
        k += 2
        why += " + 2 (gradient checkpointing recomputes the forward)"
    if stage in ("dpo", "grpo"):
        k += 2
        why += " + 2 (reference-model forward)"
    return k, why


def plan_finetune(
    model: str | dict | ModelArch,
    method: str = "lora",
    strategy: str | None = None,
    stage: str = "sft",
    gpu: str | None = "B200",
    num_gpus: int | None = None,
    seq_len: int = 2048,
    micro_batch: int = 1,
    gradient_checkpointing: bool = True,
    lora_r: int = 16,
    tokens: float | None = None,
    mfu: float = DEFAULT_MFU,
    price: float | None = None,
    precision: str = "bf16",
    max_gpus: int = DEFAULT_MAX_GPUS,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
    overhead_gb: float = DEFAULT_OVERHEAD_GB,
    extra_assumptions: list[str] | None = None,
) -> TrainPlan:
    """GPU fine-tuning plan for a model. ``num_gpus`` = a fixed cluster to check; None = find the smallest.
    ``strategy`` None = pick the least-communication strategy that fits."""
    m = resolve_model(model)
    if method not in METHODS:
        raise PlanError(f"method {method!r} not one of {', '.join(METHODS)}")
    if strategy is not None and strategy not in STRATEGIES:
        raise PlanError(f"strategy {strategy!r} not one of {', '.join(STRATEGIES)}")
    if not 0 < mfu <= 1:
        raise PlanError(f"MFU must be in (0, 1], got {mfu}")
    g: GPU = get_gpu(gpu, price)
    c = 4.0 if precision == "fp32" else 2.0
    x = _Inputs(m=m, method=method, stage=stage, compute_bytes=c, seq_len=seq_len, micro_batch=micro_batch,
                grad_ckpt=gradient_checkpointing, lora_r=lora_r, budget=g.memory_gb * GB * memory_fraction - overhead_gb * GB,
                overhead=0.0)
    allowed = [s for s in STRATEGIES if not (method == "qlora" and s == "deepspeed-zero3")]
    per_node = g.gpus_per_node

    table: list[dict[str, Any]] = []
    for s in allowed:
        if num_gpus:
            parts = memory_per_gpu(x, s, num_gpus)
            n_ok = num_gpus if _total(parts) <= x.budget else None
        else:
            n_ok, parts = min_gpus(x, s, max_gpus, per_node)
        table.append({"strategy": s, "min_gpus" if not num_gpus else "gpus": n_ok if n_ok else (num_gpus or None),
                      "fits": n_ok is not None, "memory_per_gpu_gb": round(_total(parts) / GB, 2),
                      "breakdown_gb": {k: round(v / GB, 3) for k, v in parts.items() if not k.startswith("_")}})

    reasons: list[str] = []
    by = {row["strategy"]: row for row in table}
    chosen = None
    if strategy and strategy in by and by[strategy]["fits"]:
        chosen = strategy
    else:
        if strategy and strategy not in by:
            reasons.append(f"strategy {strategy} is not possible with {method} (4-bit weights cannot be ZeRO-3 "
                           f"partitioned)")
        elif strategy:
            row = by[strategy]
            where = f"on {num_gpus} x {g.name}" if num_gpus else f"on up to {max_gpus} x {g.name}"
            reasons.append(f"{strategy} does not fit {where}: {row['memory_per_gpu_gb']:.1f} GB per GPU > "
                           f"{x.budget / GB:.1f} GB budget")
        fitting = [r for r in table if r["fits"]]
        if fitting:
            best = min(fitting, key=lambda r: (r.get("min_gpus") or r.get("gpus"), STRATEGIES.index(r["strategy"])))
            chosen = best["strategy"]
            if strategy:
                reasons.append(f"suggest strategy {chosen}, which fits")
    fits = chosen is not None
    row = by[chosen] if fits else min(table, key=lambda r: r["memory_per_gpu_gb"])
    n = (num_gpus or row.get("min_gpus") or 0) if fits else (num_gpus or max_gpus)
    parts = memory_per_gpu(x, row["strategy"], max(n, 1))
    if not fits:
        reasons.append(f"no strategy fits {'on ' + str(num_gpus) if num_gpus else 'within ' + str(max_gpus)} "
                       f"x {g.name}: best is {row['strategy']} at {row['memory_per_gpu_gb']:.1f} GB per GPU > "
                       f"{x.budget / GB:.1f} GB budget")
        big = max((k for k in parts if not k.startswith("_")), key=lambda k: parts[k])
        reasons.append(f"largest component: {big} ({parts[big] / GB:.1f} GB per GPU)")
        if "gathered_params" in parts and parts["gathered_params"] > x.budget / 2:
            reasons.append("one decoder layer is too large to gather on one GPU: needs expert/tensor parallelism, "
                           "which lexforge's Ray Train trainers do not provide")
        if m.is_moe and method == "full":
            reasons.append("consider LoRA/QLoRA, or a larger GPU")
    elif not strategy or chosen == strategy:
        reasons.insert(0, f"{method} fits with {chosen} on {n} x {g.name} "
                          f"({_total(parts) / GB:.1f} of {x.budget / GB:.1f} GB per GPU)")

    k, k_why = _training_flops_factor(method, stage, gradient_checkpointing)
    flops = k * m.active_params * tokens if tokens else None
    hours = cost = None
    if flops and fits:
        hours = flops / (n * g.bf16_tflops * 1e12 * mfu) / 3600
        cost = hours * n * g.price_per_gpu_hour

    assumptions = [
        f"GB = 10^9 bytes; per-GPU budget = {memory_fraction:g} x {g.memory_gb:g} GB - {overhead_gb:g} GB (CUDA "
        f"context, NCCL, workspace) = {x.budget / GB:.1f} GB",
        ("full: bf16 weights 2 + bf16 grads 2 + AdamW fp32 m 4 + v 4 + fp32 master weights 4 = 16 bytes/param"
         if c == 2 else "full in fp32: weights 4 + grads 4 + AdamW m 4 + v 4 = 16 bytes/param")
        if method == "full" else
        (f"{method}: frozen base in " + ("NF4 (4.127 bits incl. double-quantised scales; embeddings/lm_head stay "
                                         "16-bit)" if method == "qlora" else f"{'bf16' if c == 2 else 'fp32'}")
         + f"; adapters r={lora_r} in fp32 with AdamW = 16 bytes per trainable param"),
        "DDP replicates everything; ZeRO-2 shards gradients + optimizer states over N; FSDP (full shard) and "
        "ZeRO-3 shard weights too (/N)",
        "FSDP gathers one decoder layer + one prefetched (bf16); ZeRO-3 keeps at most "
        f"{ZERO3_MAX_LIVE_PARAMS:.0e} live gathered params",
        f"activations per token per layer = 2 bytes x (5h + 2 x q_dim + kv_dim + 4 x active MLP width) with "
        f"FlashAttention/SDPA, no dropout; gradient checkpointing keeps only layer inputs (2h) + one layer; "
        f"micro-batch {micro_batch} x {seq_len} tokens" + (" x 2 (chosen+rejected)" if stage == "dpo" else ""),
        "logits: tokens x vocab x (2 + 4) bytes (bf16 logits + fp32 copy for the loss)",
        f"FLOPs = {k:g} x active params x tokens: {k_why}; attention-score FLOPs ignored",
        f"time = FLOPs / (GPUs x {g.bf16_tflops:g} dense bf16 TFLOPS x MFU {mfu:g}); cost = hours x GPUs x "
        f"${g.price_per_gpu_hour:.2f}/GPU-h ({g.price_source})",
        "no tensor/pipeline/expert/sequence parallelism (lexforge trainers are data parallel)",
    ]
    if m.is_moe and method != "full":
        assumptions.append("MoE LoRA targets attention (and dense-layer MLPs) only; routed experts stay frozen")
    if m.is_moe:
        assumptions.append("MoE activations use the routed (active) MLP width; token permutation buffers ignored")
    if method == "qlora":
        assumptions.append("QLoRA's dequantisation usually lowers throughput vs LoRA; fold it into --mfu")
        if m.is_moe:
            assumptions.append("QLoRA on MoE assumes the experts are 4-bit too; implementations that store experts "
                               "as fused 3-D tensors (not nn.Linear) leave them in 16-bit: plan with --method lora")
    if stage == "grpo":
        assumptions.append("GRPO: completion generation time is NOT included")
    if n > per_node and fits:
        assumptions.append(f"{-(-n // per_node)} nodes: gradients/shards cross InfiniBand ({g.infiniband_gbps:g} "
                           f"Gb/s per GPU) - sharded strategies may see lower MFU than in one NVLink node")
    if tokens is None:
        assumptions.append("no token count given: time and cost not estimated (give --pairs/--tokens-per-pair or "
                           "token_stats)")
    assumptions += list(extra_assumptions or []) + m.assumptions

    return TrainPlan(
        fits=fits, reasons=reasons, num_workers=n if fits else (num_gpus or 0), gpus_per_worker=1.0,
        strategy=chosen or row["strategy"], memory_per_gpu_gb=round(_total(parts) / GB, 2),
        hours=round(hours, 3) if hours is not None else None, cost_usd=round(cost, 2) if cost is not None else None,
        assumptions=assumptions, model=m.name, method=method, stage=stage, device="gpu", gpu=g.name,
        accelerator_type=g.ray_accelerator_type, nodes=-(-n // per_node) if fits else 0,
        budget_per_gpu_gb=round(x.budget / GB, 2),
        memory_breakdown_gb={k2: round(v / GB, 3) for k2, v in parts.items() if not k2.startswith("_")},
        strategies=table, total_params_b=m.total_params / 1e9, active_params_b=m.active_params / 1e9,
        trainable_params=float(parts.get("_trainable", 0)), tokens=tokens, flops=flops, mfu=mfu,
        price_per_gpu_hour=g.price_per_gpu_hour, seq_len=seq_len, micro_batch=micro_batch,
        gradient_checkpointing=gradient_checkpointing,
    )


# ---- JobSpec -----------------------------------------------------------------------------------------------------


def arch_for_spec(spec) -> ModelArch:
    """The base model of a spec: a local HF directory or a name under $LEXFORGE_HOME/models (via
    ``resolve_model_path``), else a planner catalog entry. Hub ids are never downloaded."""
    from lexforge.models import models_dir, resolve_model_path

    base = spec.model.base
    p = Path(base).expanduser()
    if p.is_dir() or (models_dir() / base / "config.json").is_file():
        path = Path(resolve_model_path(base))
        return resolve_model(str(path))
    cat = model_catalog()
    for name, arch in cat.items():
        if base.lower() in (name.lower(), (arch.hf_id or "").lower()):
            return arch
    raise PlanError(
        f"model.base {base!r}: no config.json to plan from (not a local directory, not under {models_dir()}, not in "
        f"the planner catalog). Download the model to a directory and point model.base at it, or add it to a "
        f"LEXFORGE_MODEL_CATALOG file")


def tokens_for_spec(spec, token_stats: dict | None, num_workers: int) -> tuple[float | None, str | None]:
    hp = spec.hyperparams
    if hp.max_steps:
        mean = (token_stats["total_tokens"] / max(token_stats.get("rows") or 1, 1)) if token_stats and \
            token_stats.get("total_tokens") else spec.data.max_seq_len / 2
        t = hp.max_steps * hp.per_device_batch_size * hp.gradient_accumulation_steps * num_workers * mean
        return t, (f"tokens = max_steps {hp.max_steps} x batch {hp.per_device_batch_size} x accum "
                   f"{hp.gradient_accumulation_steps} x {num_workers} workers x {mean:.0f} mean tokens per row")
    if token_stats and token_stats.get("total_tokens"):
        t = float(token_stats["total_tokens"]) * hp.epochs
        return t, f"tokens = {token_stats['total_tokens']} dataset tokens x {hp.epochs:g} epochs"
    return None, None


def _host_ram_bytes() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a dependency
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _plan_cpu(spec, m: ModelArch, seq: int, token_stats: dict | None) -> TrainPlan:
    r = spec.resources
    hp = spec.hyperparams
    c = 2.0 if hp.precision in ("bf16", "fp16") else 4.0
    x = _Inputs(m=m, method=spec.method, stage=spec.stage, compute_bytes=c, seq_len=seq,
                micro_batch=hp.per_device_batch_size, grad_ckpt=hp.recomputes_activations, lora_r=spec.lora.r,
                budget=0.0, overhead=0.5 * GB)
    parts = memory_per_gpu(x, "ddp" if spec.strategy == "ddp" else spec.strategy, r.num_workers)
    per_worker = _total(parts)
    host = _host_ram_bytes()
    reasons = [f"CPU run: {r.num_workers} worker(s) x {r.cpus_per_worker:g} CPU(s), no GPU "
               f"(resources.gpus_per_worker=0)"]
    fits = True
    if spec.method == "qlora":
        fits = False
        reasons.append("QLoRA needs CUDA (bitsandbytes 4-bit kernels); use method=lora on CPU or request GPUs")
    if r.ray_address is None:
        need = per_worker * r.num_workers
        if need > 0.8 * host:
            fits = False
            reasons.append(f"needs {need / GB:.2f} GB RAM for {r.num_workers} worker(s) > 80% of this host's "
                           f"{host / GB:.1f} GB")
        else:
            reasons.append(f"~{per_worker / GB:.2f} GB RAM per worker; this host has {host / GB:.1f} GB")
    else:
        reasons.append(f"~{per_worker / GB:.2f} GB RAM per worker (remote cluster {r.ray_address}: RAM not checked)")
    tokens, tok_why = tokens_for_spec(spec, token_stats, r.num_workers)
    k, k_why = _training_flops_factor(spec.method, spec.stage, hp.recomputes_activations)
    flops = k * m.active_params * tokens if tokens else None
    rate = r.num_workers * r.cpus_per_worker * CPU_GFLOPS_PER_CORE * 1e9
    hours = flops / rate / 3600 if flops else None
    assumptions = [
        f"CPU memory: {'fp32' if c == 4 else 'bf16'} weights; "
        + ("full: weights + grads + AdamW m, v = 16 bytes/param (fp32)" if spec.method == "full" else
           f"LoRA adapters r={spec.lora.r} in fp32 with AdamW (16 bytes per trainable param)")
        + "; activations as on GPU, + 0.5 GB process overhead",
        f"FLOPs = {k:g} x active params x tokens: {k_why}",
        f"CPU time assumes {CPU_GFLOPS_PER_CORE:g} effective GFLOP/s per core x cpus_per_worker x workers "
        "(rough; CPU runs are for smoke tests and tiny models)",
    ]
    if tok_why:
        assumptions.append(tok_why)
    else:
        assumptions.append("no token_stats / max_steps: time not estimated")
    assumptions += m.assumptions
    return TrainPlan(
        fits=fits, reasons=reasons, num_workers=r.num_workers, gpus_per_worker=0.0, strategy=spec.strategy,
        memory_per_gpu_gb=round(per_worker / GB, 3), hours=round(hours, 4) if hours is not None else None,
        cost_usd=0.0 if hours is not None else None, assumptions=assumptions, model=m.name, method=spec.method,
        stage=spec.stage, device="cpu", gpu=None, accelerator_type=None, nodes=1,
        budget_per_gpu_gb=round(0.8 * host / GB / r.num_workers, 2),
        memory_breakdown_gb={k2: round(v / GB, 4) for k2, v in parts.items() if not k2.startswith("_")},
        total_params_b=m.total_params / 1e9, active_params_b=m.active_params / 1e9,
        trainable_params=float(parts.get("_trainable", 0)), tokens=tokens, flops=flops, mfu=0.0, seq_len=seq,
        micro_batch=hp.per_device_batch_size, gradient_checkpointing=hp.recomputes_activations,
    )


def plan_training(spec, token_stats: dict | None = None, gpu: str | None = None, *, mfu: float = DEFAULT_MFU,
                  price: float | None = None, max_gpus: int = DEFAULT_MAX_GPUS) -> TrainPlan:
    """Plan a :class:`~lexforge.config.JobSpec`: Ray ScalingConfig values, strategy, memory, time, cost.

    GPU specs (resources.gpus_per_worker > 0) are checked at their requested size (num_workers GPUs, one per
    worker); when they do not fit, ``fits`` is False and the plan carries a size/strategy that would, as
    ``suggested_overrides``. CPU specs get a RAM estimate per worker. ``gpu`` plans a CPU spec for that GPU
    instead (what-if), sizing the cluster from scratch.
    """
    m = arch_for_spec(spec)
    r = spec.resources
    hp = spec.hyperparams
    seq = spec.data.max_seq_len
    if token_stats and token_stats.get("max"):
        seq = int(min(seq, token_stats["max"]))
    if not r.use_gpu and gpu is None:
        return _plan_cpu(spec, m, seq, token_stats)

    gpu_name = gpu or r.accelerator_type or "B200"
    requested = r.num_workers if r.use_gpu else None
    notes: list[str] = []
    if r.use_gpu and r.gpus_per_worker != 1:
        notes.append(f"resources.gpus_per_worker={r.gpus_per_worker:g}: lexforge trainers run one process per GPU; "
                     f"planned as num_workers x 1 GPU")
    if not r.use_gpu:
        notes.append(f"what-if: the spec is a CPU run; sized for {gpu_name} from scratch")
    precision = "fp32" if hp.precision == "fp32" else "bf16"
    tokens, tok_why = tokens_for_spec(spec, token_stats, requested or 1)
    common = dict(method=spec.method, stage=spec.stage, gpu=gpu_name, seq_len=seq, micro_batch=hp.per_device_batch_size,
                  gradient_checkpointing=hp.recomputes_activations, lora_r=spec.lora.r, tokens=tokens, mfu=mfu,
                  price=price, precision=precision, max_gpus=max_gpus,
                  extra_assumptions=notes + ([tok_why] if tok_why else []))
    plan = plan_finetune(m, strategy=spec.strategy, num_gpus=requested, **common)

    def overrides(p: TrainPlan) -> list[str]:
        return [f"resources.num_workers={p.num_workers}", "resources.gpus_per_worker=1",
                f"resources.accelerator_type={p.accelerator_type}", f"strategy={p.strategy}"]

    if requested is None:
        if plan.fits:
            plan.suggested_overrides = overrides(plan)
        return plan
    if plan.fits and plan.strategy == spec.strategy:
        return plan
    if plan.fits:  # another strategy fits on the requested GPUs
        plan.fits = False
        plan.reasons.insert(0, f"refused as written: strategy={spec.strategy} does not fit on {requested} x {plan.gpu}")
        plan.suggested_overrides = [f"strategy={plan.strategy}"]
        return plan
    alt = plan_finetune(m, strategy=spec.strategy, num_gpus=None, **common)
    if alt.fits:
        alt.fits = False
        alt.reasons = ([f"refused as written: {spec.resources.num_workers} x {gpu_name} is too small"] + plan.reasons
                       + [f"smallest cluster that fits: strategy={alt.strategy} on {alt.num_workers} x {alt.gpu} "
                          f"({alt.nodes} node(s)); figures below are for that cluster"])
        alt.suggested_overrides = overrides(alt)
        return alt
    if not hp.recomputes_activations:
        plan.reasons.append("try hyperparams.gradient_checkpointing=true, a smaller per_device_batch_size or "
                            "max_seq_len, method=lora/qlora, or a larger GPU")
    return plan
