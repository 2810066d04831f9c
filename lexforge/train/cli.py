"""``lexforge train SPEC.yaml [--set k=v]``: run (or resume) a training job with a live progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        spec_path: Path = typer.Argument(..., help="Job spec YAML"),
        override: list[str] = typer.Option([], "--set", "-s", help="dotted.key=value override (repeatable)"),
        merge_to: Optional[Path] = typer.Option(None, help="After LoRA training, also write base+adapter merged here"),
        continue_run: bool = typer.Option(False, "--continue", help="Continue this run with changed steps/epochs/LR "
                                          "schedule (recorded as a new lineage segment) instead of refusing"),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON"),
    ) -> None:
        """Train on Ray Train (resumes automatically if the run has checkpoints; SIGTERM = checkpoint and stop).

        A changed training setup under the same run name is refused, naming each changed field; --continue trains
        on with the new steps/epochs/LR schedule and records the lineage chain."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from lexforge.config import SpecError, load_spec
        from lexforge.train.checkpoint import CheckpointMismatch
        from lexforge.train.data import DataError
        from lexforge.train.model import SetupError
        from lexforge.train.run import run_training

        console = Console(stderr=True)
        try:
            spec = load_spec(spec_path, [*override, *(["checkpoint.on_spec_change=continue"] if continue_run else [])])
        except SpecError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(spec.name, total=None, loss="-", tps="-")

            def on_progress(p: dict) -> None:
                loss = f"{p['loss']:.4f}" if isinstance(p.get("loss"), (int, float)) else "-"
                tps = f"{p['tokens_per_s']:.0f}" if isinstance(p.get("tokens_per_s"), (int, float)) else "-"
                progress.update(task, total=p.get("total_steps"), completed=p.get("step") or 0, loss=loss, tps=tps,
                                description=f"{spec.name} [{p.get('status', '')}]")

            try:
                result = run_training(spec, on_progress=on_progress)
            except (SetupError, DataError, CheckpointMismatch) as e:
                console.print(f"[red]{e}[/]")
                raise typer.Exit(2)
        if result.status == "preempted":
            console.print(f"[yellow]preempted at step {result.steps}: checkpoint committed; run the same command "
                          f"again to resume[/]")
        elif merge_to and result.is_adapter:
            from lexforge.train.export import merge_adapter

            merge_adapter(result.base_model, result.output_dir, merge_to)
            console.print(f"merged model written to {merge_to}")
        if as_json:
            print(json.dumps(result.to_dict(), default=str))
        else:
            console.print(f"[green]{result.status}[/] {result.run_name}: {result.steps} steps, "
                          f"final loss {result.final_loss}, output {result.output_uri}")
        if result.status == "preempted":
            raise typer.Exit(75)
