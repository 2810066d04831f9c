"""Registry commands: ``lexforge promote NAME VERSION|--auto``, ``lexforge rollback NAME``,
``lexforge registry list NAME``, ``lexforge registry audit NAME``, ``lexforge registry resolve NAME[@alias]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def _spec(path: Optional[Path]):
    if path is None:
        return None
    from lexforge.config import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    registry_app = typer.Typer(help="MLflow model registry: versions, aliases, audit log.", no_args_is_help=True)
    app.add_typer(registry_app, name="registry")

    @app.command("promote")
    def promote_cmd(
        name: str = typer.Argument(..., help="Registered model name"),
        version: Optional[str] = typer.Argument(None, help="Version to promote (omit with --auto)"),
        auto: bool = typer.Option(False, "--auto", help="Promote the @challenger if it passes the policy"),
        spec_path: Optional[Path] = typer.Option(None, "--spec", help="Job spec whose `promotion` policy applies "
                                                 "[default policy]"),
        force: bool = typer.Option(False, help="Promote even if the policy says no (recorded as FORCED)"),
        reason: Optional[str] = typer.Option(None, help="Why (recorded in the audit log)"),
        by: Optional[str] = typer.Option(None, help="Who [$LEXFORGE_ACTOR or the OS user]"),
    ) -> None:
        """Gate a version against the current @champion and, if it passes, make it the champion (atomic)."""
        from lexforge.registry import PromotionRefused, RegistryError, decide_promotion, promote
        from lexforge.registry.core import aliases_of, client_for_spec
        from lexforge.registry.tags import CHALLENGER

        spec = _spec(spec_path)
        try:
            if auto == (version is not None):
                console.print("[red]give exactly one of VERSION or --auto[/]")
                raise typer.Exit(2)
            if auto:
                version = aliases_of(client_for_spec(spec), name).get(CHALLENGER)
                if not version:
                    console.print(f"[yellow]{name} has no @challenger; nothing to promote[/]")
                    raise typer.Exit(1)
            decision = decide_promotion(spec, name, version)
            print(decision.to_markdown())
            if not decision.promote and not force:
                console.print(f"[yellow]not promoted: {'; '.join(decision.failed_reasons())}[/]")
                raise typer.Exit(1)
            promote(name, version, decision, by=by, reason=reason, force=force,
                    tracking_uri=spec.tracking.resolved_uri() if spec else None)
        except (RegistryError, PromotionRefused) as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2)
        console.print(f"[green]{name} v{version} is now @champion[/]")

    @app.command("rollback")
    def rollback_cmd(
        name: str = typer.Argument(..., help="Registered model name"),
        reason: Optional[str] = typer.Option(None, help="Why (recorded in the audit log)"),
        by: Optional[str] = typer.Option(None, help="Who [$LEXFORGE_ACTOR or the OS user]"),
    ) -> None:
        """Point @champion back at @previous_champion (atomic, audited)."""
        from lexforge.registry import RegistryError, rollback

        try:
            info = rollback(name, by=by, reason=reason)
        except RegistryError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2)
        console.print(f"[green]{name}: @champion -> v{info.version}[/]")

    @registry_app.command("list")
    def list_cmd(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
        """Versions with aliases, blended/closed/open scores, cost and promotion status."""
        from lexforge.registry import RegistryError, list_versions

        try:
            versions = list_versions(name)
        except RegistryError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2)
        if as_json:
            print(json.dumps([v.__dict__ for v in versions], indent=2))
            return
        t = Table(title=f"{name} (MLflow registry)")
        from lexforge.registry.tags import decode_eval_tags

        for col in ("version", "aliases", "blended [interval]", "closed", "open", "open scored by", "engine", "$/hour",
                    "decision", "status", "spec"):
            t.add_column(col)

        def num(x, ci=None):
            return "-" if x is None else f"{x:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

        for v in versions:
            e, g = decode_eval_tags(v.tags), v.tags.get
            t.add_row(v.version, ",".join(v.aliases), num(e["blended"], e["blended_ci"]), num(e["closed"]),
                      num(e["open"]), e["open_metric"] or "-", e["engine"] or "-",
                      "-" if e["cost_usd_per_hour"] is None else f"{e['cost_usd_per_hour']:.2f}",
                      g("promotion.verdict") or g("promotion.decision") or "-", g("promotion.status", "-"),
                      g("spec_hash", "-"))
        Console().print(t)

    @registry_app.command("audit")
    def audit_cmd(name: str = typer.Argument(...)) -> None:
        """The audit log (register / decide / promote / rollback entries, who, when, why) as JSON lines."""
        from lexforge.registry import audit_log

        for entry in audit_log(name):
            print(json.dumps(entry, sort_keys=True))

    @registry_app.command("resolve")
    def resolve_cmd(uri: str = typer.Argument(..., help="models:/NAME@ALIAS, models:/NAME/VERSION or NAME")) -> None:
        """Download a registered version and print its servable paths (base model + adapter) as JSON."""
        from lexforge.registry import RegistryError, resolve_servable

        try:
            s = resolve_servable(uri if uri.startswith("models:/") else f"models:/{uri}@champion")
        except RegistryError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2)
        print(json.dumps({k: v for k, v in s.__dict__.items() if k != "tags"}, indent=2))
