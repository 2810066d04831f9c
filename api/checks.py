"""Upload-time validation of fine-tuning files with ``lexforge.data.sanitize.check_data``, the code of
``lexforge data check`` and of the sanitize step training runs, adapted to the API: ``FileCheck`` = ok + the
sanitize report + a one-paragraph summary used for ``status_details`` and in error messages.

A file is rejected when any row would be dropped for an error (invalid JSON, non-UTF-8, wrong shape,
unknown role, ...) or when no row is usable, as managed providers reject malformed files. Removals that
are not errors (exact/near duplicates) and repairs (role aliases, BOMs, whitespace) are accepted and
reported in ``status_details``. Length checks and the chat-template check (``template_cannot_render``) need
the base model's tokenizer, which is known only when a job names the model: they run in the job's data step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lexforge.data.sanitize import NOT_ERRORS, DataError, SanitizeOptions, check_data

MAX_LISTED_PROBLEMS = 20


@dataclass
class FileCheck:
    ok: bool
    report: dict[str, Any]
    summary: str


def _problems(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for reason, d in (report.get("dropped") or {}).items():
        if reason in NOT_ERRORS:
            continue
        details = {e["line"]: e["detail"] for e in d.get("examples", [])}
        for line in d.get("lines", []):
            out.append({"line": line, "reason": reason, "detail": details.get(line), "hint": d.get("hint")})
    return sorted(out, key=lambda p: p["line"])


def _summary(report: dict[str, Any], problems: list[dict[str, Any]]) -> str:
    head = f"{report.get('total', 0)} rows, {report.get('kept', 0)} usable, format {report.get('format')}"
    extras = [f"{d['count']} {reason.replace('_', ' ')} removed" for reason, d in (report.get("dropped") or {}).items()
              if reason in NOT_ERRORS]
    if report.get("repaired"):
        extras.append(f"{report['repaired']} repaired ({', '.join(report.get('repairs') or {})})")
    if extras:
        head += "; " + "; ".join(extras)
    if not problems:
        return head
    listed = "; ".join(f"line {p['line']}: {p['reason']}" + (f" ({p['detail']})" if p.get("detail") else "")
                       for p in problems[:MAX_LISTED_PROBLEMS])
    more = f" (+{len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
    return f"{head}; {len(problems)} invalid rows: {listed}{more}"


def check_file(path: Path, data_format: str = "auto") -> FileCheck:
    """Check an uploaded JSONL file (``path`` is a server-side temp file)."""
    try:
        full = check_data(path, SanitizeOptions(format=data_format))
    except DataError as e:
        msg = str(e).replace(str(path), "file")  # never echo server paths
        report = {"total": None, "kept": 0, "format": None,
                  "problems": [{"line": None, "reason": "undetectable_format", "detail": msg}]}
        return FileCheck(False, report, msg)
    report = {k: v for k, v in full.items() if k not in ("source", "row_log")}
    problems = _problems(report)
    if not report.get("kept") and not problems:
        problems = [{"line": None, "reason": "no_rows", "detail": "the file holds no training rows"}]
    report["problems"] = problems
    return FileCheck(ok=not problems, report=report, summary=_summary(report, problems))
