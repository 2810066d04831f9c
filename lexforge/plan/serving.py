"""Serving plan: how many GPUs (and which tensor/pipeline-parallel layout) a model needs, and what it costs.

Memory per GPU = weights / (TP x PP) + KV cache of `concurrency` sequences of `context_len` tokens (sharded by
TP over KV heads, by PP over layers) + recurrent state (hybrid models) + an engine reserve (CUDA graphs,
activations of one prefill chunk, NCCL buffers), and must fit in `gpu_memory_utilization` x GPU memory
(vLLM's budget).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from lexforge.plan.catalog import BYTES_PER_PARAM, GPU, ModelArch, PlanError, get_gpu, resolve_model

HOURS_PER_YEAR = 24 * 365
GB = 1e9

DEFAULT_CONTEXT = 32768
DEFAULT_CONCURRENCY = 16
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
DEFAULT_RESERVE_GB = 4.0
DEFAULT_MAX_NODES = 16


@dataclass
class ServePlan:
    model: str
    gpu: str
    precision: str
    kv_dtype: str
    context_len: int
    concurrency: int
    fits: bool
    tensor_parallel: int
    pipeline_parallel: int
    num_gpus: int
    nodes: int
    weights_gb: float
    kv_cache_gb: float               # whole deployment, all sequences (before TP replication)
    kv_bytes_per_token: float        # average over the context, all layers
    recurrent_state_gb: float
    memory_per_gpu_gb: float
    usable_per_gpu_gb: float
    reserve_per_gpu_gb: float
    gpu_memory_utilization: float
    max_concurrency_at_context: int
    price_per_gpu_hour: float
    price_source: str
    cost_per_hour: float
    annual_cost_usd: float
    score: float | None = None
    score_per_dollar_hour: float | None = None
    interconnect: str = ""
    reasons: list[str] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    model_info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self) -> str:
        from lexforge.plan.render import serve_markdown

        return serve_markdown(self)


# ---- KV cache ---------------------------------------------------------------------------------------------------


def kv_elements_per_token_layer(m: ModelArch) -> int:
    """KV elements one token stores in one attention layer: 2 x kv_heads x head_dim (K and V), or for MLA the
    shared latent kv_lora_rank + qk_rope_head_dim."""
    if m.attention == "mla":
        return int((m.kv_lora_rank or 512) + (m.qk_rope_head_dim or 64))
    if not (m.num_kv_heads and m.head_dim):
        return 0
    return 2 * m.num_kv_heads * m.head_dim


def kv_bytes_per_sequence(m: ModelArch, context_len: int, kv_bytes: float = 2.0) -> float:
    """KV cache of one sequence of ``context_len`` tokens, whole model (no parallel split).

    full layers keep every token; sliding-window layers keep min(context, window) tokens.
    """
    per = kv_elements_per_token_layer(m) * kv_bytes
    kv_layers = m.kv_layers if m.kv_layers is not None else (m.num_layers or 0)
    sliding = min(m.sliding_layers or 0, kv_layers) if m.sliding_window else 0
    full = kv_layers - sliding
    win = min(context_len, m.sliding_window or context_len)
    return per * (full * context_len + sliding * win)


def kv_tp_divisor(m: ModelArch, tp: int) -> int:
    """How much of the KV cache one TP rank holds, as a divisor: KV heads split across ranks until each rank has
    one head (then heads are replicated); an MLA latent is replicated on every rank."""
    if m.attention == "mla":
        return 1
    return min(tp, m.num_kv_heads or tp)


def valid_tp_sizes(m: ModelArch, gpus_per_node: int) -> tuple[list[int], list[str]]:
    """Powers of two within one node that divide the attention heads (and KV heads, or are a multiple of them)."""
    out, why_not = [], []
    t = 1
    while t <= gpus_per_node:
        if m.num_attention_heads and m.num_attention_heads % t:
            why_not.append(f"TP={t}: {m.num_attention_heads} attention heads not divisible by {t}")
        elif m.attention != "mla" and m.num_kv_heads and m.num_kv_heads % t and t % m.num_kv_heads:
            why_not.append(f"TP={t}: {m.num_kv_heads} KV heads neither divisible by nor dividing {t}")
        else:
            out.append(t)
        t *= 2
    return out, why_not


# ---- plan -------------------------------------------------------------------------------------------------------


def _layout_memory(m: ModelArch, weights: float, kv_seq: float, state_seq: float, concurrency: int, tp: int,
                   pp: int, reserve: float) -> tuple[float, float]:
    """(memory per GPU in bytes, KV+state bytes per sequence per GPU)."""
    per_seq_gpu = kv_seq / kv_tp_divisor(m, tp) / pp + state_seq / tp / pp
    return weights / (tp * pp) + per_seq_gpu * concurrency + reserve, per_seq_gpu


def plan_serving(
    model: str | dict | ModelArch,
    precision: str | None = None,
    context_len: int = DEFAULT_CONTEXT,
    concurrency: int = DEFAULT_CONCURRENCY,
    gpu: str | None = "B200",
    score: float | None = None,
    price: float | None = None,
    kv_dtype: str = "bf16",
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    reserve_gb: float = DEFAULT_RESERVE_GB,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> ServePlan:
    """Smallest valid TP (x PP across nodes) that holds the weights and the KV cache, with its cost."""
    m = resolve_model(model)
    g: GPU = get_gpu(gpu, price)
    prec = (precision or m.precision).lower()
    if prec not in BYTES_PER_PARAM:
        raise PlanError(f"precision {precision!r} not one of bf16, fp8, int4")
    if kv_dtype not in ("bf16", "fp16", "fp8"):
        raise PlanError(f"kv_dtype {kv_dtype!r} not one of bf16, fp8")
    if context_len <= 0 or concurrency <= 0:
        raise PlanError("context length and concurrency must be positive")
    if not 0 < gpu_memory_utilization <= 1:
        raise PlanError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")

    kvb = 1.0 if kv_dtype == "fp8" else 2.0
    weights = m.total_params * BYTES_PER_PARAM[prec]
    kv_seq = kv_bytes_per_sequence(m, context_len, kvb)
    state_seq = m.recurrent_state_mb * 1e6
    reserve = reserve_gb * GB
    usable = g.memory_gb * GB * gpu_memory_utilization

    assumptions = [
        f"GB = 10^9 bytes; {g.name} counted as {g.memory_gb:g} GB, of which gpu_memory_utilization="
        f"{gpu_memory_utilization:g} -> {usable / GB:.1f} GB usable per GPU",
        f"weights: {m.total_params / 1e9:.1f}B params x {BYTES_PER_PARAM[prec]:g} bytes ({prec}"
        + ("; FP8 incl. ~1% scales" if prec == "fp8" else "; INT4 = 4 bits + group-128 fp16 scales/zeros"
           if prec == "int4" else "") + "), sharded evenly over TP x PP ranks",
        f"KV cache in {kv_dtype}: worst case, all {concurrency} sequences at the full {context_len} tokens",
        f"engine reserve {reserve_gb:g} GB per GPU (CUDA graphs, activations of a prefill chunk, NCCL buffers)",
        "TP sizes: powers of two within one node that divide the attention heads; beyond one node, pipeline "
        "parallel over nodes (expert parallel / DP-attention layouts for MoE can do better and are not modelled)",
        f"cost = GPUs x ${g.price_per_gpu_hour:.2f}/GPU-h ({g.price_source}); annual = 24 x 365 h",
    ]
    if m.attention == "mla":
        assumptions.append(f"MLA: {kv_elements_per_token_layer(m)} latent elements per token per layer, "
                           f"replicated on every TP rank (vLLM default)")
    elif kv_elements_per_token_layer(m):
        assumptions.append(f"KV per token per layer = 2 x {m.num_kv_heads} KV heads x {m.head_dim} head dim x "
                           f"{kvb:g} bytes; split over min(TP, KV heads) ranks")
    else:
        assumptions.append("KV heads / head dim unknown: KV cache NOT counted (add them to the catalog entry)")
    if m.sliding_window and m.sliding_layers:
        assumptions.append(f"{m.sliding_layers} of {m.kv_layers} KV layers keep only the last {m.sliding_window} "
                           f"tokens (sliding/chunked attention; needs an engine with a hybrid KV allocator)")
    if m.kv_layers is not None and m.num_layers and m.kv_layers < m.num_layers:
        assumptions.append(f"hybrid: only {m.kv_layers} of {m.num_layers} layers hold KV; recurrent state "
                           f"{m.recurrent_state_mb:g} MB per sequence")
    assumptions += m.assumptions

    tps, tp_invalid = valid_tp_sizes(m, g.gpus_per_node)
    if not tps:
        raise PlanError(f"{m.name}: no valid tensor-parallel size within a node of {g.gpus_per_node}: "
                        + "; ".join(tp_invalid))
    candidates: list[dict[str, Any]] = []
    chosen: tuple[int, int, float, float] | None = None
    for tp in tps:
        mem, per_seq = _layout_memory(m, weights, kv_seq, state_seq, concurrency, tp, 1, reserve)
        ok = mem <= usable
        candidates.append({"tp": tp, "pp": 1, "gpus": tp, "memory_per_gpu_gb": round(mem / GB, 2), "fits": ok})
        if ok and chosen is None:
            chosen = (tp, 1, mem, per_seq)
    if chosen is None:
        tp = tps[-1]
        for pp in range(2, max_nodes * g.gpus_per_node // tp + 1):
            if m.num_layers and pp > m.num_layers:
                break
            mem, per_seq = _layout_memory(m, weights, kv_seq, state_seq, concurrency, tp, pp, reserve)
            ok = mem <= usable
            if ok or pp == 2:
                candidates.append({"tp": tp, "pp": pp, "gpus": tp * pp, "memory_per_gpu_gb": round(mem / GB, 2),
                                   "fits": ok})
            if ok:
                chosen = (tp, pp, mem, per_seq)
                break

    reasons: list[str] = []
    if chosen is None:
        tp = tps[-1]
        pp = max(1, min(max_nodes * g.gpus_per_node // tp, m.num_layers or 1))
        mem, per_seq = _layout_memory(m, weights, kv_seq, state_seq, concurrency, tp, pp, reserve)
        reasons.append(f"does not fit on {max_nodes} nodes of {g.gpus_per_node} x {g.name}: "
                       f"{mem / GB:.1f} GB per GPU > {usable / GB:.1f} GB usable; lower context/concurrency, "
                       f"quantize (fp8/int4, --kv-dtype fp8) or use a larger GPU")
        fits = False
    else:
        tp, pp, mem, per_seq = chosen
        fits = True
        if tp == 1 and pp == 1:
            reasons.append(f"fits on one {g.name}")
        else:
            reasons.append(f"smallest valid layout that fits: TP={tp} x PP={pp} ({tp * pp} x {g.name})")
    reasons += tp_invalid
    n = tp * pp
    nodes = -(-n // g.gpus_per_node)
    free_for_kv = usable - weights / n - reserve
    max_conc = max(0, int(free_for_kv // per_seq)) if per_seq > 0 else 10**9
    cost_h = n * g.price_per_gpu_hour
    inter = f"TP over NVLink ({g.nvlink_gbs:g} GB/s per GPU)" if tp > 1 else "single GPU"
    if pp > 1:
        inter += (f"; PP over InfiniBand ({g.infiniband_gbps:g} Gb/s per GPU) across {nodes} nodes" if nodes > 1
                  else "; PP over NVLink within one node")
    ctx_tokens = context_len
    return ServePlan(
        model=m.name, gpu=g.name, precision=prec, kv_dtype=kv_dtype, context_len=context_len,
        concurrency=concurrency, fits=fits, tensor_parallel=tp, pipeline_parallel=pp, num_gpus=n, nodes=nodes,
        weights_gb=round(weights / GB, 2), kv_cache_gb=round(kv_seq * concurrency / GB, 6),
        kv_bytes_per_token=round(kv_seq / ctx_tokens, 1), recurrent_state_gb=round(state_seq * concurrency / GB, 2),
        memory_per_gpu_gb=round(mem / GB, 2), usable_per_gpu_gb=round(usable / GB, 2),
        reserve_per_gpu_gb=reserve_gb, gpu_memory_utilization=gpu_memory_utilization,
        max_concurrency_at_context=max_conc, price_per_gpu_hour=g.price_per_gpu_hour, price_source=g.price_source,
        cost_per_hour=round(cost_h, 2), annual_cost_usd=round(cost_h * HOURS_PER_YEAR, 0), score=score,
        score_per_dollar_hour=(round(score / cost_h, 6) if score is not None and cost_h > 0 else None),
        interconnect=inter, reasons=reasons, candidates=candidates, assumptions=assumptions,
        model_info={"total_params_b": round(m.total_params / 1e9, 3), "active_params_b": round(m.active_params / 1e9, 3),
                    "source": m.source, "attention": m.attention, "layers": m.num_layers, "kv_layers": m.kv_layers},
    )
