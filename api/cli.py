"""``lexforge api``: run the OpenAI-compatible fine-tuning API (registered by lexforge/cli.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("api")
    def api(
        host: str = typer.Option("127.0.0.1", help="Bind address (put a TLS proxy in front for remote clients)"),
        port: int = typer.Option(8400, help="Port"),
        log_level: str = typer.Option("info", help="uvicorn log level"),
    ) -> None:
        """Serve the OpenAI-compatible fine-tuning API (/v1/files, /v1/fine_tuning/jobs, chat proxied to serve).

        Needs LEXFORGE_API_KEYS (comma-separated Bearer keys) and PREFECT_API_URL (set from the running
        `lexforge up` stack when absent); LEXFORGE_SERVE_URL enables publishing and chatting with results.
        """
        import uvicorn
        from rich.console import Console

        from api.app import create_app
        from api.settings import ApiSettings

        console = Console(stderr=True)
        try:
            from lexforge import stack

            stack.activate_env()
        except Exception:  # no stack state: rely on the environment
            pass
        settings = ApiSettings()
        try:
            application = create_app(settings)
        except ValueError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2)
        console.print(f"lexforge API on http://{host}:{port}/v1 (Prefect {settings.prefect_api_url or 'unset'}, "
                      f"deployment {settings.deployment}, serve {settings.serve_url or 'unset'}, "
                      f"{len(settings.api_keys)} API key(s))")
        uvicorn.run(application, host=host, port=port, log_level=log_level)
