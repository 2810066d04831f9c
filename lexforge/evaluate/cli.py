"""``lexforge eval SPEC [--adapter PATH] [--label NAME] [--baseline]``: evaluate a model on the spec's suites and
print its leaderboard row (scores with intervals)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        spec_path: Path = typer.Argument(..., help="Job spec YAML (eval.suites, eval.judge, ...)"),
        adapter: Optional[Path] = typer.Option(None, help="PEFT adapter directory to evaluate on the base model"),
        label: str = typer.Option("candidate", help="Name of this model in the report (file runs/<name>/eval/<label>.json)"),
        base_model: Optional[str] = typer.Option(None, help="Base model [spec model.base]"),
        cost_per_hour: Optional[float] = typer.Option(None, help="Serving cost in USD/hour (else from the planner)"),
        gpu: Optional[str] = typer.Option(None, help="GPU type for the planner's serving cost [planner default]"),
        engine: Optional[str] = typer.Option(None, help="auto | vllm | transformers [spec eval.engine]"),
        override: list[str] = typer.Option([], "--set", "-s", help="dotted.key=value spec override (repeatable)"),
        as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON on stdout"),
        compare: list[str] = typer.Option([], "--compare", "-c",
                                          help="Label of an earlier report of this run to show side by side "
                                               "(score, $/hour, score per $/hour); repeatable"),
        baseline: bool = typer.Option(False, "--baseline",
                                      help="Evaluate the spec's base model (label 'base'): the gate's baseline when "
                                           "there is no champion"),
    ) -> None:
        """Evaluate a model (+adapter) on the spec's held-out LegalBench-layout suites."""
        import os

        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries only the report
        from lexforge.config import SpecError, load_spec
        from lexforge.evaluate import EvalError, leaderboard_markdown, load_report
        from lexforge.evaluate.cache import evaluate_cached
        from lexforge.evaluate.tasks import TaskError

        if baseline and (adapter or label != "candidate"):
            console.print("[red]--baseline evaluates the base model as label 'base': drop --adapter / --label[/]")
            raise typer.Exit(2)
        if baseline:
            label = "base"

        try:
            spec = load_spec(spec_path, override + ([f"eval.engine={engine}"] if engine else []))
        except SpecError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2)
        others = []
        for other in compare:  # before the (slow) eval: a typo fails fast
            try:
                others.append(load_report(spec, other))
            except (FileNotFoundError, KeyError, OSError) as e:
                from lexforge.storage.layout import RunLayout

                console.print(f"[red]--compare {other}: no saved report {RunLayout(spec.name).eval_report(other)} "
                              f"in {spec.storage.root or '$LEXFORGE_HOME/store'} ({type(e).__name__}); evaluate it "
                              f"first with --label {other}[/]")
                raise typer.Exit(2)
        from rich.progress import Progress

        try:
            with Progress(console=console, transient=True) as prog:
                task = prog.add_task(f"generating ({label})", total=None)
                report = evaluate_cached(spec, base_model or spec.model.base, str(adapter) if adapter else None,
                                         label, cost_per_hour=cost_per_hour, gpu=gpu,
                                         progress=lambda done, total: prog.update(task, completed=done, total=total))
        except (EvalError, TaskError, ValueError, FileNotFoundError, RuntimeError) as e:
            console.print(f"[red]eval failed: {e}[/]")
            raise typer.Exit(2)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            if others:
                print("## Leaderboard\n\n" + leaderboard_markdown([*others, report]) + "\n")
            print(report.to_markdown())
        console.print(report.summary_line())
        if (report.extra.get("cache") or {}).get("hit"):
            console.print("(stored report of the same weights, suites and settings; `--set eval.cache=false` "
                          "evaluates again)")
