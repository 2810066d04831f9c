"""Pluggable GRPO rewards for legal tasks. ``register_reward(name, fn)`` adds one; the spec picks it by name
(``hyperparams.grpo_reward``). A reward maps (completion, reference, rubric) to a float in [0, 1]."""

from __future__ import annotations

import re
from typing import Any, Callable

RewardFn = Callable[[str, str, Any], float]
_REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str, fn: RewardFn) -> None:
    _REWARDS[name] = fn


def get_reward(name: str) -> RewardFn:
    if name not in _REWARDS:
        raise KeyError(f"unknown GRPO reward {name!r}; known: {sorted(_REWARDS)}")
    return _REWARDS[name]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s.]", " ", text.lower())).strip(" .")


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", text.lower())


def exact_match(completion: str, reference: str, rubric: Any = None) -> float:
    """1.0 when the answer equals the reference (case/punctuation-insensitive) or leads with it (e.g. 'Yes. ...')."""
    c, r = _norm(completion), _norm(reference)
    if not r:
        return 0.0
    return 1.0 if c == r or c.startswith(r + " ") else 0.0


def reference_overlap(completion: str, reference: str, rubric: Any = None) -> float:
    """Unigram F1 between completion and reference (ROUGE-1-like)."""
    c, r = _tokens(completion), _tokens(reference)
    if not c or not r:
        return 0.0
    from collections import Counter

    common = sum((Counter(c) & Counter(r)).values())
    if common == 0:
        return 0.0
    p, rec = common / len(c), common / len(r)
    return 2 * p * rec / (p + rec)


_CITATION = re.compile(r"\b(s\.|section|sch\.|schedule|art\.|article|reg\.|regulation)\s*\d+", re.I)


def rubric_reward(completion: str, reference: str, rubric: Any = None) -> float:
    """Rubric for legal answers.

    ``rubric`` may be a dict ``{"must_include": [...], "must_not_include": [...], "cite": true}`` or a list of
    required phrases. Score = share of required phrases present, minus 0.5 per forbidden phrase, with a
    citation criterion (a statutory reference like ``s.2``) when ``cite`` is true. Without a rubric: half
    reference overlap, half "cites a provision".
    """
    text = completion.lower()
    if not rubric:
        return 0.5 * reference_overlap(completion, reference) + 0.5 * (1.0 if _CITATION.search(completion) else 0.0)
    if isinstance(rubric, list):
        rubric = {"must_include": rubric}
    must = [m.lower() for m in rubric.get("must_include", [])]
    crit = [1.0 if m in text else 0.0 for m in must]
    if rubric.get("cite"):
        crit.append(1.0 if _CITATION.search(completion) else 0.0)
    score = sum(crit) / len(crit) if crit else reference_overlap(completion, reference)
    score -= 0.5 * sum(1 for m in rubric.get("must_not_include", []) if m.lower() in text)
    return max(0.0, min(1.0, score))


register_reward("exact_match", exact_match)
register_reward("reference_overlap", reference_overlap)
register_reward("rubric", rubric_reward)


def check_reward_specs(specs) -> None:
    """Fail when the spec is loaded on a reward name that is not registered."""
    for i, r in enumerate(specs):
        if r.name not in _REWARDS:
            raise ValueError(f"grpo.rewards[{i}].name={r.name!r} is not a known reward; known: {sorted(_REWARDS)}")
