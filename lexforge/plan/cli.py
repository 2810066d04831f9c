"""`lexforge plan serve|train|models|gpus`: GPU sizing and cost before anyone rents a GPU.

Exit codes: 0 = plan made and it fits; 1 = plan made but it does NOT fit (reasons printed); 2 = bad input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)
out = Console(soft_wrap=True)

plan_app = typer.Typer(help="GPU sizing and cost for serving and fine-tuning (no GPU needed).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(plan_app, name="plan")


def _emit(plan, as_json: bool, as_markdown: bool, printer) -> None:
    if as_json:
        print(plan.to_json())
    elif as_markdown:
        print(plan.to_markdown())
    else:
        printer(plan, out)
    if not plan.fits:
        raise typer.Exit(1)


def _fail(e: Exception) -> None:
    console.print(f"[red]{e}[/]", markup=True, highlight=False)
    raise typer.Exit(2)


@plan_app.command("serve")
def serve_cmd(
    model: str = typer.Argument(..., help="Catalog name (see `lexforge plan models`), model dir or config.json"),
    precision: Optional[str] = typer.Option(None, help="bf16 | fp8 | int4 [model's native precision]"),
    context: int = typer.Option(32768, min=1, help="Context length per sequence (tokens)"),
    concurrency: int = typer.Option(16, min=1, help="Concurrent sequences at full context"),
    gpu: str = typer.Option("B200", help="GPU from the catalog (H100, H200, B200)"),
    score: Optional[float] = typer.Option(None, help="Eval score, to report score per $/hour"),
    price: Optional[float] = typer.Option(None, help="USD per GPU-hour [catalog / LEXFORGE_GPU_PRICE_<GPU>]"),
    kv_dtype: str = typer.Option("bf16", help="KV cache dtype: bf16 | fp8"),
    gpu_memory_utilization: float = typer.Option(0.90, help="Fraction of GPU memory the engine may use"),
    reserve_gb: float = typer.Option(4.0, help="Engine reserve per GPU (CUDA graphs, activations), GB"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    as_markdown: bool = typer.Option(False, "--markdown", help="Print Markdown"),
) -> None:
    """How many GPUs (TP x PP) it takes to serve MODEL at a context and concurrency, and what it costs."""
    from lexforge.plan import PlanError, plan_serving
    from lexforge.plan.render import print_serve

    try:
        p = plan_serving(model, precision=precision, context_len=context, concurrency=concurrency, gpu=gpu,
                         score=score, price=price, kv_dtype=kv_dtype, gpu_memory_utilization=gpu_memory_utilization,
                         reserve_gb=reserve_gb)
    except PlanError as e:
        _fail(e)
    _emit(p, as_json, as_markdown, print_serve)


@plan_app.command("train")
def train_cmd(
    target: str = typer.Argument(..., help="Catalog model / model dir / config.json, or a job spec YAML"),
    method: str = typer.Option("lora", help="lora | qlora | full (model mode; a spec has its own)"),
    strategy: Optional[str] = typer.Option(None, help="ddp | fsdp | deepspeed-zero2 | deepspeed-zero3 [best fit]"),
    stage: str = typer.Option("sft", help="sft | dpo | grpo (model mode)"),
    pairs: Optional[int] = typer.Option(None, min=1, help="Training examples (pairs)"),
    tokens_per_pair: Optional[int] = typer.Option(None, min=1, help="Average tokens per example"),
    epochs: float = typer.Option(1.0, min=0.001, help="Epochs"),
    gpu: Optional[str] = typer.Option(None, help="GPU [spec's accelerator_type, else B200]"),
    gpus: Optional[int] = typer.Option(None, min=1, help="Check a fixed number of GPUs instead of finding the minimum"),
    mfu: float = typer.Option(0.35, help="Model FLOPs utilisation for the time estimate"),
    price: Optional[float] = typer.Option(None, help="USD per GPU-hour [catalog / LEXFORGE_GPU_PRICE_<GPU>]"),
    seq_len: int = typer.Option(2048, help="Sequence length of a micro-batch (model mode)"),
    micro_batch: int = typer.Option(1, help="Sequences per GPU per micro-batch (model mode)"),
    grad_ckpt: bool = typer.Option(True, "--grad-ckpt/--no-grad-ckpt", help="Gradient checkpointing (model mode)"),
    lora_r: int = typer.Option(16, help="LoRA rank (model mode)"),
    override: list[str] = typer.Option([], "--set", "-s", help="Spec override dotted.key=value (spec mode)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    as_markdown: bool = typer.Option(False, "--markdown", help="Print Markdown"),
) -> None:
    """Memory per GPU, minimum cluster, strategy, time and cost to fine-tune a model or run a job spec."""
    from lexforge.config import SpecError, load_spec
    from lexforge.plan import PlanError, plan_finetune, plan_training
    from lexforge.plan.render import print_train

    if (pairs is None) != (tokens_per_pair is None):
        _fail(ValueError("give both --pairs and --tokens-per-pair (or neither)"))
    tokens = pairs * tokens_per_pair * epochs if pairs and tokens_per_pair else None
    try:
        if target.endswith((".yaml", ".yml")):
            if not Path(target).is_file():
                raise PlanError(f"job spec {target} not found")
            ovs = list(override) + ([f"hyperparams.epochs={epochs}"] if epochs != 1.0 else [])
            spec = load_spec(target, ovs)
            if gpus:
                spec = spec.model_copy(update={"resources": spec.resources.model_copy(
                    update={"num_workers": gpus, "gpus_per_worker": 1})})
            if strategy:
                spec = spec.model_copy(update={"strategy": strategy})
            stats = {"rows": pairs, "total_tokens": pairs * tokens_per_pair} if tokens else None
            p = plan_training(spec, token_stats=stats, gpu=gpu, mfu=mfu, price=price)
        else:
            p = plan_finetune(target, method=method, strategy=strategy, stage=stage, gpu=gpu or "B200",
                              num_gpus=gpus, seq_len=seq_len, micro_batch=micro_batch,
                              gradient_checkpointing=grad_ckpt, lora_r=lora_r, tokens=tokens, mfu=mfu, price=price,
                              extra_assumptions=[f"tokens = {pairs} pairs x {tokens_per_pair} tokens x {epochs:g} "
                                                 f"epochs"] if tokens else None)
    except (PlanError, SpecError) as e:
        _fail(e)
    _emit(p, as_json, as_markdown, print_train)


@plan_app.command("compare")
def compare_cmd(
    gpu: list[str] = typer.Option(["H100", "H200", "B200"], help="GPUs to compare (repeatable)"),
    context: int = typer.Option(32768, help="Context length per sequence (tokens)"),
    concurrency: int = typer.Option(16, help="Concurrent sequences at full context"),
    kv_dtype: str = typer.Option("bf16", help="KV cache dtype: bf16 | fp8"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    as_markdown: bool = typer.Option(False, "--markdown", help="Print Markdown"),
) -> None:
    """Serving cost of every catalog model (native precision) on each GPU: GPUs, $/hour, $/year."""
    from rich.table import Table

    from lexforge.plan import PlanError, model_catalog, plan_serving

    rows = []
    try:
        for name in model_catalog():
            for g in gpu:
                p = plan_serving(name, context_len=context, concurrency=concurrency, gpu=g, kv_dtype=kv_dtype)
                rows.append({"model": name, "gpu": p.gpu, "precision": p.precision, "fits": p.fits,
                             "layout": f"TP{p.tensor_parallel}xPP{p.pipeline_parallel}", "gpus": p.num_gpus,
                             "memory_per_gpu_gb": p.memory_per_gpu_gb, "cost_per_hour": p.cost_per_hour,
                             "annual_cost_usd": p.annual_cost_usd})
    except PlanError as e:
        _fail(e)
    header = ["model", "gpu", "precision", "fits", "layout", "gpus", "memory_per_gpu_gb", "cost_per_hour",
              "annual_cost_usd"]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if as_markdown:
        from lexforge.plan.render import _md_table

        print(f"Serving at {context} tokens x {concurrency} sequences (KV {kv_dtype})\n")
        print(_md_table(header, [[r[h] for h in header] for r in rows]))
        return
    t = Table(title=f"serving cost at {context} tokens x {concurrency} sequences (KV {kv_dtype})")
    for h in header:
        t.add_column(h)
    for r in rows:
        t.add_row(*[f"{r[h]:,.2f}" if isinstance(r[h], float) else str(r[h]) for h in header])
    out.print(t)


@plan_app.command("models")
def models_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """List the model catalog (lexforge/plan/models.yaml + LEXFORGE_MODEL_CATALOG)."""
    from lexforge.plan import model_catalog

    def row(name, m):
        kv = f"MLA {m.kv_lora_rank}+{m.qk_rope_head_dim}" if m.attention == "mla" else f"{m.num_kv_heads} x {m.head_dim}"
        return (name, f"{m.total_params / 1e9:g}", f"{m.active_params / 1e9:g}", m.precision, str(m.num_layers),
                m.attention + (f" ({m.kv_layers} KV layers)" if m.kv_layers != m.num_layers else ""), kv,
                str(len(m.assumptions)))

    _print_catalog(model_catalog, "lexforge plan: model catalog",
                   ("model", "total B", "active B", "precision", "layers", "attention", "KV heads x dim", "assumptions"),
                   row, as_json)


def _print_catalog(load, title: str, columns, row, as_json: bool) -> None:
    """Print a catalog (name -> entry with to_dict()) as JSON or as a table of row(name, entry)."""
    from rich.table import Table

    from lexforge.plan import PlanError

    try:
        cat = load()
    except PlanError as e:
        _fail(e)
    if as_json:
        print(json.dumps({k: v.to_dict() for k, v in cat.items()}, indent=2))
        return
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for name, entry in cat.items():
        t.add_row(*row(name, entry))
    out.print(t)


@plan_app.command("gpus")
def gpus_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """List the GPU catalog with resolved prices (lexforge/plan/gpus.yaml, LEXFORGE_GPU_CATALOG, env prices)."""
    from lexforge.plan import gpu_catalog

    def row(_, g):
        return (g.name, f"{g.memory_gb:g}", f"{g.memory_bandwidth_gbs:g}", f"{g.bf16_tflops:g}", f"{g.fp8_tflops:g}",
                f"{g.nvlink_gbs:g}", f"{g.infiniband_gbps:g}", f"{g.price_per_gpu_hour:.2f}", g.price_source)

    _print_catalog(gpu_catalog, "lexforge plan: GPU catalog",
                   ("GPU", "memory GB", "HBM GB/s", "bf16 TFLOPS", "fp8 TFLOPS", "NVLink GB/s", "IB Gb/s", "$/GPU-h",
                    "price from"), row, as_json)


def main() -> None:
    """Standalone entry point (``python -m lexforge.plan``), same commands as ``lexforge plan``."""
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    app(args=None, prog_name="lexforge")


if __name__ == "__main__":
    main()
