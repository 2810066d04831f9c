"""The GRPO reward registry and its composition: ``build_rewards(spec.grpo.rewards)`` -> a :class:`RewardSet`
that scores one step's completions (all at once, so batch-level rewards such as balanced accuracy are possible)
and returns a :class:`RewardBatch`: the weighted total per completion, each reward's value (None where it
failed) and the failure messages. A reward that fails on an item is reported, never a silent 0; a reward that
fails on every completion of a step raises :class:`RewardFailed`.

Light on purpose: ``check_reward_specs`` runs when a spec is loaded (no torch, no openai at import)."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger("lexforge.train.rewards")

#: legacy per-item reward: (completion, reference, rubric) -> float
RewardFn = Callable[[str, str, Any], float]
#: a built reward: (completions, examples) -> one outcome per completion (float, Fail or SKIP)
BatchFn = Callable[[list[str], list[dict]], list]
#: a param check: value -> None when valid, else what is wrong ("must be a string")
ParamCheck = Callable[[Any], "str | None"]


class RewardFailed(RuntimeError):
    """A reward failed on every completion of a step (e.g. the judge endpoint is down): training on nothing would
    be wrong, so the step stops with the reward, where it runs and the first error."""


@dataclass(frozen=True)
class Fail:
    """This reward could not score this item (the reason is reported, the item gets no value from it)."""

    reason: str


class _Skip:
    def __repr__(self) -> str:
        return "SKIP"


#: the reward does not apply to this item by configuration (e.g. citation_accuracy no_citation=skip)
SKIP = _Skip()


@dataclass
class RewardDef:
    name: str
    factory: Callable[[dict, dict], BatchFn]  # (params, context) -> batch callable
    params: dict[str, ParamCheck] = field(default_factory=dict)
    check: Callable[[dict], "tuple[str, str] | None"] | None = None  # cross-param check -> (key, error)
    doc: str = ""


_REWARDS: dict[str, RewardDef] = {}


def register_batch_reward(name: str, factory: Callable[[dict, dict], BatchFn], params: dict[str, ParamCheck] | None = None,
                          check: Callable[[dict], "tuple[str, str] | None"] | None = None, doc: str = "") -> None:
    """Add a reward that sees the whole step: ``factory(params, context)`` returns ``fn(completions, examples)``
    giving one float / :class:`Fail` / ``SKIP`` per completion. ``params`` maps each accepted key to a check.
    ``context`` carries ``served_name``. A returned fn may have ``where`` (str, named in errors) and ``stats()``
    (counters since the last call, added to the metrics)."""
    _REWARDS[name] = RewardDef(name, factory, dict(params or {}), check, doc)


def register_reward(name: str, fn: RewardFn) -> None:
    """Add a per-item reward ``fn(completion, reference, rubric) -> float`` (no params). An exception on an item
    is a failure of that item, reported with its message."""

    def factory(params: dict, context: dict) -> BatchFn:
        def run(completions: list[str], examples: list[dict]) -> list:
            out = []
            for c, ex in zip(completions, examples):
                try:
                    out.append(float(fn(c, str(ex.get("reference", "")), ex.get("rubric"))))
                except Exception as e:  # noqa: BLE001 - reported per item
                    out.append(Fail(f"{type(e).__name__}: {e}"))
            return out

        return run

    _REWARDS[name] = RewardDef(name, factory, {}, None, getattr(fn, "__doc__", "") or "")


def get_reward(name: str) -> RewardFn:
    """A per-item view of any registered reward with its default params: ``fn(completion, reference, rubric)``.
    Raises KeyError for an unknown name, RewardFailed when the reward cannot score the item."""
    if name not in _REWARDS:
        raise KeyError(f"unknown GRPO reward {name!r}; known: {sorted(_REWARDS)}")
    d = _REWARDS[name]
    batch_fn = d.factory({}, {"served_name": "legal-champion"})

    def one(completion: str, reference: str, rubric: Any = None) -> float:
        (v,) = batch_fn([completion], [{"reference": reference, "rubric": rubric}])
        if isinstance(v, Fail):
            raise RewardFailed(f"GRPO reward {name!r}: {v.reason}")
        return 0.0 if v is SKIP else float(v)

    return one


def known_rewards() -> list[str]:
    return sorted(_REWARDS)


# ---- spec checks ----------------------------------------------------------------------------------------------


def _field(r, key: str, default=None):
    return r.get(key, default) if isinstance(r, dict) else getattr(r, key, default)


def check_reward_specs(specs: Sequence) -> None:
    """Fail on an unknown reward name, an unknown param, or a param of the wrong type/value; the message names
    ``grpo.rewards[i].params.<key>`` and what is accepted. Runs when the spec is loaded (light, no I/O)."""
    for i, r in enumerate(specs):
        name, params = _field(r, "name"), _field(r, "params") or {}
        if name not in _REWARDS:
            raise ValueError(f"grpo.rewards[{i}].name={name!r} is not a known reward; known: {sorted(_REWARDS)}")
        d = _REWARDS[name]
        for key, value in params.items():
            if key not in d.params:
                accepted = ", ".join(sorted(d.params)) or "none"
                raise ValueError(f"grpo.rewards[{i}].params.{key}: reward {name!r} has no param {key!r} "
                                 f"(accepted: {accepted}; see docs/training.md, GRPO rewards)")
            err = d.params[key](value)
            if err:
                raise ValueError(f"grpo.rewards[{i}].params.{key}={value!r}: {err}")
        if d.check:
            bad = d.check(params)
            if bad:
                raise ValueError(f"grpo.rewards[{i}].params.{bad[0]}: {bad[1]}")
        w = _field(r, "weight", 1.0)
        if not isinstance(w, (int, float)) or not math.isfinite(float(w)):
            raise ValueError(f"grpo.rewards[{i}].weight={w!r}: must be a finite number")


# ---- composition ----------------------------------------------------------------------------------------------


@dataclass
class RewardBatch:
    """The rewards of one step. ``total[j]``: sum of weight x value over the rewards that scored completion j
    (NaN when none did and at least one failed); ``per_reward[label][j]``: None where that reward failed or was
    skipped; ``failures[label]``: "item j: reason" messages; ``skipped[label]``: how many items it skipped."""

    total: list[float]
    per_reward: dict[str, list[float | None]]
    failures: dict[str, list[str]]
    skipped: dict[str, int] = field(default_factory=dict)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """reward/<label>/{mean,failures[,skipped]} (+ the reward's own counters), reward/total/{mean,std,
        failed_items}. A mean over no values is left out, not reported as 0."""
        out: dict[str, float] = {}
        for label, vals in self.per_reward.items():
            got = [v for v in vals if v is not None]
            if got:
                out[f"reward/{label}/mean"] = sum(got) / len(got)
            out[f"reward/{label}/failures"] = float(len(self.failures.get(label, [])))
            if self.skipped.get(label):
                out[f"reward/{label}/skipped"] = float(self.skipped[label])
            for k, v in self.stats.get(label, {}).items():
                out[f"reward/{label}/{k}"] = float(v)
        ok = [t for t in self.total if not math.isnan(t)]
        if ok:
            mean = sum(ok) / len(ok)
            out["reward/total/mean"] = mean
            out["reward/total/std"] = (sum((t - mean) ** 2 for t in ok) / len(ok)) ** 0.5
        out["reward/total/failed_items"] = float(len(self.total) - len(ok))
        return out


@dataclass
class _Term:
    label: str
    index: int
    name: str
    weight: float
    fn: BatchFn


class RewardSet:
    """The spec's weighted rewards, built once per worker; call it on a step's completions."""

    def __init__(self, terms: list[_Term]):
        self.terms = terms

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.terms]

    def __call__(self, completions: list[str], examples: list[dict]) -> RewardBatch:
        n = len(completions)
        if len(examples) != n:
            raise ValueError(f"rewards need one example per completion: {n} completions, {len(examples)} examples")
        total = [0.0] * n
        scored, failed = [False] * n, [False] * n
        batch = RewardBatch(total, {}, {}, {}, {})
        for t in self.terms:
            outcomes = self._run(t, completions, examples)
            vals: list[float | None] = []
            fails: list[str] = []
            skipped = 0
            for j, v in enumerate(outcomes):
                if v is SKIP:
                    vals.append(None)
                    skipped += 1
                elif isinstance(v, Fail):
                    vals.append(None)
                    fails.append(f"item {j}: {v.reason}")
                    failed[j] = True
                else:
                    vals.append(float(v))
                    total[j] += t.weight * float(v)
                    scored[j] = True
            if n and len(fails) == n:
                where = getattr(t.fn, "where", "")
                raise RewardFailed(f"GRPO reward {t.label!r} (grpo.rewards[{t.index}]{', ' + where if where else ''}) "
                                   f"failed on every one of the {n} completions of this step; first error: "
                                   f"{fails[0]}")
            if fails:
                log.warning("GRPO reward %r failed on %d of %d completions (no value from it there); first: %s",
                            t.label, len(fails), n, fails[0])
            batch.per_reward[t.label], batch.failures[t.label] = vals, fails
            if skipped:
                batch.skipped[t.label] = skipped
            stats = getattr(t.fn, "stats", None)
            if callable(stats):
                batch.stats[t.label] = dict(stats())
        for j in range(n):
            if not scored[j] and failed[j]:
                total[j] = float("nan")
        return batch

    @staticmethod
    def _run(t: _Term, completions: list[str], examples: list[dict]) -> list:
        try:
            outcomes = list(t.fn(completions, examples))
        except RewardFailed:
            raise
        except Exception as e:  # noqa: BLE001 - the whole reward broke on this batch: every item failed
            outcomes = [Fail(f"{type(e).__name__}: {e}")] * len(completions)
        if len(outcomes) != len(completions):
            raise RuntimeError(f"GRPO reward {t.label!r} returned {len(outcomes)} values for {len(completions)} "
                               f"completions")
        return [Fail(f"returned {v!r}, not a finite number") if not isinstance(v, (Fail, _Skip)) and not (
            isinstance(v, (int, float)) and math.isfinite(v)) else v for v in outcomes]


def build_rewards(specs: Sequence, *, served_name: str = "legal-champion") -> RewardSet:
    """Validate ``spec.grpo.rewards`` (as :func:`check_reward_specs`) and build each reward once (index files
    loaded, judge clients made). ``served_name``: the platform's served model (spec.serve.served_name), the
    llm_judge default. Labels: the reward's name, or ``<name>_<i>`` when a name appears more than once."""
    check_reward_specs(specs)
    names = [_field(r, "name") for r in specs]
    terms = []
    for i, r in enumerate(specs):
        name = names[i]
        label = name if names.count(name) == 1 else f"{name}_{i}"
        if not re.match(r"^[A-Za-z0-9_.\-]+$", label):
            label = f"reward_{i}"
        params = dict(_field(r, "params") or {})
        try:
            fn = _REWARDS[name].factory(params, {"served_name": served_name})
        except (OSError, ValueError) as e:
            raise ValueError(f"grpo.rewards[{i}] ({name}): {e}") from e
        terms.append(_Term(label, i, name, float(_field(r, "weight", 1.0)), fn))
    return RewardSet(terms)


# ---- param checks ---------------------------------------------------------------------------------------------


def is_str(v) -> str | None:
    return None if isinstance(v, str) and v else "must be a non-empty string"


def is_bool(v) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def is_str_list(v) -> str | None:
    ok = isinstance(v, list) and v and all(isinstance(x, str) and x.strip() for x in v)
    return None if ok else "must be a non-empty list of non-empty strings"


def is_regex(v) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be a non-empty regular expression"
    try:
        re.compile(v)
    except re.error as e:
        return f"is not a valid regular expression ({e})"
    return None


def is_number(lo: float | None = None, hi: float | None = None, integer: bool = False) -> ParamCheck:
    def check(v) -> str | None:
        kind = "an integer" if integer else "a number"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            return f"must be {kind}"
        if (lo is not None and v < lo) or (hi is not None and v > hi) or not math.isfinite(v):
            return f"must be {kind} in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        return None

    return check


def one_of(*choices: str) -> ParamCheck:
    def check(v) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check
