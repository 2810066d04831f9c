"""Text rewards: the gate's own closed-task metrics (exact match, balanced accuracy: the very functions of
:mod:`lexforge.evaluate.scoring`), answer format, reference overlap and the legal rubric."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from lexforge.evaluate import scoring
from lexforge.train.rewards.citations import find_citations
from lexforge.train.rewards.core import (Fail, is_bool, is_regex, is_str, is_str_list, register_batch_reward,
                                         register_reward)


def label_set(params: dict, example: dict, gold: str | None = None) -> list[str] | None:
    """The closed label set of an item: ``params.labels``, else the row's ``labels``; the gold answer is added
    when missing (the gate's label set always holds every gold answer). None when neither is given."""
    labels = params.get("labels") or example.get("labels")
    if not labels:
        return None
    labels = [str(x).strip() for x in labels]
    if gold is not None and scoring.normalize(gold) not in {scoring.normalize(x) for x in labels}:
        labels.append(gold)
    return labels


def _gold(example: dict) -> str | None:
    ref = example.get("reference")
    return None if ref is None or not str(ref).strip() else str(ref).strip()


def gate_correct(completion: str, example: dict, params: dict | None = None) -> bool:
    """The gate's exact match of one completion: ``scoring.closed_item`` over the item's label set (or the
    reference alone for a free-form row: the first line must commit to the reference)."""
    gold = _gold(example)
    if gold is None:
        raise ValueError("the example has no reference")
    labels = label_set(params or {}, example, gold) or [gold]
    return scoring.closed_item(completion, gold, labels)[1]


def _exact_match(params: dict, context: dict):
    def run(completions: list[str], examples: list[dict]) -> list:
        out = []
        for c, ex in zip(completions, examples):
            if _gold(ex) is None:
                out.append(Fail("the example has no reference"))
            else:
                out.append(1.0 if gate_correct(c, ex, params) else 0.0)
        return out

    return run


def _balanced_accuracy(params: dict, context: dict):
    def run(completions: list[str], examples: list[dict]) -> list:
        golds = [_gold(ex) for ex in examples]
        ok = [j for j, g in enumerate(golds) if g is not None]
        out: list = [Fail("the example has no reference")] * len(completions)
        if not ok:
            return out
        weights = scoring.balanced_weights([golds[j] for j in ok])
        for w, j in zip(weights, ok):
            out[j] = w * (1.0 if gate_correct(completions[j], examples[j], params) else 0.0)
        return out

    return run


def format_checks(completion: str, example: dict, params: dict) -> list[bool] | None:
    """One bool per enabled format check, or None when no check applies to this item."""
    checks: list[bool] = []
    labels = label_set(params, example, _gold(example))
    if labels:
        checks.append(scoring.extract_label(completion, labels) is not None)
    if params.get("answer_prefix"):
        prefix = params["answer_prefix"].lower()
        checks.append(any(line.strip().lower().startswith(prefix) and line.strip()[len(prefix):].strip(" :\t")
                          for line in completion.splitlines()))
    if params.get("pattern"):
        checks.append(re.search(params["pattern"], completion) is not None)
    for sec in params.get("required_sections") or []:
        checks.append(any(line.strip().lstrip("#*-> \t").lower().startswith(sec.lower())
                          for line in completion.splitlines()))
    return checks or None


def _format(params: dict, context: dict):
    def run(completions: list[str], examples: list[dict]) -> list:
        out = []
        for c, ex in zip(completions, examples):
            checks = format_checks(c, ex, params)
            if checks is None:
                out.append(Fail("no format check applies: give params.labels (or a `labels` column), "
                                "answer_prefix, pattern or required_sections"))
            elif params.get("all_or_nothing"):
                out.append(1.0 if all(checks) else 0.0)
            else:
                out.append(sum(checks) / len(checks))
        return out

    return run


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", text.lower())


def exact_match(completion: str, reference: str, rubric: Any = None) -> float:
    """The gate's exact match of one free-form answer (its first line commits to the reference)."""
    return 1.0 if gate_correct(completion, {"reference": reference}) else 0.0


def reference_overlap(completion: str, reference: str, rubric: Any = None) -> float:
    """Unigram F1 between completion and reference (ROUGE-1-like)."""
    c, r = _tokens(completion), _tokens(reference)
    if not c or not r:
        return 0.0
    common = sum((Counter(c) & Counter(r)).values())
    if common == 0:
        return 0.0
    p, rec = common / len(c), common / len(r)
    return 2 * p * rec / (p + rec)


def rubric_reward(completion: str, reference: str, rubric: Any = None) -> float:
    """Rubric for legal answers.

    ``rubric`` may be a dict ``{"must_include": [...], "must_not_include": [...], "cite": true}`` or a list of
    required phrases. Score = share of required phrases present, minus 0.5 per forbidden phrase, with a
    citation criterion (a statutory reference like ``s.2``) when ``cite`` is true. Without a rubric: half
    reference overlap, half "cites a provision".
    """
    text = completion.lower()
    cites = 1.0 if find_citations(completion) else 0.0
    if not rubric or isinstance(rubric, str):
        return 0.5 * reference_overlap(completion, reference) + 0.5 * cites
    if isinstance(rubric, list):
        rubric = {"must_include": rubric}
    must = [m.lower() for m in rubric.get("must_include", [])]
    crit = [1.0 if m in text else 0.0 for m in must]
    if rubric.get("cite"):
        crit.append(cites)
    score = sum(crit) / len(crit) if crit else reference_overlap(completion, reference)
    score -= 0.5 * sum(1 for m in rubric.get("must_not_include", []) if m.lower() in text)
    return max(0.0, min(1.0, score))


_LABELS = {"labels": is_str_list}
register_batch_reward("exact_match", _exact_match, _LABELS,
                      doc="The gate's exact match (lexforge.evaluate.scoring.closed_item).")
register_batch_reward("balanced_accuracy", _balanced_accuracy, _LABELS,
                      doc="Per-item balanced accuracy: mean over the step == the gate's balanced_accuracy.")
register_batch_reward("format", _format, {"labels": is_str_list, "answer_prefix": is_str, "pattern": is_regex,
                                          "required_sections": is_str_list, "all_or_nothing": is_bool},
                      doc="Answer format: the gate can extract a label / prefix / pattern / sections.")
register_reward("reference_overlap", reference_overlap)
register_reward("rubric", rubric_reward)
