"""Report-level statistics: intervals of a report's suite and blended scores, and the paired comparison of two
reports item by item (see :mod:`lexforge.evaluate.stats` for the methods). Pure functions on report dicts
(``EvalReport.to_dict()``); nothing here runs a model."""

from __future__ import annotations

import numpy as np

from lexforge.evaluate import scoring, stats

DEFAULT_SAMPLES = 2000


def _as_dict(report) -> dict:
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


def item_id(item: dict, position: int) -> str:
    return str(item.get("index", position))


def suite_items(suite: dict) -> stats.SuiteItems | None:
    """A report suite's per-item results as :class:`~lexforge.evaluate.stats.SuiteItems` (None without items,
    e.g. a summary read back from registry tags)."""
    items = suite.get("items") or []
    if not items:
        return None
    ids = [item_id(it, i) for i, it in enumerate(items)]
    if len(set(ids)) != len(ids):  # no usable index column: items are identified by position
        ids = [str(i) for i in range(len(items))]
    if suite.get("kind") == "closed":
        correct = [it["correct"] if "correct" in it else
                   (it.get("prediction") is not None and scoring.normalize(it["prediction"]) == scoring.normalize(it["answer"]))
                   for it in items]
        return stats.closed_items(ids, correct, [scoring.normalize(it["answer"]) for it in items])
    return stats.open_items(ids, [item_score(it) for it in items])


def item_score(item: dict) -> float:
    """An open item's 0..1 score: the judge's normalised verdict (0 when it failed or did not parse) or the
    reference overlap (token F1)."""
    if "score" in item:
        return float(item["score"])
    if "verdict" in item:
        return float(item["verdict"].get("normalised") or 0.0)
    return float(item.get("token_f1", 0.0))


def _blend(arrays: dict[str, np.ndarray], suites: dict[str, dict], closed_weight: float):
    def wmean(kind):
        pairs = [(arrays[n], float(s.get("weight", 1.0))) for n, s in suites.items() if s.get("kind") == kind
                 and n in arrays]
        total = sum(w for _, w in pairs)
        if not pairs or total <= 0:
            return None
        return sum(a * w for a, w in pairs) / total

    c, o = wmean("closed"), wmean("open")
    if c is None and o is None:
        return None
    if o is None:
        return c
    if c is None:
        return o
    return closed_weight * c + (1.0 - closed_weight) * o


def intervals(report, confidence: float, samples: int = DEFAULT_SAMPLES, seed: int = stats.DEFAULT_SEED) -> dict:
    """``{"suites": {name: [lo, hi]}, "blended": [lo, hi] | None}``: bootstrap intervals at ``confidence``.
    Suites without item results get no interval (and then neither does the blended score)."""
    d = _as_dict(report)
    out: dict = {"confidence": confidence, "samples": samples, "seed": seed, "suites": {}, "blended": None}
    boot: dict[str, np.ndarray] = {}
    for name, s in (d.get("suites") or {}).items():
        items = suite_items(s)
        if items is None:
            continue
        boot[name] = stats.bootstrap_samples(items, samples, seed, name)
        out["suites"][name] = list(stats.percentile_interval(boot[name], confidence))
    if boot and len(boot) == len(d.get("suites") or {}):
        blended = _blend(boot, d["suites"], float(d.get("closed_weight", 0.5)))
        if blended is not None:
            out["blended"] = list(stats.percentile_interval(blended, confidence))
    return out


def compare(new, old, confidence: float, samples: int = DEFAULT_SAMPLES, seed: int = stats.DEFAULT_SEED) -> dict:
    """Paired comparison of report ``new`` against report ``old`` on the same items.

    Per common suite: the score difference, its paired-bootstrap interval and verdict (better / worse / not
    distinguishable at ``confidence``), and for closed suites the exact McNemar test. ``blended``: the same for
    the blended score over the suites both were scored on. ``problems``: why some pairing was impossible
    (different suite files, different items, no item results); a non-empty list means the two reports are
    not comparable as a whole."""
    n_d, o_d = _as_dict(new), _as_dict(old)
    n_s, o_s = n_d.get("suites") or {}, o_d.get("suites") or {}
    out: dict = {"new": n_d.get("label"), "old": o_d.get("label"), "confidence": confidence, "samples": samples,
                 "seed": seed, "suites": {}, "blended": None, "problems": [],
                 "only_new": sorted(set(n_s) - set(o_s)), "only_old": sorted(set(o_s) - set(n_s))}
    new_boot: dict[str, np.ndarray] = {}
    old_boot: dict[str, np.ndarray] = {}
    for name in sorted(set(n_s) & set(o_s)):
        a, b = n_s[name], o_s[name]
        if a.get("digest") and b.get("digest") and a["digest"] != b["digest"]:
            out["problems"].append(f"suite {name}: the suite files changed between the two evaluations "
                                   f"(digest {b['digest'][:12]} vs {a['digest'][:12]})")
            continue
        ia, ib = suite_items(a), suite_items(b)
        if ia is None or ib is None:
            who = " and ".join(lab for lab, i in ((n_d.get("label"), ia), (o_d.get("label"), ib)) if i is None)
            out["problems"].append(f"suite {name}: no per-item results for {who} (re-evaluate to compare item by item)")
            continue
        try:
            ia, ib = stats.aligned(ia, ib)
            idx = stats.resample_indices(ia.n, samples, seed, name)
        except ValueError as e:
            out["problems"].append(f"suite {name}: {e}")
            continue
        if ia.classes is not None and not np.array_equal(ia.classes, ib.classes):
            out["problems"].append(f"suite {name}: the two models were scored against different gold answers")
            continue
        new_boot[name], old_boot[name] = stats.metric(ia, idx), stats.metric(ib, idx)
        delta = stats.point(ia) - stats.point(ib)
        lo, hi = stats.percentile_interval(new_boot[name] - old_boot[name], confidence)
        row = {"kind": ia.kind, "n": ia.n, "new": stats.point(ia), "old": stats.point(ib), "delta": delta,
               "ci": [lo, hi], "verdict": stats.verdict(lo, hi)}
        if ia.kind == "closed":
            row["mcnemar"] = stats.mcnemar_exact(ia.values.astype(bool), ib.values.astype(bool))
        out["suites"][name] = row
    common = {n: n_s[n] for n in new_boot}
    if common:
        bn = _blend(new_boot, common, float(n_d.get("closed_weight", 0.5)))
        bo = _blend(old_boot, common, float(o_d.get("closed_weight", 0.5)))
        if bn is not None and bo is not None:
            pn = _blend({k: np.asarray([out["suites"][k]["new"]]) for k in common}, common,
                        float(n_d.get("closed_weight", 0.5)))
            po = _blend({k: np.asarray([out["suites"][k]["old"]]) for k in common}, common,
                        float(o_d.get("closed_weight", 0.5)))
            lo, hi = stats.percentile_interval(bn - bo, confidence)
            out["blended"] = {"new": float(pn[0]), "old": float(po[0]), "delta": float(pn[0] - po[0]),
                              "ci": [lo, hi], "verdict": stats.verdict(lo, hi), "suites": sorted(common)}
    return out


def summary(report, confidence: float, samples: int = DEFAULT_SAMPLES, seed: int = stats.DEFAULT_SEED) -> dict:
    """What the tables show of one model: scores with intervals, how it was scored, and its cost."""
    d = _as_dict(report)
    ci = intervals(d, confidence, samples, seed)
    cost = d.get("cost") or {}
    return {
        "label": d.get("label"), "blended": d.get("blended"), "blended_ci": ci["blended"], "closed": d.get("closed"),
        "open": d.get("open"), "open_metric": d.get("open_metric"), "engine": d.get("engine"),
        "usd_per_hour": cost.get("usd_per_hour"), "score_per_usd_hour": cost.get("score_per_usd_hour"),
        "suites": {n: {"kind": s.get("kind"), "score": s.get("score"), "n": s.get("n"), "ci": ci["suites"].get(n),
                       "judge_failures": s.get("judge_failures", 0), "length_bias": s.get("length_bias")}
                   for n, s in (d.get("suites") or {}).items()},
        "cache": (d.get("extra") or {}).get("cache"),
    }
