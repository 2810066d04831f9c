"""``lexforge serve``: run the Ray Serve + vLLM application (OpenAI-compatible) on the local or given Ray cluster."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def parse_adapters(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--adapter {item!r}: use NAME=PATH (a PEFT LoRA directory)")
        if not Path(path).expanduser().is_dir():
            raise typer.BadParameter(f"--adapter {item!r}: directory {path} does not exist")
        out[name] = path
    return out


def parse_champion(value: str, spec):
    """``registry`` | ``file:PATH`` | ``dir:PATH`` | ``none``."""
    from lexforge.serve.settings import ChampionSourceConfig

    kind, _, arg = value.partition(":")
    tracking = spec.tracking.resolved_uri()
    if kind == "registry":
        if not tracking:
            raise typer.BadParameter("--champion registry needs MLflow: set tracking.mlflow_uri or "
                                     "$MLFLOW_TRACKING_URI (or run `lexforge up`)")
        return ChampionSourceConfig(kind="registry", registered_model=arg or spec.promotion.registered_model,
                                    tracking_uri=tracking)
    if kind in ("file", "dir"):
        if not arg:
            raise typer.BadParameter(f"--champion {kind}:PATH needs a path")
        return ChampionSourceConfig(kind=kind, path=str(Path(arg).expanduser().resolve()))
    if kind == "none":
        return ChampionSourceConfig(kind="none")
    raise typer.BadParameter(f"--champion {value!r}: use registry[:NAME], file:PATH, dir:PATH or none")


def _stack_ray() -> str | None:
    """The embedded stack's Ray address when its head is running (so `lexforge serve` after `lexforge up`
    deploys onto it, and `lexforge down` stops the app with it)."""
    try:
        from lexforge import stack

        cfg = stack.load_config()
        return cfg.ray_address if stack.read_pid(cfg, "ray") else None
    except Exception:
        return None


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        spec_path: Optional[Path] = typer.Argument(None, help="Job spec YAML (model.base, serve.*, promotion.*)"),
        override: list[str] = typer.Option([], "--set", "-s", help="dotted.key=value spec override (repeatable)"),
        base: Optional[str] = typer.Option(None, help="Base model dir/name [spec model.base]"),
        adapter: list[str] = typer.Option([], "--adapter", "-a", help="NAME=PATH LoRA adapter (repeatable)"),
        champion: str = typer.Option("auto", help="Champion source: registry[:NAME] | file:PATH | dir:PATH | none "
                                                  "[auto = registry when MLflow is configured, else none]"),
        host: str = typer.Option("127.0.0.1", help="HTTP bind address"),
        port: int = typer.Option(8000, help="HTTP port"),
        ray_address: Optional[str] = typer.Option(None, help="Ray address [spec resources.ray_address, "
                                                             "$RAY_ADDRESS, else a local Ray]"),
        keys_file: Optional[Path] = typer.Option(None, help="File with API keys (one per line), in addition to "
                                                           "$LEXFORGE_API_KEYS"),
        accelerator: str = typer.Option("auto", help="auto | cpu | gpu"),
        num_replicas: int = typer.Option(1, help="Engine replicas (one engine each)"),
        max_num_seqs: int = typer.Option(32, help="vLLM max concurrent sequences per replica"),
        detach: bool = typer.Option(False, help="Deploy and return (the app keeps running on the Ray cluster)"),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Ray/vLLM logs on the terminal instead of "
                                                                   "$LEXFORGE_HOME/logs/serve.log"),
    ) -> None:
        """Serve the base model, LoRA adapters by name and the @champion under spec.serve.served_name
        (OpenAI-compatible API on Ray Serve + vLLM)."""
        from lexforge.config import SpecError, load_spec, spec_from_dict
        from lexforge import auth
        from lexforge.serve.settings import settings_from_spec

        try:
            spec = load_spec(spec_path, override) if spec_path else spec_from_dict(
                {"name": "serve", "data": {"train": "-"}}, "<serve defaults>", override)
            digests = auth.load_key_digests(auth.API_KEYS_ENV, keys_file)
            admin = auth.load_key_digests(auth.ADMIN_KEYS_ENV)
        except (SpecError, auth.AuthConfigError) as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2)
        if not digests:
            console.print(f"[red]no API keys: set ${auth.API_KEYS_ENV}=key1,key2 or --keys-file; every route "
                          f"except /health needs one[/]")
            raise typer.Exit(2)
        champ = None if champion == "auto" else parse_champion(champion, spec)
        settings = settings_from_spec(spec, base_model=base, adapters=parse_adapters(adapter), champion=champ,
                                      api_key_digests=digests, admin_key_digests=admin, accelerator=accelerator,
                                      num_replicas=num_replicas, max_num_seqs=max_num_seqs)
        address = ray_address or spec.resources.ray_address or os.environ.get("RAY_ADDRESS") or _stack_ray()
        if detach and not address:
            console.print("[red]--detach needs a Ray cluster that outlives this command: start the embedded stack "
                          "(`lexforge up`) or pass --ray-address[/]")
            raise typer.Exit(2)
        from lexforge.config import lexforge_home
        from lexforge.console import route_library_logs

        log_file = None if verbose else route_library_logs(lexforge_home() / "logs" / "serve.log")
        from lexforge.serve.app import run_server

        if log_file:
            route_library_logs(log_file)  # again: importing Ray Serve installed its own terminal handlers
        with console.status(f"starting vLLM on Ray Serve ({Path(settings.base_model).name}) on "
                            f"{address or 'a local Ray'}"):
            run_server(settings, host=host, port=port, ray_address=address)
        if log_file:
            route_library_logs(log_file)
            console.print(f"Ray / vLLM logs of this command: {log_file}")
        url = f"http://{host}:{port}"
        console.print(f"[green]serving[/] {url}/v1  models: {settings.base_name}, {settings.served_name}"
                      f"{', ' + ', '.join(settings.adapters) if settings.adapters else ''}  "
                      f"(keys: {len(digests)}, admin keys: {len(admin) or 'same as API keys'})")
        print(url)
        if detach:
            return
        import signal

        from ray import serve

        def _stop(signum, frame):  # SIGTERM (lexforge down, a process manager) stops the app like Ctrl-C
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping")
        finally:
            serve.delete("lexforge")
