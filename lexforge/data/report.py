"""Render a sanitize report: a rich table for the terminal and Markdown for Prefect artifacts."""

from __future__ import annotations

from typing import Any

#: note -> what it means (notes are observations on kept rows, not changes: see docs/data.md)
NOTES = {"name_ignored_by_template": "the chat template does not render message `name`s: training will not see them"}


def _lines(lines: list[int], truncated: bool, limit: int = 12) -> str:
    shown = ", ".join(map(str, lines[:limit]))
    more = len(lines) > limit or truncated
    return shown + (", ..." if more else "")


def report_markdown(report: dict) -> str:
    """Markdown summary of a sanitize report (for ``prefect.artifacts.create_markdown_artifact``)."""
    out = [
        f"## Data report: `{report['source']}`",
        "",
        f"- format: **{report['format']}**{' (detected)' if report.get('format_detected') else ''}",
        f"- rows: **{report['total']}** total, **{report['kept']}** kept, **{report['repaired']}** repaired, "
        f"**{report['dropped_total']}** dropped",
        f"- source sha256: `{report['source_sha256']}`",
        f"- sanitized sha256: `{report['sanitized_sha256']}`",
    ]
    if report.get("tokenizer"):
        out.append(f"- tokenizer: `{report['tokenizer']}` (chat template: {'yes' if report['chat_template'] else 'no'})")
    ts = report.get("token_stats_train") or report.get("token_stats")
    if ts:
        out.append(f"- tokens: {ts['total_tokens']} total over {ts['rows']} rows; p50 {ts['p50']}, p95 {ts['p95']}, "
                   f"max {ts['max']}")
    if report["dropped"]:
        out += ["", "| dropped: reason | rows | lines | example | what to do |", "|---|---:|---|---|---|"]
        for reason, d in report["dropped"].items():
            ex = d["examples"][0]["detail"].replace("|", "\\|") if d["examples"] else ""
            out.append(f"| {reason} | {d['count']} | {_lines(d['lines'], d['lines_truncated'])} | {ex} | {d['hint']} |")
    if report["repairs"]:
        out += ["", "| repair | rows | lines |", "|---|---:|---|"]
        for kind, r in report["repairs"].items():
            out.append(f"| {kind} | {r['rows']} | {_lines(r['lines'], r['rows'] > len(r['lines']))} |")
    if report.get("notes"):
        out += ["", "| note (row kept unchanged) | rows | lines | meaning |", "|---|---:|---|---|"]
        for kind, r in report["notes"].items():
            out.append(f"| {kind} | {r['rows']} | {_lines(r['lines'], r['rows'] > len(r['lines']))} | "
                       f"{NOTES.get(kind, '')} |")
    return "\n".join(out) + "\n"


def print_report(report: dict, console: Any = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(stderr=True)
    ts = report.get("token_stats_train") or report.get("token_stats")
    console.print(f"[bold]{escape(str(report['source']))}[/]: format [cyan]{report['format']}[/]"
                  f"{' (detected)' if report.get('format_detected') else ''}; "
                  f"{report['total']} rows: [green]{report['kept']} kept[/], [yellow]{report['repaired']} repaired[/], "
                  f"[red]{report['dropped_total']} dropped[/]")
    if report["dropped"]:
        t = Table(title="dropped rows")
        for c in ("reason", "rows", "lines", "example", "what to do"):
            t.add_column(c, overflow="fold")
        for reason, d in report["dropped"].items():
            ex = escape(d["examples"][0]["detail"]) if d["examples"] else ""  # details quote user data
            t.add_row(reason, str(d["count"]), _lines(d["lines"], d["lines_truncated"]), ex, escape(d["hint"]))
        console.print(t)
    if report["repairs"]:
        t = Table(title="repairs (row kept)")
        for c in ("repair", "rows", "lines"):
            t.add_column(c)
        for kind, r in report["repairs"].items():
            t.add_row(kind, str(r["rows"]), _lines(r["lines"], r["rows"] > len(r["lines"])))
        console.print(t)
    if report.get("notes"):
        t = Table(title="notes (row kept unchanged)")
        for c in ("note", "rows", "lines", "meaning"):
            t.add_column(c, overflow="fold")
        for kind, r in report["notes"].items():
            t.add_row(kind, str(r["rows"]), _lines(r["lines"], r["rows"] > len(r["lines"])), NOTES.get(kind, ""))
        console.print(t)
    if ts:
        tok = escape(str(report.get("tokenizer")))
        console.print(f"tokens ({tok}): {ts['total_tokens']} total, {ts['rows']} rows, "
                      f"p50 {ts['p50']}, p95 {ts['p95']}, max {ts['max']}")
    elif report.get("tokenizer") is None:
        console.print("[yellow]no tokenizer: token lengths were not checked[/]")
