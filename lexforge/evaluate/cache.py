"""Evaluate once per identity: a report is stored under ``eval-cache/<key>.json``
(:func:`lexforge.storage.layout.eval_cache`), the key being the digests of the base weights, the adapter, every
suite file and the eval settings (:mod:`lexforge.evaluate.identity`). The base model of a spec is therefore
evaluated once, not per run, and a champion already evaluated as a candidate is not evaluated again.

Not cached: evaluations graded by the platform's own served model as judge (``judge: {}``), whose weights
change whenever the champion does, so no key can name them."""

from __future__ import annotations

import json
import logging
from typing import Callable

from lexforge.evaluate.generate import engine_config
from lexforge.evaluate.identity import cache_key, eval_settings, suites_identity, weights_digest
from lexforge.evaluate.report import EvalReport

log = logging.getLogger(__name__)


def _judge_desc(spec) -> dict | None:
    if not spec.eval.judge:
        return None
    from lexforge.evaluate.judge import Judge

    return Judge(spec.eval.judge, served_name=spec.serve.served_name).describe()  # no request is made


def report_cache_key(spec, base_model: str, adapter: str | None) -> str | None:
    """The cache key of evaluating ``base_model`` (+ ``adapter``) under ``spec``, or None when the evaluation
    cannot be cached (the judge is the platform's own served model)."""
    from lexforge.models import resolve_model_path

    judge = _judge_desc(spec)
    if judge and judge["source"] == "platform":
        return None
    base_path = resolve_model_path(base_model)
    settings = eval_settings(spec, engine_config(spec, base_path).to_dict(), judge)
    return cache_key(weights_digest(base_path), weights_digest(adapter) if adapter else None, suites_identity(spec),
                     settings)


def cached_report(spec, key: str) -> EvalReport | None:
    from lexforge.storage import store_for_spec
    from lexforge.storage.layout import eval_cache

    try:
        return EvalReport.from_dict(json.loads(store_for_spec(spec).get_bytes(eval_cache(key))))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:  # corrupt entry: evaluate again (and overwrite it)
        log.warning("eval cache %s unreadable (%s); evaluating again", key, e)
        return None


def evaluate_cached(spec, base_model: str, adapter: str | None = None, label: str = "candidate", *,
                    cost_per_hour: float | None = None, gpu: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """:func:`~lexforge.evaluate.runner.run_eval` unless a report of the same identity is stored; either way the
    report is saved as this run's ``label`` and says whether it came from the cache (``extra["cache"]``)."""
    from lexforge.evaluate.runner import add_intervals, run_eval, save_report
    from lexforge.storage import store_for_spec
    from lexforge.storage.layout import eval_cache

    key = report_cache_key(spec, base_model, adapter) if spec.eval.cache else None
    hit = cached_report(spec, key) if key else None
    if hit is not None:
        first = hit.label
        hit.label = label
        hit.spec_name, hit.spec_hash = spec.name, spec.spec_hash()
        if cost_per_hour is not None or gpu is not None:
            from lexforge.evaluate.cost import serving_cost, with_score_per_dollar

            hit.cost = with_score_per_dollar(serving_cost(hit.base_model, spec, cost_per_hour, gpu), hit.blended)
        if hit.confidence != spec.promotion.confidence:
            add_intervals(hit, spec.promotion.confidence, spec.promotion.bootstrap_samples)
        hit.extra = {**hit.extra, "cache": {"key": key, "hit": True, "first_label": first}}
        log.info("eval %s: reusing the stored report of the same weights, suites and settings (%s)", label, key[:12])
        save_report(spec, hit)
        return hit
    report = run_eval(spec, base_model, adapter, label, cost_per_hour=cost_per_hour, gpu=gpu, save=False,
                      progress=progress)
    if key:
        report.extra = {**report.extra, "cache": {"key": key, "hit": False}}
        store_for_spec(spec).put_bytes(eval_cache(key), report.to_json().encode())
    else:
        report.extra = {**report.extra, "cache": {"key": None, "hit": False,
                                                  "why_not": "eval.cache is off" if not spec.eval.cache else
                                                  "the judge is the platform's own served model (no fixed weights)"}}
    save_report(spec, report)
    return report
