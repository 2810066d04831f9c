"""Promotion policy (``spec.promotion``): the challenger must beat the champion's blended score by
``min_improvement``, may not regress any suite by more than ``max_suite_regression``, must have been scored
the same way (open_metric), and — with ``require_not_costlier`` — may not cost more per hour.
The decision, with every reason (passed and failed), is recorded on the version and as JSON/Markdown."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lexforge.registry.core import CHAMPION, _audit, actor, aliases_of, client, get_version, now

EPS = 1e-9


class PromotionRefused(RuntimeError):
    pass


@dataclass
class PromotionDecision:
    name: str
    challenger: str
    champion: str | None
    promote: bool
    reasons: list[str]  # each starts with PASS / FAIL / INFO
    scores: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    decided_at: str = ""

    def failed_reasons(self) -> list[str]:
        return [r for r in self.reasons if r.startswith("FAIL")]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        return decision_markdown(self)


def _scores(info) -> dict:
    t = info.tags
    def f(k):
        return float(t[k]) if t.get(k) not in (None, "", "None") else None
    return {"version": info.version, "blended": f("eval.blended"), "closed": f("eval.closed"), "open": f("eval.open"),
            "open_metric": t.get("eval.open_metric"), "cost_usd_per_hour": f("cost.usd_per_hour"),
            "suites": {n: s["score"] for n, s in json.loads(t.get("eval.suites") or "{}").items()}}


def evaluate_policy(policy, challenger: dict, champion: dict | None) -> tuple[bool, list[str]]:
    """Pure decision on score dicts (as produced by ``_scores``); returns (promote, reasons)."""
    reasons: list[str] = []
    if challenger["blended"] is None:
        return False, ["FAIL challenger has no blended eval score (register it with an eval report)"]
    if champion is None:
        return True, [f"PASS no current champion; challenger blended={challenger['blended']:.4f} becomes champion"]
    ok = True
    ch, cp = challenger["blended"], champion["blended"]
    if cp is None:
        reasons.append("INFO champion has no blended score; comparing suites only")
    else:
        delta = ch - cp
        need = max(policy.min_improvement, 0.0)
        beats = delta > EPS and delta + EPS >= need
        ok &= beats
        reasons.append(f"{'PASS' if beats else 'FAIL'} blended {ch:.4f} vs champion {cp:.4f}: delta {delta:+.4f} "
                       f"(must be > 0 and >= min_improvement {need:.4f})")
    if (challenger["open_metric"] or "None") != (champion["open_metric"] or "None"):
        ok = False
        reasons.append(f"FAIL open suites scored differently (challenger {challenger['open_metric']}, champion "
                       f"{champion['open_metric']}): scores are not comparable; re-evaluate both the same way")
    for suite, old in sorted(champion["suites"].items()):
        new = challenger["suites"].get(suite)
        if new is None:
            ok = False
            reasons.append(f"FAIL suite {suite}: champion has a score ({old:.4f}) but the challenger was not evaluated on it")
            continue
        drop = old - new
        fine = drop <= policy.max_suite_regression + EPS
        ok &= fine
        reasons.append(f"{'PASS' if fine else 'FAIL'} suite {suite}: {new:.4f} vs {old:.4f} (drop {max(drop, 0):.4f}, "
                       f"max allowed {policy.max_suite_regression:.4f})")
    if policy.require_not_costlier:
        cc, pc = challenger["cost_usd_per_hour"], champion["cost_usd_per_hour"]
        if cc is None or pc is None:
            ok = False
            reasons.append("FAIL require_not_costlier is set but serving cost is unknown for "
                           + ("challenger" if cc is None else "champion") + " (evaluate with --cost-per-hour or the planner)")
        else:
            cheap = cc <= pc + EPS
            ok &= cheap
            reasons.append(f"{'PASS' if cheap else 'FAIL'} cost ${cc:.2f}/h vs champion ${pc:.2f}/h (must not be costlier)")
    return bool(ok), reasons


def decide_promotion(spec, name: str | None, challenger_version: str | int, *, record: bool = True,
                     tracking_uri: str | None = None) -> PromotionDecision:
    """Compare a registered challenger against the current @champion under ``spec.promotion``.

    With ``record`` the decision goes onto the challenger version (tags) and its run (decision JSON/Markdown
    artifacts) and into the audit log."""
    from lexforge.config import PromotionSpec

    policy = spec.promotion if spec is not None else PromotionSpec()
    c = client(tracking_uri or (spec.tracking.mlflow_uri if spec is not None else None))
    name = name or policy.registered_model
    chal = get_version(c, name, challenger_version)
    champ_v = aliases_of(c, name).get(CHAMPION)
    champ = get_version(c, name, champ_v) if champ_v else None
    ch_s, cp_s = _scores(chal), (_scores(champ) if champ else None)
    if champ_v == chal.version:
        promote_, reasons = False, [f"FAIL v{chal.version} is already the champion"]
    else:
        promote_, reasons = evaluate_policy(policy, ch_s, cp_s)
    d = PromotionDecision(name=name, challenger=chal.version, champion=champ_v, promote=promote_, reasons=reasons,
                          scores={"challenger": ch_s, "champion": cp_s}, policy=policy.model_dump(),
                          decided_at=now())
    if record:
        record_decision(c, d)
    return d


def record_decision(c, d: PromotionDecision) -> None:
    v = d.challenger
    for k, val in {"promotion.decision": "promote" if d.promote else "reject", "promotion.decided_at": d.decided_at,
                   "promotion.decided_by": actor(None), "promotion.compared_to": d.champion or "",
                   "promotion.reasons": json.dumps(d.reasons)[:90000]}.items():
        c.set_model_version_tag(d.name, v, k, val)
    run_id = c.get_model_version(d.name, v).run_id
    if run_id:
        with tempfile.TemporaryDirectory() as td:
            stamp = d.decided_at.replace(":", "").replace("+", "Z")
            (Path(td) / f"decision-{stamp}.json").write_text(json.dumps(d.to_dict(), indent=2))
            (Path(td) / f"decision-{stamp}.md").write_text(decision_markdown(d))
            c.log_artifacts(run_id, td, artifact_path="promotion")
    _audit(c, d.name, "decide", v, d.champion, actor(None),
           ("promote: " if d.promote else "reject: ") + "; ".join(d.failed_reasons() or d.reasons), run_id)


def _f(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def decision_markdown(d: PromotionDecision) -> str:
    """Markdown for a Prefect artifact / PR comment: verdict, score table, every reason."""
    head = (f"## {d.name}: v{d.challenger} {'PROMOTE' if d.promote else 'KEEP CHAMPION'}"
            f" (champion: {('v' + d.champion) if d.champion else 'none'})")
    ch, cp = d.scores.get("challenger") or {}, d.scores.get("champion") or {}
    rows = ["| metric | challenger | champion |", "|---|---|---|"]
    for k in ("blended", "closed", "open"):
        rows.append(f"| {k} | {_f(ch.get(k))} | {_f(cp.get(k))} |")
    for s in sorted(set(ch.get("suites", {})) | set(cp.get("suites", {}))):
        rows.append(f"| suite {s} | {_f(ch.get('suites', {}).get(s))} | {_f(cp.get('suites', {}).get(s))} |")
    rows.append(f"| open scored by | {ch.get('open_metric') or '-'} | {cp.get('open_metric') or '-'} |")
    rows.append(f"| $/hour | {_f(ch.get('cost_usd_per_hour'), 2)} | {_f(cp.get('cost_usd_per_hour'), 2)} |")
    pol = d.policy
    policy = (f"Policy: min_improvement={pol.get('min_improvement')}, max_suite_regression="
              f"{pol.get('max_suite_regression')}, require_not_costlier={pol.get('require_not_costlier')}")
    return "\n".join([head, "", *rows, "", policy, "", "Reasons:", *[f"- {r}" for r in d.reasons],
                      "", f"Decided at {d.decided_at}."])
