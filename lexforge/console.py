"""What a person sees on the terminal: one live progress line per phase, library logs in files, a summary.

- :class:`Phase` shows one live line per phase (spinner, title, the latest status, elapsed time) on stderr and
  writes everything the phase produces to its log file (ANSI codes stripped); it ends with one line saying
  how the phase went and where its log is. With ``verbose`` the raw output is streamed instead.
- :func:`run_phase` runs a subprocess as a phase (its stdout+stderr go to the phase's log).
- :func:`route_library_logs` sends the Python loggers of Ray, vLLM, transformers ... of this process to a
  file instead of the terminal.
- :func:`clean_line` is the text rule for anything copied into another log (Prefect's): no ANSI codes, a
  tqdm bar rewritten with carriage returns reduced to its last state.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable

#: CSI (colours, cursor moves), OSC (titles, links) and the other two-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
#: A tqdm-style bar: "desc:  42%|████▏     | 5/12 [00:01<00:02, 3.1it/s]".
_BAR = re.compile(r"\d{1,3}%\|[^|]*\|")
#: Loggers of the libraries whose output belongs in a log file, not on the terminal.
LIBRARY_LOGGERS = ("ray", "vllm", "transformers", "torch", "datasets", "peft", "trl", "accelerate", "deepspeed",
                   "DeepSpeed", "filelock", "urllib3", "httpx", "mlflow", "alembic", "py.warnings")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def clean_line(text: str) -> str:
    """``text`` without ANSI escapes; of a line rewritten with ``\\r`` (a progress bar) only the last state."""
    text = strip_ansi(text).rstrip("\r\n")
    if "\r" in text:
        parts = [p for p in text.split("\r") if p.strip()]
        text = parts[-1] if parts else ""
    return text.rstrip()


def is_progress_bar(text: str) -> bool:
    return bool(_BAR.search(text))


def progress_bar_done(text: str) -> bool:
    m = _BAR.search(text)
    return bool(m) and m.group(0).startswith("100%")


def status_text(line: str, width: int = 90) -> str | None:
    """The short status a phase shows for one output line (None: not worth showing)."""
    text = clean_line(line).strip()
    if not text or is_progress_bar(text):
        return None
    for sep in (" | ", " - "):  # Prefect: "12:00:01.123 | INFO    | Task run 'train-1' - progress: ..."
        if sep in text:
            text = text.rsplit(sep, 1)[-1].strip() or text
    return text if len(text) <= width else text[: width - 1] + "…"


class Phase:
    """One phase of a command: a live status line on ``console`` and a log file with everything it printed."""

    def __init__(self, console, title: str, log_path: Path, verbose: bool = False):
        self.console, self.title, self.log_path, self.verbose = console, title, Path(log_path), verbose
        self.status = ""
        self._progress = None
        self._task = None
        self._log = None
        self._t0 = 0.0

    def __enter__(self) -> "Phase":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")
        self._t0 = time.monotonic()
        if self.verbose:
            self.console.rule(f"[bold]{self.title}")
        else:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            # bound to the terminal stream itself, so capture() can take sys.stdout/sys.stderr away
            live = Console(file=self.console.file, stderr=self.console.stderr)
            if live.is_terminal:  # a pipe or a file gets the result lines only
                self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                                          TextColumn("[dim]{task.fields[status]}"), TimeElapsedColumn(),
                                          console=live, transient=True)
                self._progress.start()
                self._task = self._progress.add_task(self.title, total=None, status="")
        return self

    def line(self, text: str) -> None:
        """Record one line of the phase's output (and show it as the status when it says something)."""
        if self._log is not None:
            self._log.write(clean_line(text) + "\n")
            self._log.flush()
        elif self._t0:  # a late write after the phase ended (e.g. a logger that kept our stream): still logged
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(clean_line(text) + "\n")
            return
        if self.verbose:
            self.console.print(text.rstrip("\n"), markup=False, highlight=False)
            return
        short = status_text(text)
        if short and self._progress is not None:
            self.status = short
            self._progress.update(self._task, status=short)

    @contextmanager
    def capture(self):
        """This process's own ``print``/tqdm/warnings output (sys.stdout, sys.stderr) goes to the phase, not the
        terminal, while in the block (a no-op with ``verbose``)."""
        if self.verbose:
            yield
            return
        writer = _LineWriter(self.line)
        with redirect_stdout(writer), redirect_stderr(writer):
            try:
                yield
            finally:
                writer.flush_line()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._log is not None:
            if exc is not None:
                self._log.write(f"lexforge: phase failed: {type(exc).__name__}: {exc}\n")
            self._log.close()
            self._log = None
        took = time.monotonic() - self._t0
        if exc is None:
            self.console.print(f"[green]✓[/] {self.title} [dim]({took:.0f}s, log: {self.log_path})[/]",
                               highlight=False)
        else:
            self.console.print(f"[red]✗ {self.title} failed after {took:.0f}s[/]; last lines of "
                               f"{self.log_path}:", highlight=False)
            self.console.print(tail(self.log_path, 25), markup=False, highlight=False)


class _LineWriter(io.TextIOBase):
    """A text stream that hands complete lines to ``sink`` (a tqdm bar's ``\r`` updates stay in one line)."""

    def __init__(self, sink: Callable[[str], None]):
        super().__init__()
        self._sink, self._buf = sink, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._sink(line)
        return len(text)

    def flush_line(self) -> None:
        if self._buf:
            self._sink(self._buf)
            self._buf = ""

    def isatty(self) -> bool:
        return False


def tail(path: Path, n: int) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_phase(cmd: list[str], env: dict[str, str], phase: Phase, cwd: str | Path | None = None) -> str:
    """Run ``cmd`` inside ``phase`` (stdout+stderr to its log and status line); returns its output. On a
    non-zero exit raises RuntimeError naming the phase and its log. An interrupted run is terminated."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, errors="replace")
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            phase.line(line)
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: never leave a flow run behind that keeps submitting jobs
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"{phase.title} failed (exit {proc.returncode}); full log: {phase.log_path}")
    return "".join(lines)


class _CleanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return clean_line(super().format(record))


def route_library_logs(log_path: Path, names: tuple[str, ...] = LIBRARY_LOGGERS) -> Path:
    """Send the ``names`` loggers (and their children) of this process to ``log_path``, not the terminal:
    their terminal handlers are removed, one file handler is added, propagation stops. Returns the path."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(_CleanFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    known = list(logging.root.manager.loggerDict)
    for name in names:
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if not _is_terminal_handler(h)]
        lg.addHandler(handler)
        lg.propagate = False
        for child in known:
            if child.startswith(name + "."):
                cl = logging.getLogger(child)
                cl.handlers = [h for h in cl.handlers if not _is_terminal_handler(h)]
                if not cl.propagate and not cl.handlers:
                    cl.addHandler(handler)
    return log_path


def _is_terminal_handler(h: logging.Handler) -> bool:
    """A handler writing to the terminal, or to a Phase's captured stream (created while a phase captured)."""
    stream = getattr(h, "stream", None)
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and \
        (stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) or isinstance(stream, _LineWriter))


def echo_to(phase: Phase) -> Callable[[str], None]:
    """An ``echo`` callback (as :func:`lexforge.stack.up` takes) that feeds ``phase``."""
    return lambda msg: phase.line(strip_ansi(str(msg)))
