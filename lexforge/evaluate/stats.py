"""Statistics of the eval gate, pure functions on item vectors (numpy only).

- **Bootstrap intervals** of a suite score: resample the suite's items with replacement, recompute the
  score (balanced accuracy for closed suites, the mean item score for open ones), take the central
  ``confidence`` share of the resampled scores (percentile interval).
- **Paired bootstrap** of a difference: both models are scored on the *same* resampled items in every
  replicate, so the interval is of the difference itself, not of two separate scores.
- **Exact McNemar test** (a sign test on the items where the two models disagree) for closed suites.
- **Correlation** (Pearson and Spearman) for the judge's verbosity check.

Every random draw comes from ``numpy.random.default_rng((seed, crc32(suite name)))``: the same inputs give the
same intervals on every machine and every run.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

DEFAULT_SEED = 20240917
BETTER, WORSE, TIED = "better", "worse", "not distinguishable"


@dataclass(frozen=True)
class SuiteItems:
    """One model's results on one suite's items, in item order.

    ``values``: 1/0 correctness for closed suites, a 0..1 score for open suites. ``classes``: the gold label of
    each closed item as a small int (balanced accuracy is the mean recall over these classes); None for open.
    """

    kind: str  # "closed" | "open"
    ids: tuple[str, ...]
    values: np.ndarray
    classes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.values) or (self.classes is not None and len(self.classes) != len(self.values)):
            raise ValueError("ids, values and classes must have one entry per item")
        if not len(self.values):
            raise ValueError("a suite needs at least one item")

    @property
    def n(self) -> int:
        return len(self.values)


def closed_items(ids, correct, gold) -> SuiteItems:
    labels = sorted(set(gold))
    index = {g: i for i, g in enumerate(labels)}
    return SuiteItems("closed", tuple(ids), np.asarray(correct, dtype=np.float64),
                      np.asarray([index[g] for g in gold], dtype=np.int64))


def open_items(ids, scores) -> SuiteItems:
    return SuiteItems("open", tuple(ids), np.asarray(scores, dtype=np.float64))


def metric(items: SuiteItems, idx: np.ndarray) -> np.ndarray:
    """The suite score of each replicate; ``idx`` is (replicates, n) item indices (one row = one resample)."""
    vals = items.values[idx]
    if items.kind == "open" or items.classes is None:
        return vals.mean(axis=1)
    cls = items.classes[idx]
    recall_sum = np.zeros(idx.shape[0])
    present = np.zeros(idx.shape[0])
    for c in np.unique(items.classes):
        mask = cls == c
        total = mask.sum(axis=1)
        hits = (vals * mask).sum(axis=1)
        recall_sum += np.where(total > 0, hits / np.maximum(total, 1), 0.0)
        present += total > 0
    return recall_sum / present


def point(items: SuiteItems) -> float:
    """The suite score on all items (balanced accuracy / mean), equal to :mod:`lexforge.evaluate.scoring`'s."""
    return float(metric(items, np.arange(items.n)[None, :])[0])


def resample_indices(n: int, samples: int, seed: int, name: str) -> np.ndarray:
    """(samples, n) bootstrap item indices, reproducible from (seed, suite name)."""
    rng = np.random.default_rng((int(seed), zlib.crc32(name.encode())))
    return rng.integers(0, n, size=(samples, n))


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [a, 1.0 - a])
    return float(lo), float(hi)


def bootstrap_samples(items: SuiteItems, samples: int, seed: int, name: str) -> np.ndarray:
    return metric(items, resample_indices(items.n, samples, seed, name))


def interval(items: SuiteItems, confidence: float, samples: int = 2000, seed: int = DEFAULT_SEED,
             name: str = "") -> tuple[float, float]:
    """Bootstrap percentile interval of one suite score."""
    return percentile_interval(bootstrap_samples(items, samples, seed, name), confidence)


def aligned(a: SuiteItems, b: SuiteItems) -> tuple[SuiteItems, SuiteItems]:
    """``b`` reordered to ``a``'s item order. Raises ValueError when the two are not the same items."""
    if a.kind != b.kind:
        raise ValueError(f"one model scored the suite as {a.kind}, the other as {b.kind}")
    if a.ids == b.ids:
        return a, b
    if len(set(a.ids)) != a.n or set(a.ids) != set(b.ids):
        raise ValueError(f"the two models were scored on different items ({a.n} vs {b.n} items, "
                         f"{len(set(a.ids) ^ set(b.ids))} not in both)")
    pos = {i: k for k, i in enumerate(b.ids)}
    order = np.asarray([pos[i] for i in a.ids])
    return a, SuiteItems(b.kind, a.ids, b.values[order], None if b.classes is None else b.classes[order])


def paired_delta_samples(new: SuiteItems, old: SuiteItems, samples: int, seed: int, name: str) -> np.ndarray:
    """Bootstrap replicates of score(new) - score(old), both on the same resampled items."""
    new, old = aligned(new, old)
    if old.classes is not None and new.classes is not None and not np.array_equal(old.classes, new.classes):
        raise ValueError("the two models were scored against different gold answers")
    idx = resample_indices(new.n, samples, seed, name)
    return metric(new, idx) - metric(old, idx)


def verdict(lo: float, hi: float, eps: float = 1e-12) -> str:
    """better: the whole interval of the difference is above 0; worse: below 0; else not distinguishable."""
    if lo > eps:
        return BETTER
    if hi < -eps:
        return WORSE
    return TIED


def mcnemar_exact(new_correct, old_correct) -> dict:
    """Exact two-sided McNemar test: among items where exactly one model is right, is either side more often
    the right one than a fair coin would be? ``p_value`` = P(a split at least this uneven | no difference)."""
    new = np.asarray(new_correct, dtype=bool)
    old = np.asarray(old_correct, dtype=bool)
    if new.shape != old.shape:
        raise ValueError("McNemar needs the same items for both models")
    only_new = int(np.sum(new & ~old))
    only_old = int(np.sum(~new & old))
    n = only_new + only_old
    if n == 0:
        p = 1.0
    else:
        k = min(only_new, only_old)
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"only_new_right": only_new, "only_old_right": only_old, "p_value": float(p)}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as scipy.stats.rankdata."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def correlation(x, y) -> dict:
    """Pearson and Spearman correlation of two equally long vectors (None where undefined: constant input)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("correlation needs two vectors of the same length")
    return {"pearson": _pearson(x, y), "spearman": _pearson(_ranks(x), _ranks(y)) if len(x) else None,
            "n": int(len(x))}
