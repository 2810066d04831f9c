"""What people look at, rendered from a :class:`~lexforge.registry.policy.PromotionDecision` (or its dict):
base model, champion and candidate side by side per suite with intervals, the paired difference and its
verdict, cost and score per $/hour, and the decision. Pure functions; the demo's final table, the Prefect
artifact and the MLflow model version all use :func:`comparison_rows`."""

from __future__ import annotations

MODELS = (("base", "base model"), ("champion", "champion"), ("candidate", "candidate"))


def _d(decision) -> dict:
    return decision.to_dict() if hasattr(decision, "to_dict") else dict(decision)


def _score(x, ci=None, nd: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{nd}f}" + (f" [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]" if ci else "")


def _delta(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{r['delta']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"


def _money(x, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def difference_column(decision) -> str:
    d = _d(decision)
    conf = (d.get("policy") or {}).get("confidence")
    vs = "base model" if d.get("baseline") == "base" else "champion"
    return f"candidate - {vs}" + (f" ({conf:.0%} interval)" if conf else "")


def decision_text(decision) -> str:
    d = _d(decision)
    if d.get("promote"):
        return f"PROMOTE v{d.get('challenger')}"
    return f"KEEP {'v' + d['champion'] if d.get('champion') else 'no champion (the base model stays)'}"


def comparison_rows(decision) -> list[dict[str, str]]:
    """One row per suite, then blended, $/hour, blended per $/hour and the decision. Keys are the column
    titles: ``suite``, ``base model``, ``champion``, ``candidate``, the difference column
    (:func:`difference_column`) and ``verdict``. Every cell is a display string."""
    d = _d(decision)
    models = d.get("scores") or {}
    comp = d.get("comparison") or {}
    diff = difference_column(d)
    names: list[str] = []
    for key, _ in MODELS:
        for n in ((models.get(key) or {}).get("suites") or {}):
            if n not in names:
                names.append(n)

    def row(what: str, cell, delta: dict | None = None, verdict: str = "") -> dict[str, str]:
        out = {"suite": what}
        for key, title in MODELS:
            m = models.get(key)
            out[title] = cell(m) if m else "-"
        out[diff] = _delta(delta)
        out["verdict"] = verdict or ((delta or {}).get("verdict") or "")
        return out

    rows = []
    for n in names:
        kind = next(((models.get(k) or {}).get("suites", {}).get(n, {}).get("kind") for k, _ in MODELS
                     if n in ((models.get(k) or {}).get("suites") or {})), "")
        rows.append(row(f"{n} ({kind})",
                        lambda m, n=n: _score((m["suites"].get(n) or {}).get("score"), (m["suites"].get(n) or {}).get("ci")),
                        (comp.get("suites") or {}).get(n)))
    rows.append(row("blended", lambda m: _score(m.get("blended"), m.get("blended_ci")), comp.get("blended")))
    rows.append(row("$/hour (planner)", lambda m: _money(m.get("usd_per_hour"))))
    rows.append(row("blended per $/hour", lambda m: _money(m.get("score_per_usd_hour"), 4)))
    decision_row = {"suite": "decision", **{t: "" for _, t in MODELS}, diff: "", "verdict": decision_text(d)}
    rows.append(decision_row)
    return rows


def rows_markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def decision_markdown(decision) -> str:
    """Markdown for a Prefect artifact / the MLflow version: verdict, the side-by-side table, every reason."""
    d = _d(decision)
    vs = ("the base model (no champion yet)" if d.get("baseline") == "base"
          else f"champion v{d['champion']}" if d.get("champion") else "-")
    head = f"## {d.get('name')}: v{d.get('challenger')} {decision_text(d)} (compared with {vs})"
    pol = d.get("policy") or {}
    policy = (f"Policy: confidence={pol.get('confidence')}, allow_ties={pol.get('allow_ties')}, min_improvement="
              f"{pol.get('min_improvement')}, max_suite_regression={pol.get('max_suite_regression')}, "
              f"require_not_costlier={pol.get('require_not_costlier')}")
    explain = ("Scores are shown with their interval: the range the score would likely fall in on another set of "
               "questions like these. The difference column compares the candidate with the baseline on the same "
               "questions; only when its whole interval is above 0 is the candidate distinguishably better.")
    return "\n".join([head, "", rows_markdown(comparison_rows(d)), "", explain, "", policy, "", "Reasons:",
                      *[f"- {r}" for r in d.get("reasons") or []], "", f"Decided at {d.get('decided_at')}."])
