"""Upload-time validation of fine-tuning files.

The authoritative checker is lexforge.data's; this module only adapts its report to the API
(``FileCheck``: ok + report + a one-paragraph summary for ``status_details`` and error messages).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_LISTED_PROBLEMS = 20


@dataclass
class FileCheck:
    ok: bool
    report: dict[str, Any]
    summary: str


def _summary(report: dict[str, Any]) -> str:
    problems = report.get("problems") or []
    head = (f"{report.get('total', 0)} rows, {report.get('kept', 0)} usable"
            f"{', format ' + report['format'] if report.get('format') else ''}")
    if not problems:
        return head
    listed = "; ".join(f"line {p.get('line')}: {p.get('reason')}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = f" (+{len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return f"{head}; {len(problems)} invalid: {listed}{more}"


def check_file(path: Path, strict: bool = True) -> FileCheck:
    """Check a JSONL fine-tuning file. ``strict``: any invalid row makes the file invalid (as with
    managed providers); otherwise only files with no usable row are rejected."""
    report = _run_checker(path)
    usable = report.get("kept", 0) > 0
    ok = usable and (not strict or not report.get("problems"))
    if not usable and not report.get("problems"):
        report.setdefault("problems", []).append({"line": None, "reason": "file has no training rows"})
    return FileCheck(ok=ok, report=report, summary=_summary(report))


def _run_checker(path: Path) -> dict[str, Any]:
    return _structural_check(path)


_ROLES = {"system", "user", "assistant", "tool", "developer"}


def _row_problem(row: Any) -> tuple[str | None, str | None]:
    """(format, problem) of one parsed row."""
    if not isinstance(row, dict):
        return None, f"row is a JSON {type(row).__name__}, expected an object"
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            return "chat", "'messages' must be a non-empty list"
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                return "chat", f"messages[{i}] is not an object"
            if m.get("role") not in _ROLES:
                return "chat", f"messages[{i}].role {m.get('role')!r} is not one of {sorted(_ROLES)}"
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                return "chat", f"messages[{i}].content must be a non-empty string"
        if not any(m.get("role") == "assistant" for m in msgs):
            return "chat", "no assistant message to learn from"
        return "chat", None
    if {"chosen", "rejected"} <= row.keys() or "preferred_output" in row:
        return "preference", None
    if "prompt" in row and "reference" in row:
        return "grpo", None
    return None, f"unknown row shape with keys {sorted(row)[:8]}; expected 'messages' (chat)"


def _structural_check(path: Path) -> dict[str, Any]:
    total = kept = 0
    problems: list[dict[str, Any]] = []
    formats: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            total += 1
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                problems.append({"line": lineno, "reason": f"not valid JSON ({e.__class__.__name__}: {e})"})
                continue
            fmt, problem = _row_problem(row)
            if fmt:
                formats[fmt] = formats.get(fmt, 0) + 1
            if problem:
                problems.append({"line": lineno, "reason": problem})
            else:
                kept += 1
    fmt = max(formats, key=formats.get) if formats else None
    return {"total": total, "kept": kept, "format": fmt, "problems": problems, "checker": "lexforge.api.checks"}
