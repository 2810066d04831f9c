"""Scoring without a model: LegalBench-style normalised exact match and balanced accuracy for closed tasks,
reference-overlap (token F1, ROUGE-L) for open tasks when no judge is configured.

Normalisation follows LegalBench's ``evaluation.normalize``: strip punctuation and surrounding whitespace,
lower-case. A generation is reduced to the label it starts with (first token, or the option letter of a
multiple-choice answer such as ``C``, ``(c)``, ``C.`` or ``Option C``); anything else counts as wrong.
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict

_PUNCT = str.maketrans("", "", string.punctuation)
_OPTION = re.compile(r"^\s*(?:option|answer)?\s*[:\-]?\s*\(?([a-z])\)?(?:[\s.:)\-]|$)", re.IGNORECASE)


def normalize(text: str) -> str:
    """LegalBench normalisation: drop punctuation, collapse whitespace, lower-case."""
    return " ".join(str(text).translate(_PUNCT).split()).lower()


def first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def extract_label(generation: str, labels: list[str]) -> str | None:
    """The label a generation commits to, or None. ``labels`` are the task's gold answers."""
    line = first_line(generation)
    norm_labels = {normalize(l): l for l in labels}
    if all(len(n) == 1 and n.isalpha() for n in norm_labels):  # option letters (multiple choice)
        m = _OPTION.match(line)
        if m and m.group(1).lower() in norm_labels:
            return norm_labels[m.group(1).lower()]
        return None
    norm = normalize(line)
    if norm in norm_labels:
        return norm_labels[norm]
    # longest label that the answer starts with, on a token boundary ("yes, because ..." -> "Yes")
    for n in sorted(norm_labels, key=len, reverse=True):
        if n and (norm == n or norm.startswith(n + " ")):
            return norm_labels[n]
    return None


def is_match(pred: str | None, gold: str) -> bool:
    """The gate's verdict on one closed item: a label was extracted and it equals the gold answer (normalised)."""
    return pred is not None and normalize(pred) == normalize(gold)


def closed_item(generation: str, gold: str, labels: list[str]) -> tuple[str | None, bool]:
    """(extracted label, correct) of one generation, exactly as the gate scores a closed item. The GRPO rewards
    (:mod:`lexforge.train.rewards`) call this too, so training optimises the metric that promotes."""
    pred = extract_label(generation, labels)
    return pred, is_match(pred, gold)


def balanced_accuracy(gold: list[str], pred: list[str | None]) -> float:
    """Mean per-class recall over the gold classes (sklearn's balanced_accuracy_score, no adjustment)."""
    if not gold:
        raise ValueError("balanced_accuracy of an empty set")
    hits: dict[str, int] = defaultdict(int)
    totals = Counter(gold)
    for g, p in zip(gold, pred):
        if is_match(p, g):
            hits[g] += 1
    return sum(hits[c] / n for c, n in totals.items()) / len(totals)


def balanced_weights(gold: list[str]) -> list[float]:
    """Per-item weights w_i = N / (K x n_c(i)) (N items, K gold classes, n_c items of class c), so that
    mean(w_i x correct_i) == balanced_accuracy(gold, pred): the per-item form of the metric."""
    if not gold:
        raise ValueError("balanced_weights of an empty set")
    totals = Counter(gold)
    return [len(gold) / (len(totals) * totals[g]) for g in gold]


def exact_match(gold: list[str], pred: list[str | None]) -> float:
    if not gold:
        raise ValueError("exact_match of an empty set")
    return sum(is_match(p, g) for g, p in zip(gold, pred)) / len(gold)


def _tokens(text: str) -> list[str]:
    return normalize(text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1 after normalisation."""
    p, r = _tokens(prediction), _tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of normalised tokens)."""
    p, r = _tokens(prediction), _tokens(reference)
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def weighted_mean(pairs: list[tuple[float, float]]) -> float | None:
    """Weighted mean of (score, weight) pairs; None when there is nothing (or no weight) to average."""
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        return None
    return sum(s * w for s, w in pairs) / total


def blend(closed: float | None, open_: float | None, closed_weight: float) -> float | None:
    """Leaderboard blend: closed_weight * closed + (1 - closed_weight) * open; one side alone if the other is absent."""
    if closed is None and open_ is None:
        return None
    if open_ is None:
        return closed
    if closed is None:
        return open_
    return closed_weight * closed + (1.0 - closed_weight) * open_
