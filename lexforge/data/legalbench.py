"""LegalBench task loader: ``tasks/<task>/{base_prompt.txt, train.tsv, test.tsv}``.

``base_prompt.txt`` holds ``{{column}}`` placeholders filled from a test row; ``train.tsv`` rows are the
few-shot pool, ``test.tsv`` the scored rows (with an ``answer`` column).
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lexforge.data.sanitize import DataError

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_ .-]+?)\s*\}\}")


@dataclass
class LegalBenchTask:
    name: str
    path: Path
    base_prompt: str
    train: list[dict[str, str]] = field(default_factory=list)
    test: list[dict[str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    @property
    def placeholders(self) -> list[str]:
        return list(dict.fromkeys(PLACEHOLDER.findall(self.base_prompt)))

    def render(self, row: dict[str, str]) -> str:
        """The base prompt with every ``{{column}}`` replaced by the row's value."""

        def fill(m: re.Match) -> str:
            col = m.group(1)
            if col not in row:
                raise DataError(f"{self.path / 'base_prompt.txt'}: placeholder {{{{{col}}}}} has no column in the "
                                f"row (columns: {', '.join(row)})")
            return row[col]

        return PLACEHOLDER.sub(fill, self.base_prompt)

    def prompts(self) -> list[str]:
        return [self.render(r) for r in self.test]


def _read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file; the first line must be a tab-separated header")
            header = [h.strip() for h in header]
            rows = []
            for lineno, rec in enumerate(reader, 2):
                if not any(c.strip() for c in rec):
                    continue
                if len(rec) != len(header):
                    raise DataError(f"{path}:{lineno}: {len(rec)} fields but the header has {len(header)} "
                                    f"({', '.join(header)}); check for stray tabs or unquoted newlines")
                rows.append({h: v.replace("\r\n", "\n").strip() for h, v in zip(header, rec)})
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); re-export the file as UTF-8") from None
    return header, rows


def load_legalbench_task(task_dir: str | Path) -> LegalBenchTask:
    """Load one LegalBench-layout task; placeholders are checked against the test columns up front."""
    d = Path(task_dir)
    if not d.is_dir():
        raise DataError(f"LegalBench task directory {d} not found")
    bp = d / "base_prompt.txt"
    test_path = d / "test.tsv"
    for p in (bp, test_path):
        if not p.is_file():
            raise DataError(f"{d}: missing {p.name} (a LegalBench task needs base_prompt.txt and test.tsv)")
    base_prompt = bp.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    columns, test = _read_tsv(test_path)
    train = _read_tsv(d / "train.tsv")[1] if (d / "train.tsv").is_file() else []
    task = LegalBenchTask(name=d.name, path=d, base_prompt=base_prompt, train=train, test=test, columns=columns)
    missing = [p for p in task.placeholders if p not in columns]
    if missing:
        raise DataError(f"{bp}: placeholders {', '.join('{{' + m + '}}' for m in missing)} are not columns of "
                        f"{test_path.name} ({', '.join(columns)})")
    if "answer" not in columns:
        raise DataError(f"{test_path}: no 'answer' column; eval needs the expected answer for each test row")
    return task


def find_legalbench_tasks(root: str | Path) -> list[Path]:
    """Task directories under ``root`` (``root`` itself if it is a task)."""
    root = Path(root)
    if (root / "base_prompt.txt").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("base_prompt.txt"))
