"""Cost view: a model's score next to its serving cost (USD per hour) -> score per $/hour.

The cost comes from ``lexforge.plan.plan_serving`` when that planner is installed, or from an explicit
``cost_per_hour`` (CLI ``--cost-per-hour``), which always wins. No cost -> the view says so; it never guesses.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_COST_ATTRS = ("cost_per_hour", "usd_per_hour", "cost_usd_per_hour", "hourly_cost_usd", "price_per_hour")


def _read_cost(plan: Any) -> float | None:
    get = (lambda k: plan.get(k)) if isinstance(plan, dict) else (lambda k: getattr(plan, k, None))
    for attr in _COST_ATTRS:
        v = get(attr)
        if isinstance(v, (int, float)) and v > 0:
            return float(v)
    return None


def serving_cost(model: str, spec=None, cost_per_hour: float | None = None, gpu: str | None = None) -> dict | None:
    """``{"usd_per_hour", "source", ...}`` or None when no cost is known."""
    if cost_per_hour is not None:
        if cost_per_hour <= 0:
            raise ValueError(f"cost_per_hour must be > 0, got {cost_per_hour}")
        return {"usd_per_hour": float(cost_per_hour), "source": "input"}
    try:
        from lexforge.plan import plan_serving  # type: ignore[attr-defined]
    except ImportError:
        return None
    kwargs: dict[str, Any] = {}
    if gpu:
        kwargs["gpu"] = gpu
    if spec is not None:
        kwargs["context_len"] = spec.serve.max_model_len
    try:
        plan = plan_serving(model, **kwargs)
    except Exception as e:  # planner cannot size this model: say so in the report, do not invent a number
        log.warning("serving cost unavailable: plan_serving(%s) failed: %s", model, e)
        return {"usd_per_hour": None, "source": "planner", "error": f"{type(e).__name__}: {e}"}
    usd = _read_cost(plan)
    out: dict[str, Any] = {"usd_per_hour": usd, "source": "planner"}
    for attr in ("gpu", "num_gpus", "precision", "context_len", "concurrency", "price_per_gpu_hour", "price_source",
                 "fits"):
        v = plan.get(attr) if isinstance(plan, dict) else getattr(plan, attr, None)
        if isinstance(v, (str, int, float)):
            out[attr] = v
    return out


def with_score_per_dollar(cost: dict | None, blended: float | None) -> dict | None:
    if cost is None:
        return None
    usd = cost.get("usd_per_hour")
    cost = dict(cost)
    cost["score_per_usd_hour"] = (blended / usd) if (usd and blended is not None) else None
    return cost
