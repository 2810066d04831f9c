"""``lexforge data check|sanitize``: report on a training file, or sanitize + split + store it by digest."""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)
data_app = typer.Typer(help="Validate, repair and sanitize training data; store it by content digest.",
                       no_args_is_help=True)

FORMAT_STAGE = {"chat": "sft", "preference": "dpo", "grpo": "grpo"}


@contextmanager
def _progress() -> Iterator[object]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as p:
        yield p


def _fail(msg: str, code: int = 1) -> None:
    console.print(f"[red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)  # one line: greppable
    raise typer.Exit(code)


def _tokenizer(name: Optional[str], required: bool):
    """Load --tokenizer; without it use the default base model if it is already installed (check) or at all."""
    from lexforge.config import DEFAULT_BASE_MODEL
    from lexforge.data.tokens import load_tokenizer
    from lexforge.models import models_dir

    if name is None and not required and not (models_dir() / DEFAULT_BASE_MODEL).is_dir():
        return None
    try:
        with console.status(f"loading tokenizer {name or DEFAULT_BASE_MODEL}"):
            return load_tokenizer(name or DEFAULT_BASE_MODEL)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear message
        _fail(f"{e}\n  give a model directory with --tokenizer/--model, or run `lexforge models bootstrap`")


def _check_input(path: Path) -> None:
    if "://" not in str(path) and not path.is_file():
        _fail(f"{path}: input file not found")


@data_app.command("check")
def check(
    input: str = typer.Argument(..., help="JSONL file to check (path, file:// or s3://bucket/key)"),
    format: str = typer.Option("auto", "--format", "-f", help="auto | chat | preference | grpo"),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "--model", "-m",
                                            help="Tokenizer/model dir or name [default base model if installed]"),
    max_seq_len: int = typer.Option(1024, help="Max tokens per row (chat template applied)"),
    on_too_long: str = typer.Option("drop", help="drop | truncate"),
    strict: bool = typer.Option(False, help="Fail on the first bad row (exit 1) instead of reporting it"),
    no_dedupe: bool = typer.Option(False, "--no-dedupe", help="Keep exact and near duplicates"),
    report: Optional[Path] = typer.Option(None, "--report", help="Also save the JSON report here"),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report on stdout"),
) -> None:
    """Report what sanitizing would repair and drop (with line numbers); writes nothing but --report."""
    from lexforge.data.report import print_report
    from lexforge.data.sanitize import DataError, SanitizeOptions, check_data
    from lexforge.data.store import fetch_source

    if "://" not in input:
        _check_input(Path(input))
    try:
        opts = SanitizeOptions(format=format, max_seq_len=max_seq_len, on_too_long=on_too_long, strict=strict,
                               dedupe=not no_dedupe, near_dedupe=not no_dedupe)
    except DataError as e:
        _fail(str(e), 2)
    tok = _tokenizer(tokenizer, required=False)
    with tempfile.TemporaryDirectory(prefix="lexforge-check-") as tmp:
        try:
            src = fetch_source(input, Path(tmp))
            with _progress() as p:
                rep = check_data(src, opts, tokenizer=tok, progress=p)  # the API's upload check runs this too
        except (DataError, FileNotFoundError, ValueError) as e:
            _fail(str(e))
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")
    if as_json:
        print(json.dumps(rep, indent=2))
    else:
        print_report(rep, console)


@data_app.command("sanitize")
def sanitize(
    input: str = typer.Argument(..., help="JSONL file (path, file:// or s3://bucket/key)"),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (train/heldout JSONL, report, lineage)"),
    store: str = typer.Option("", "--store", help="Store root: local dir or s3://bucket/prefix [$LEXFORGE_HOME/store]"),
    s3_endpoint_url: Optional[str] = typer.Option(None, help="S3 API endpoint (MinIO, moto)"),
    format: str = typer.Option("auto", "--format", "-f", help="auto | chat | preference | grpo"),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", "--model", "-m",
                                            help="Tokenizer/model dir or name [default base model]"),
    max_seq_len: int = typer.Option(1024, help="Max tokens per row (chat template applied)"),
    on_too_long: str = typer.Option("drop", help="drop | truncate"),
    strict: bool = typer.Option(False, help="Fail on the first bad row (exit 1) instead of dropping it"),
    no_dedupe: bool = typer.Option(False, "--no-dedupe", help="Keep exact and near duplicates"),
    holdout: float = typer.Option(0.1, help="Held-out fraction (deterministic by --seed)"),
    seed: int = typer.Option(42, help="Split seed"),
    validation: Optional[str] = typer.Option(None, help="Separate validation file instead of a held-out split"),
    name: str = typer.Option("data-sanitize", help="Job name recorded in lineage"),
) -> None:
    """Sanitize, split and store a dataset under its sha256; prints digests and store URIs (JSON on stdout)."""
    from lexforge.config import SpecError, spec_from_dict
    from lexforge.data.prepare import prepare_dataset
    from lexforge.data.report import print_report
    from lexforge.data.sanitize import DataError, sniff_format
    from lexforge.data.store import fetch_source

    if "://" not in input:
        _check_input(Path(input))
        input = str(Path(input).resolve())
    fmt = format
    try:
        if fmt == "auto":
            fmt = sniff_format(fetch_source(input, out, s3_endpoint_url))
        spec = spec_from_dict({
            "name": name, "stage": FORMAT_STAGE.get(fmt, "sft"),
            "model": {"tokenizer": tokenizer} if tokenizer else {},
            "data": {"train": input, "validation": validation, "format": fmt, "max_seq_len": max_seq_len,
                     "on_too_long": on_too_long, "strict": strict, "dedupe": not no_dedupe,
                     "near_dedupe": not no_dedupe, "holdout_fraction": holdout, "seed": seed},
            "storage": {"root": store, "s3_endpoint_url": s3_endpoint_url},
        }, source="command line")
    except (SpecError, DataError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    tok = _tokenizer(tokenizer, required=True)
    try:
        with _progress() as p:
            prepared = prepare_dataset(spec, tokenizer=tok, work_dir=out, progress=p)
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    print_report(prepared.report, console)
    print(json.dumps({"format": prepared.format, "digests": prepared.digests, "uris": prepared.uris,
                      "train_path": str(prepared.train_path),
                      "heldout_path": str(prepared.heldout_path) if prepared.heldout_path else None,
                      "token_stats": prepared.token_stats}, indent=2))


@data_app.command("prepare")
def prepare(
    spec_path: Path = typer.Argument(..., help="Job spec YAML (its data, model and storage sections are used)"),
    override: list[str] = typer.Option([], "--set", "-s", help="dotted.key=value override (repeatable)"),
    work_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Work dir [$LEXFORGE_HOME/work/<name>/data]"),
) -> None:
    """Run exactly what training runs first: prepare_dataset(spec) -> report, digests, store URIs, lineage."""
    from lexforge.config import SpecError, load_spec
    from lexforge.data.prepare import prepare_dataset
    from lexforge.data.report import print_report
    from lexforge.data.sanitize import DataError

    try:
        spec = load_spec(spec_path, override)
    except SpecError as e:
        _fail(str(e), 2)
    try:
        with _progress() as p:
            prepared = prepare_dataset(spec, work_dir=work_dir, progress=p)
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    print_report(prepared.report, console)
    print(json.dumps({"format": prepared.format, "digests": prepared.digests, "uris": prepared.uris,
                      "train_path": str(prepared.train_path),
                      "heldout_path": str(prepared.heldout_path) if prepared.heldout_path else None,
                      "token_stats": prepared.token_stats}, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
