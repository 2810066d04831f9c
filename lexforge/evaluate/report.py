"""EvalReport: per-suite scores, closed/open/blended aggregates, judge provenance and the cost view."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EvalReport:
    label: str
    suites: dict[str, dict[str, Any]]
    closed: float | None
    open: float | None
    blended: float | None
    open_metric: str | None  # "judge" | "reference_overlap" | None (no open suites)
    judge: dict[str, Any] | None = None
    closed_weight: float = 0.5
    base_model: str = ""
    adapter: str | None = None
    engine: str = ""
    engine_fallback_reason: str | None = None
    chat_template: bool = False
    spec_hash: str = ""
    spec_name: str = ""
    cost: dict[str, Any] | None = None  # {"usd_per_hour", "source", "score_per_usd_hour", ...}
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"cache": {"key", "hit", ...}}
    confidence: float | None = None  # level of every "ci" in the report (spec promotion.confidence)
    blended_ci: list[float] | None = None  # bootstrap interval of the blended score
    settings: dict[str, Any] = field(default_factory=dict)  # engine / decoding / judge (lexforge.evaluate.identity)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalReport":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def suite_scores(self) -> dict[str, float]:
        return {n: s["score"] for n, s in self.suites.items() if s.get("score") is not None}

    def summary_line(self) -> str:
        parts = [f"{self.label}: blended={_fmt(self.blended)}", f"closed={_fmt(self.closed)}",
                 f"open={_fmt(self.open)} ({self.open_metric or '-'})"]
        if self.cost and self.cost.get("usd_per_hour"):
            parts.append(f"${self.cost['usd_per_hour']:.2f}/h score/($/h)={_fmt(self.cost.get('score_per_usd_hour'))}")
        return " ".join(parts)

    def to_markdown(self) -> str:
        return leaderboard_markdown([self], details=True)


def _fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def fmt_ci(score: float | None, ci, nd: int = 3) -> str:
    """``0.625 [0.500, 0.750]`` (score and its interval), ``-`` when there is no score."""
    if score is None:
        return "-"
    return f"{score:.{nd}f}" + (f" [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]" if ci else "")


def open_label(metric: str | None) -> str:
    return {"judge": "open (LLM judge)", "reference_overlap": "open (reference overlap, NOT a judge score)"}.get(
        metric or "", "open")


def leaderboard_markdown(reports: list[EvalReport], details: bool = False) -> str:
    """Models side by side: closed, open (labelled by how it was scored), blended, cost, score per $/hour."""
    metrics = {r.open_metric for r in reports if r.open_metric}
    lines = ["| model | closed | " + " | ".join(open_label(m) for m in sorted(metrics)) +
             (" | " if metrics else "") + "blended | $/hour | blended per $/hour |",
             "|---|---|" + "---|" * len(metrics) + "---|---|---|"]
    for r in reports:
        opens = [(_fmt(r.open) if r.open_metric == m else "-") for m in sorted(metrics)]
        cost = r.cost or {}
        usd = cost.get("usd_per_hour")
        lines.append(f"| {r.label} | {_fmt(r.closed)} | " + " | ".join(opens) + (" | " if opens else "") +
                     f"{fmt_ci(r.blended, r.blended_ci)} | {'-' if usd is None else f'{usd:.2f}'} | "
                     f"{_fmt(cost.get('score_per_usd_hour'), 4)} |")
    if details:
        for r in reports:
            level = f" ({r.confidence:.0%} interval)" if r.confidence else ""
            lines += ["", f"### {r.label}: per suite", "", f"| suite | kind | metric | score{level} | n | notes |",
                      "|---|---|---|---|---|---|"]
            for name, s in r.suites.items():
                notes = []
                if s.get("exact_match") is not None:
                    notes.append(f"exact match {s['exact_match']:.3f}")
                if s.get("invalid"):
                    notes.append(f"{s['invalid']} unparseable answers")
                if s.get("unparsed_verdicts"):
                    notes.append(f"{s['unparsed_verdicts']} unparseable judge verdicts (scored 0)")
                if s.get("judge_failures"):
                    notes.append(f"{s['judge_failures']} items the judge did not answer (scored 0)")
                bias = (s.get("length_bias") or {}).get("spearman")
                if bias is not None:
                    notes.append(f"judge score vs answer length: Spearman {bias:+.2f}"
                                 + (" (judge may favour long answers)" if bias > 0.5 else ""))
                lines.append(f"| {name} | {s['kind']} | {s['metric']} | {fmt_ci(s.get('score'), s.get('ci'))} | {s['n']} | "
                             f"{'; '.join(notes)} |")
            if r.judge:
                own = " (the platform's own served model)" if r.judge.get("source") == "platform" else ""
                lines += ["", f"Judge: `{r.judge['model']}` at {r.judge['base_url']}{own} (temperature 0)."]
            elif r.open_metric == "reference_overlap":
                lines += ["", "Open suites scored by reference overlap (token F1 vs the reference answer): no judge "
                              "was configured; this is not a judge score."]
            lines.append(f"Engine: {r.engine}" + (f" ({r.engine_fallback_reason})" if r.engine_fallback_reason else ""))
    return "\n".join(lines)
