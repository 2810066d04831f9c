"""Promotion policy (``spec.promotion``), pure functions on eval reports: no MLflow, no I/O.

The challenger is compared with a **baseline**: the current champion, or, when there is none, the base model
it was fine-tuned from (same suites, same prompts, same decoding, same engine). The comparison is paired,
item by item (:func:`lexforge.evaluate.compare.compare`), and the gate promotes only when

- the blended score is **distinguishably better** at ``confidence`` (the whole paired-bootstrap interval of
  the difference lies above 0) and the difference is at least ``min_improvement``; a challenger that is not
  distinguishable from the baseline is promoted only with ``allow_ties``;
- no suite drops by more than ``max_suite_regression``;
- both were scored the same way (open metric, engine, suite files, items);
- with ``require_not_costlier``, it does not cost more per hour.

Every check yields a reason starting PASS / FAIL / INFO, with the numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lexforge.evaluate import compare, stats

EPS = 1e-9


@dataclass
class PromotionDecision:
    name: str
    challenger: str
    champion: str | None
    promote: bool
    reasons: list[str]  # each starts with PASS / FAIL / INFO
    scores: dict = field(default_factory=dict)  # {"candidate", "champion", "base"}: compare.summary(...) or None
    policy: dict = field(default_factory=dict)
    decided_at: str = ""
    baseline: str | None = None  # "champion" | "base": what the challenger was compared with
    verdict: str | None = None  # better | worse | not distinguishable (blended, vs the baseline)
    comparison: dict | None = None  # compare.compare(candidate, baseline) without bootstrap replicates

    def failed_reasons(self) -> list[str]:
        return [r for r in self.reasons if r.startswith("FAIL")]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        from lexforge.registry.views import decision_markdown

        return decision_markdown(self)


def _d(report) -> dict | None:
    if report is None:
        return None
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def _ci(ci) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def baseline_name(kind: str | None, report: dict | None) -> str:
    if kind == "base":
        return "the base model"
    label = (report or {}).get("label")
    return f"champion ({label})" if label and label != "champion" else "the champion"


def evaluate_policy(policy, challenger, baseline, *, baseline_kind: str = "champion",
                    baseline_label: str | None = None) -> tuple[bool, list[str], dict | None]:
    """Decide on two eval reports (dicts or EvalReports with per-item results). ``baseline_label`` names the
    baseline in the reasons (e.g. "champion v3").

    Returns (promote, reasons, comparison); ``comparison`` is :func:`lexforge.evaluate.compare.compare` of the
    challenger against the baseline (None when there is nothing to compare)."""
    ch, bl = _d(challenger), _d(baseline)
    if ch is None or ch.get("blended") is None:
        return False, ["FAIL challenger has no blended eval score (register it with an eval report)"], None
    if bl is None:
        if baseline_kind == "base":
            return False, ["FAIL no report of the base model to compare with: evaluate it on the same suites "
                           "(`lexforge eval SPEC --baseline`, or the retrain flow does it) or promote with --force"], None
        return False, ["FAIL no baseline report to compare with"], None
    who = baseline_label or baseline_name(baseline_kind, bl)
    conf = policy.confidence
    reasons: list[str] = []
    ok = True
    if (ch.get("open_metric") or "None") != (bl.get("open_metric") or "None"):
        ok = False
        reasons.append(f"FAIL open suites scored differently (challenger {ch.get('open_metric')}, {who} "
                       f"{bl.get('open_metric')}): scores are not comparable; re-evaluate both the same way")
    if ch.get("engine") and bl.get("engine") and ch["engine"] != bl["engine"]:
        ok = False
        reasons.append(f"FAIL scored by different engines (challenger {ch['engine']}, {who} {bl['engine']}): "
                       "re-evaluate both with the same eval.engine")
    comp = compare.compare(ch, bl, conf, policy.bootstrap_samples)
    for p in comp["problems"]:
        ok = False
        reasons.append(f"FAIL not comparable item by item: {p}")
    for s in comp["only_old"]:
        ok = False
        reasons.append(f"FAIL suite {s}: {who} has a score but the challenger was not evaluated on it")
    for s in comp["only_new"]:
        reasons.append(f"INFO suite {s}: only the challenger was evaluated on it (not part of the comparison)")

    b = comp["blended"]
    if b is None:
        ok = False
        reasons.append(f"FAIL no suite could be compared item by item with {who}")
    else:
        n_items = sum(comp["suites"][s]["n"] for s in b["suites"])
        head = (f"blended {b['new']:.4f} vs {who} {b['old']:.4f}: {_signed(b['delta'])}, {conf:.0%} interval "
                f"{_ci(b['ci'])} (paired bootstrap over the same {n_items} items)")
        v = b["verdict"]
        if v == stats.BETTER and b["delta"] + EPS >= policy.min_improvement:
            reasons.append(f"PASS {head}: better")
        elif v == stats.BETTER:
            ok = False
            reasons.append(f"FAIL {head}: better, but by less than min_improvement {policy.min_improvement:.4f}")
        elif v == stats.TIED and policy.allow_ties:
            reasons.append(f"PASS {head}: not distinguishable at {conf:.0%}; promoted because promotion.allow_ties "
                           "is on")
        elif v == stats.TIED:
            ok = False
            reasons.append(f"FAIL {head}: not distinguishable at {conf:.0%}, so the difference may be chance; "
                           "a challenger must be distinguishably better (or set promotion.allow_ties)")
        else:
            ok = False
            reasons.append(f"FAIL {head}: worse")
    for name, r in sorted(comp["suites"].items()):
        drop = r["old"] - r["new"]
        fine = drop <= policy.max_suite_regression + EPS
        ok &= fine
        test = ""
        if r.get("mcnemar"):
            m = r["mcnemar"]
            test = (f"; exact McNemar p={m['p_value']:.3g} ({m['only_new_right']} items only the challenger got "
                    f"right, {m['only_old_right']} only {who})")
        reasons.append(f"{'PASS' if fine else 'FAIL'} suite {name}: {r['new']:.4f} vs {r['old']:.4f} "
                       f"({_signed(-drop)}, {conf:.0%} interval {_ci(r['ci'])}: {r['verdict']}{test}; "
                       f"max allowed drop {policy.max_suite_regression:.4f})")
    if policy.require_not_costlier:
        cc = ((ch.get("cost") or {}).get("usd_per_hour"))
        pc = ((bl.get("cost") or {}).get("usd_per_hour"))
        if cc is None or pc is None:
            ok = False
            reasons.append("FAIL require_not_costlier is set but serving cost is unknown for "
                           + ("challenger" if cc is None else who) + " (evaluate with --cost-per-hour or the planner)")
        else:
            cheap = cc <= pc + EPS
            ok &= cheap
            reasons.append(f"{'PASS' if cheap else 'FAIL'} cost ${cc:.2f}/h vs {who} ${pc:.2f}/h (must not be costlier)")
    for label, rep in (("challenger", ch), (who, bl)):
        for name, s in sorted((rep.get("suites") or {}).items()):
            if s.get("judge_failures"):
                reasons.append(f"INFO suite {name}: the judge did not answer {s['judge_failures']} of {s['n']} "
                               f"items for {label}; each counts as a failure (score 0)")
            rho = (s.get("length_bias") or {}).get("spearman")
            if label == "challenger" and rho is not None and rho > 0.5:
                reasons.append(f"INFO suite {name}: judge scores rise with answer length (Spearman {rho:+.2f}); "
                               "check the judge for verbosity bias")
    return bool(ok), reasons, comp
