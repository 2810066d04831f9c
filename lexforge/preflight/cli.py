"""``lexforge preflight SPEC``: check the nodes a job will use before it takes GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("preflight")
    def preflight(
        spec_path: Path = typer.Argument(..., help="Job spec YAML"),
        override: list[str] = typer.Option([], "--set", "-s", help="dotted.key=value override (repeatable)"),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON"),
    ) -> None:
        """Probe every node of the job's Ray cluster: reachable, same lexforge/code/Python/torch/Ray, storage
        round trip, enough CPUs/GPUs/memory of the requested type, NCCL/InfiniBand settings on GPU nodes.
        Exit 1 (with the fix for each failed check) when the job should not start."""
        from rich.console import Console
        from rich.table import Table

        from lexforge.config import SpecError, load_spec
        from lexforge.preflight.run import run_preflight

        console = Console(stderr=True)
        try:
            spec = load_spec(spec_path, override)
        except SpecError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2)
        try:
            with console.status(f"probing the nodes of {spec.name}'s Ray cluster"):
                report = run_preflight(spec)
        except (ConnectionError, RuntimeError) as e:
            console.print(f"[red]preflight failed: {e}[/]")
            raise typer.Exit(2)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            t = Table(title=f"preflight {spec.name}: {len(report.nodes)} node(s)")
            for col in ("check", "node", "ok", "detail", "fix"):
                t.add_column(col, overflow="fold")
            for c in report.checks:
                t.add_row(c.check, c.node, "[green]yes[/]" if c.ok else "[red]NO[/]", c.detail, c.fix)
            console.print(t)
        if not report.ok:
            console.print(f"[red]{len(report.failed())} check(s) failed[/]: fix them before training")
            raise typer.Exit(1)
