"""The registry's vocabulary, owned here: alias and tag names, the encoding of eval / cost / lineage /
checkpoint-selection evidence into model-version tags and its decoding, and the registry's error types.
:mod:`lexforge.registry.core` writes these tags, :mod:`lexforge.registry.policy` and the CLI read them back
through :func:`decode_eval_tags`; nobody else formats or parses an ``eval.*`` tag."""

from __future__ import annotations

import json


class RegistryError(RuntimeError):
    """A registry operation cannot be done (missing version or alias, no tracking server, bad output)."""


class PromotionRefused(RuntimeError):
    """The promotion policy said no and the promotion was not forced."""


CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
HISTORY_TAG = "lexforge.champion_history"  # registered-model tag: JSON list of versions that were champion
AUDIT_PREFIX = "audit."
REGISTER_KEY_TAG = "register_key"
REPORT_ARTIFACT_TAG = "eval.report_artifact"  # where in the version's run the full eval report (with items) is
REGISTER_KEY_FIELDS = ("spec_hash", "dataset_digest", "weights_digest", "base_model")


def _num(x) -> str:
    return f"{x:.6f}"


def report_artifact_path(label: str) -> str:
    return f"eval/{label}.json"


def eval_tags(report) -> dict[str, str]:
    """Model-version tags of an eval report: aggregates, per-suite scores with intervals, how open suites and
    the engine scored, the judge, the serving cost, and where the full report is."""
    d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    tags = {"eval.label": str(d.get("label")), "eval.open_metric": str(d.get("open_metric")),
            "eval.closed_weight": str(d.get("closed_weight")), "eval.engine": str(d.get("engine")),
            REPORT_ARTIFACT_TAG: report_artifact_path(str(d.get("label")))}
    for k in ("blended", "closed", "open"):
        if d.get(k) is not None:
            tags[f"eval.{k}"] = _num(d[k])
    if d.get("blended_ci"):
        tags["eval.blended_ci"] = json.dumps([round(x, 6) for x in d["blended_ci"]])
    if d.get("confidence") is not None:
        tags["eval.confidence"] = str(d["confidence"])
    suites = {n: {"kind": s["kind"], "metric": s["metric"], "score": s["score"], "n": s["n"],
                  **({"ci": [round(x, 6) for x in s["ci"]]} if s.get("ci") else {}),
                  **({"digest": s["digest"][:16]} if s.get("digest") else {})}
              for n, s in d.get("suites", {}).items()}
    tags["eval.suites"] = json.dumps(suites, sort_keys=True)
    for n, s in suites.items():
        tags[f"eval.suite.{n}"] = _num(s["score"])
    if d.get("judge"):
        tags["eval.judge_model"] = str(d["judge"].get("model"))
    cost = d.get("cost") or {}
    if cost.get("usd_per_hour") is not None:
        tags["cost.usd_per_hour"] = _num(cost["usd_per_hour"])
        tags["cost.source"] = str(cost.get("source"))
    return tags


def _float(tags: dict, k: str) -> float | None:
    v = tags.get(k)
    return float(v) if v not in (None, "", "None") else None


def decode_eval_tags(tags: dict[str, str]) -> dict:
    """The eval evidence of a version's tags: ``{blended, blended_ci, closed, open, open_metric, engine,
    cost_usd_per_hour, suites: {name: {score, ci, kind, n}}, report_artifact}`` (None where absent)."""
    suites = json.loads(tags.get("eval.suites") or "{}")
    return {"blended": _float(tags, "eval.blended"), "closed": _float(tags, "eval.closed"),
            "open": _float(tags, "eval.open"),
            "blended_ci": json.loads(tags["eval.blended_ci"]) if tags.get("eval.blended_ci") else None,
            "open_metric": None if tags.get("eval.open_metric") in (None, "None") else tags["eval.open_metric"],
            "engine": tags.get("eval.engine"), "cost_usd_per_hour": _float(tags, "cost.usd_per_hour"),
            "suites": {n: {"score": s.get("score"), "ci": s.get("ci"), "kind": s.get("kind"), "n": s.get("n")}
                       for n, s in suites.items()},
            "report_artifact": tags.get(REPORT_ARTIFACT_TAG)}


def lineage_tags(spec, train_result) -> dict[str, str]:
    """Lineage tags of a trained output. ``dataset_digest`` is the lineage's one field of that name (sha256 of
    the train split, :class:`lexforge.storage.records.Lineage`)."""
    lineage = getattr(train_result, "lineage", None)
    get = (lambda k: getattr(lineage, k, None)) if hasattr(lineage, "model_dump") else (lambda k: (lineage or {}).get(k))
    return {
        "base_model": str(getattr(train_result, "base_model", "") or spec.model.base),
        "base_model_name": spec.model.base,
        "is_adapter": str(bool(getattr(train_result, "is_adapter", True))).lower(),
        "spec_hash": get("spec_hash") or spec.spec_hash(),
        "spec_name": spec.name,
        "dataset_digest": str(get("dataset_digest") or ""),
        "parent_run_id": str(getattr(train_result, "mlflow_run_id", None) or ""),
        "train.output_uri": str(getattr(train_result, "output_uri", "") or ""),
        "train.steps": str(getattr(train_result, "steps", "") or ""),
        "method": spec.method, "stage": spec.stage,
        # the chain of specs that trained these weights: [{"spec_hash", "first_step", "last_step"}, ...]
        "lineage.segments": json.dumps([s.model_dump(mode="json") if hasattr(s, "model_dump") else s
                                        for s in (get("segments") or [])]),
    }


def selection_tags(selection: dict | None) -> dict[str, str]:
    """Which checkpoint was registered and why (``lexforge.evaluate.checkpoints.select_checkpoint``)."""
    if not selection:
        return {}
    return {"checkpoint.mode": str(selection.get("mode")), "checkpoint.step": str(selection.get("chosen_step")),
            "checkpoint.metric": str(selection.get("metric")),
            "checkpoint.reason": str(selection.get("reason", ""))[:4000],
            "checkpoint.scores": json.dumps(selection.get("candidates", []), sort_keys=True)[:4000]}
