"""Rendering of plans: Markdown (for Prefect artifacts, docs) and rich tables (CLI)."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:,.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return str(v)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def serve_rows(p) -> list[tuple[str, Any]]:
    rows = [
        ("model", f"{p.model} ({p.model_info.get('total_params_b')}B total / {p.model_info.get('active_params_b')}B active)"),
        ("fits", p.fits),
        ("GPU", p.gpu),
        ("precision / KV dtype", f"{p.precision} / {p.kv_dtype}"),
        ("context x concurrency", f"{p.context_len} x {p.concurrency}"),
        ("layout", f"TP={p.tensor_parallel} x PP={p.pipeline_parallel} = {p.num_gpus} GPUs on {p.nodes} node(s)"),
        ("interconnect", p.interconnect),
        ("weights (GB)", p.weights_gb),
        ("KV cache, all sequences (GB)", p.kv_cache_gb),
        ("KV bytes per token (avg)", f"{p.kv_bytes_per_token:,.0f}"),
        ("recurrent state (GB)", p.recurrent_state_gb),
        ("memory per GPU (GB)", f"{p.memory_per_gpu_gb:.1f} of {p.usable_per_gpu_gb:.1f} usable"),
        ("max concurrency at this context", p.max_concurrency_at_context),
        ("price per GPU-hour", f"${p.price_per_gpu_hour:.2f} ({p.price_source})"),
        ("cost per hour", f"${p.cost_per_hour:,.2f}"),
        ("annual cost (24/7)", f"${p.annual_cost_usd:,.0f}"),
    ]
    if p.score is not None:
        rows += [("score", p.score), ("score per $/hour", f"{p.score_per_dollar_hour:.4g}" if p.score_per_dollar_hour else None)]
    return rows


def train_rows(p) -> list[tuple[str, Any]]:
    dev = f"{p.num_workers} x {p.gpu} ({p.nodes} node(s))" if p.device == "gpu" else f"CPU, {p.num_workers} worker(s)"
    rows = [
        ("model", f"{p.model} ({p.total_params_b}B total / {p.active_params_b}B active)"),
        ("method / stage", f"{p.method} / {p.stage}"),
        ("fits", p.fits),
        ("cluster", dev),
        ("strategy", p.strategy),
        ("Ray ScalingConfig", p.scaling_config()),
        ("memory per " + ("GPU" if p.device == "gpu" else "worker") + " (GB)",
         f"{p.memory_per_gpu_gb:.2f} of {p.budget_per_gpu_gb:.1f} budget"),
        ("trainable params", f"{p.trainable_params:,.0f}"),
        ("micro-batch x seq", f"{p.micro_batch} x {p.seq_len}" + (" (grad ckpt)" if p.gradient_checkpointing else "")),
        ("tokens", p.tokens),
        ("FLOPs", f"{p.flops:.3e}" if p.flops else None),
        ("hours", p.hours),
        ("cost (USD)", p.cost_usd),
    ]
    if p.suggested_overrides:
        rows.append(("suggested overrides", " ".join(p.suggested_overrides)))
    return rows


def serve_markdown(p) -> str:
    parts = [f"## Serving plan: {p.model} on {p.gpu}", "", _md_table(["item", "value"], [list(r) for r in serve_rows(p)])]
    if p.candidates:
        parts += ["", "### Layouts considered", "",
                  _md_table(["TP", "PP", "GPUs", "memory per GPU (GB)", "fits"],
                            [[c["tp"], c["pp"], c["gpus"], c["memory_per_gpu_gb"], c["fits"]] for c in p.candidates])]
    parts += ["", "### Reasons", ""] + [f"- {r}" for r in p.reasons]
    parts += ["", "### Assumptions", ""] + [f"- {a}" for a in p.assumptions]
    return "\n".join(parts) + "\n"


def train_markdown(p) -> str:
    title = f"## Fine-tuning plan: {p.method} {p.model}" + (f" on {p.gpu}" if p.gpu else " on CPU")
    parts = [title, "", _md_table(["item", "value"], [list(r) for r in train_rows(p)])]
    if p.memory_breakdown_gb:
        parts += ["", "### Memory per " + ("GPU" if p.device == "gpu" else "worker") + " (GB)", "",
                  _md_table(["component", "GB"], [[k, v] for k, v in p.memory_breakdown_gb.items()])]
    if p.strategies:
        parts += ["", "### Strategies", "", _md_table(
            ["strategy", "GPUs", "memory per GPU (GB)", "fits"],
            [[s["strategy"], s.get("min_gpus", s.get("gpus")), s["memory_per_gpu_gb"], s["fits"]] for s in p.strategies])]
    parts += ["", "### Reasons", ""] + [f"- {r}" for r in p.reasons]
    parts += ["", "### Assumptions", ""] + [f"- {a}" for a in p.assumptions]
    return "\n".join(parts) + "\n"


def _item_table(title: str, rows):
    """A two-column item/value table; booleans as a green yes / red NO."""
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_column("item", style="bold")
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, "[green]yes[/]" if v is True else "[red]NO[/]" if v is False else _fmt(v))
    return t


def print_serve(p, console) -> None:
    from rich.table import Table

    console.print(_item_table(f"Serving plan: {p.model} on {p.gpu}", serve_rows(p)))
    c = Table(title="layouts considered")
    for col in ("TP", "PP", "GPUs", "memory/GPU GB", "fits"):
        c.add_column(col)
    for r in p.candidates:
        c.add_row(str(r["tp"]), str(r["pp"]), str(r["gpus"]), f"{r['memory_per_gpu_gb']:.1f}", _fmt(r["fits"]))
    console.print(c)
    _print_lists(p, console)


def print_train(p, console) -> None:
    from rich.table import Table

    console.print(_item_table(f"Fine-tuning plan: {p.method} {p.model}", train_rows(p)))
    if p.memory_breakdown_gb:
        b = Table(title="memory per " + ("GPU" if p.device == "gpu" else "worker") + " (GB)")
        b.add_column("component")
        b.add_column("GB", justify="right")
        for k, v in p.memory_breakdown_gb.items():
            b.add_row(k, f"{v:,.3f}")
        console.print(b)
    if p.strategies:
        s = Table(title="strategies")
        for col in ("strategy", "GPUs", "memory/GPU GB", "fits"):
            s.add_column(col)
        for r in p.strategies:
            s.add_row(r["strategy"], _fmt(r.get("min_gpus", r.get("gpus"))), f"{r['memory_per_gpu_gb']:,.1f}",
                      _fmt(r["fits"]))
        console.print(s)
    _print_lists(p, console)


def _print_lists(p, console) -> None:
    console.print("[bold]reasons[/]")
    for r in p.reasons:
        console.print(f"  - {r}", markup=False, highlight=False)
    console.print("[bold]assumptions[/]")
    for a in p.assumptions:
        console.print(f"  - {a}", markup=False, highlight=False)
