"""LegalBench-layout eval tasks: ``tasks/<task>/{train,test}.tsv`` + ``base_prompt.txt`` with ``{{column}}``
placeholders. Only ``test.tsv`` rows are ever scored (held out); ``train.tsv`` is read for the label set.

``load_task`` uses ``lexforge.data.load_legalbench_task`` when that module provides it and falls back to the
small loader here, so either implementation can be swapped in without touching the scorer.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


class TaskError(ValueError):
    """An eval task directory is malformed; the message names the file, line and what to fix."""


@dataclass
class EvalTask:
    name: str
    path: Path
    base_prompt: str
    test_rows: list[dict[str, str]]
    train_rows: list[dict[str, str]] = field(default_factory=list)

    def render(self, row: dict[str, str]) -> str:
        return render_prompt(self.base_prompt, row)

    def labels(self) -> list[str]:
        """Distinct gold answers over train+test (the closed label set), in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.train_rows + self.test_rows:
            seen.setdefault(r["answer"].strip(), None)
        return list(seen)


def render_prompt(template: str, row: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: str(row[m.group(1)]), template)


def _read_tsv(path: Path, required: set[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise TaskError(f"{path}: missing (a LegalBench task needs train.tsv, test.tsv and base_prompt.txt)")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        cols = set(reader.fieldnames or [])
        missing = required - cols
        if missing:
            raise TaskError(f"{path}, line 1: header lacks column(s) {sorted(missing)}; found {sorted(cols)}")
        rows = []
        for i, row in enumerate(reader, start=2):
            if None in row or any(row.get(c) is None for c in required):
                raise TaskError(f"{path}, line {i}: wrong number of tab-separated fields "
                                f"(expected {len(reader.fieldnames or [])}); check for stray tabs or quotes")
            rows.append({k: (v if v is not None else "") for k, v in row.items()})
    return rows


def _load_local(path: str | Path, name: str | None = None) -> EvalTask:
    d = Path(path)
    if not d.is_dir():
        raise TaskError(f"eval task directory {d} not found (eval.suites[].path must point at tasks/<task>)")
    prompt_file = d / "base_prompt.txt"
    if not prompt_file.is_file():
        raise TaskError(f"{prompt_file}: missing")
    base_prompt = prompt_file.read_text(encoding="utf-8")
    needed = set(PLACEHOLDER.findall(base_prompt)) | {"answer"}
    test_rows = _read_tsv(d / "test.tsv", needed)
    if not test_rows:
        raise TaskError(f"{d / 'test.tsv'}: no rows to evaluate")
    train_file = d / "train.tsv"
    train_rows = _read_tsv(train_file, {"answer"}) if train_file.is_file() else []
    return EvalTask(name=name or d.name, path=d, base_prompt=base_prompt, test_rows=test_rows, train_rows=train_rows)


def load_task(path: str | Path, name: str | None = None) -> EvalTask:
    """Load one task directory. Prefers ``lexforge.data.load_legalbench_task`` when it exists."""
    try:
        from lexforge.data import load_legalbench_task  # type: ignore[attr-defined]
    except ImportError:
        return _load_local(path, name)
    t = load_legalbench_task(path)
    return _adapt(t, path, name)


def _adapt(t, path, name) -> EvalTask:
    """Map whatever ``lexforge.data.load_legalbench_task`` returns onto :class:`EvalTask`."""
    if isinstance(t, EvalTask):
        return t
    get = (lambda k, d=None: t.get(k, d)) if isinstance(t, dict) else (lambda k, d=None: getattr(t, k, d))
    base_prompt = get("base_prompt") or get("prompt_template")
    test_rows = get("test") or get("test_rows")
    train_rows = get("train") or get("train_rows") or []
    if base_prompt is None or test_rows is None:  # unknown shape: use our own loader rather than guess
        return _load_local(path, name)
    return EvalTask(name=name or get("name") or Path(path).name, path=Path(path), base_prompt=base_prompt,
                    test_rows=[dict(r) for r in test_rows], train_rows=[dict(r) for r in train_rows])
