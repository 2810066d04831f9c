"""The promotion gate on a real MLflow registry: gather the evidence (the challenger's, the champion's and the
base model's eval reports, with per-item results), let the pure policy decide, and record the decision on the
version (tags, description, artifacts) and in the audit log."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from lexforge.evaluate import compare
from lexforge.registry.core import ModelVersionInfo, _audit, actor, aliases_of, client, get_version, now
from lexforge.registry.policy import PromotionDecision, evaluate_policy
from lexforge.registry.tags import CHAMPION, REPORT_ARTIFACT_TAG
from lexforge.registry.views import comparison_rows, decision_markdown, decision_text, rows_markdown

log = logging.getLogger(__name__)
DESCRIPTION_LIMIT = 4900  # MLflow stores a version description in 5000 characters


def version_report(c, info: ModelVersionInfo) -> dict | None:
    """The full eval report (with items) registered with a version, from its run's artifacts; None if absent."""
    if not info.run_id:
        return None
    path = info.tags.get(REPORT_ARTIFACT_TAG)
    with tempfile.TemporaryDirectory() as td:
        try:
            if not path:  # versions registered before the tag existed: the one eval/*.json of the run
                found = [f.path for f in c.list_artifacts(info.run_id, "eval") if f.path.endswith(".json")]
                if not found:
                    return None
                path = found[0]
            local = c.download_artifacts(info.run_id, path, td)
            return json.loads(Path(local).read_text())
        except Exception as e:  # noqa: BLE001 - a missing report is evidence missing, decided by the policy
            log.warning("no eval report for %s v%s (%s): %s", info.name, info.version, path, e)
            return None


def stored_base_report(spec, challenger: ModelVersionInfo) -> dict | None:
    """The cached report of the challenger's base model on ``spec``'s suites and settings, if it was evaluated."""
    if spec is None:
        return None
    from lexforge.evaluate.cache import cached_report, report_cache_key
    from lexforge.models import resolve_model_path

    base = challenger.tags.get("base_model", "")
    try:
        path = base if base and Path(base).is_dir() else resolve_model_path(
            challenger.tags.get("base_model_name") or spec.model.base)
        key = report_cache_key(spec, path, None)
    except (FileNotFoundError, OSError, ValueError) as e:
        log.warning("base model of %s v%s not available here (%s)", challenger.name, challenger.version, e)
        return None
    hit = cached_report(spec, key) if key else None
    return hit.to_dict() if hit else None


def decide_promotion(spec, name: str | None, challenger_version: str | int, *, reports: dict | None = None,
                     record: bool = True, tracking_uri: str | None = None) -> PromotionDecision:
    """Gate a registered challenger against the current ``@champion`` (or, with none, its base model).

    ``reports`` may hold the eval reports at hand (``candidate``, ``champion``, ``base``); what is missing is read
    from the registry (the versions' registered reports) and the eval cache (the base model's). With ``record``
    the decision goes onto the challenger version and into the audit log."""
    from lexforge.config import PromotionSpec

    policy = spec.promotion if spec is not None else PromotionSpec()
    c = client(tracking_uri or (spec.tracking.resolved_uri() if spec is not None else None))
    name = name or policy.registered_model
    chal = get_version(c, name, challenger_version)
    champ_v = aliases_of(c, name).get(CHAMPION)
    given = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in (reports or {}).items() if v is not None}
    cand = given.get("candidate") or version_report(c, chal)
    champ = None
    if champ_v and champ_v != chal.version:
        champ = given.get("champion") or version_report(c, get_version(c, name, champ_v))
    base = given.get("base") or stored_base_report(spec, chal)
    comp, kind = None, ("champion" if champ_v else "base")
    if champ_v == chal.version:
        promote_, reasons = False, [f"FAIL v{chal.version} is already the champion"]
    elif champ_v and champ is None:
        promote_, reasons = False, [f"FAIL champion v{champ_v} has no eval report with per-item results to compare "
                                    "with; re-evaluate it on the current suites (the retrain flow does)"]
    else:
        promote_, reasons, comp = evaluate_policy(policy, cand, champ if champ_v else base, baseline_kind=kind,
                                                  baseline_label=f"champion v{champ_v}" if champ_v else None)
    conf, samples = policy.confidence, policy.bootstrap_samples
    scores = {key: (compare.summary(r, conf, samples) if r else None)
              for key, r in (("candidate", cand), ("champion", champ), ("base", base))}
    if scores["champion"]:
        scores["champion"]["version"] = champ_v
    if scores["candidate"]:
        scores["candidate"]["version"] = chal.version
    d = PromotionDecision(name=name, challenger=chal.version, champion=champ_v, promote=promote_, reasons=reasons,
                          scores=scores, policy=policy.model_dump(), decided_at=now(), baseline=kind,
                          verdict=((comp or {}).get("blended") or {}).get("verdict"), comparison=comp)
    if record:
        record_decision(c, d)
    return d


def record_decision(c, d: PromotionDecision) -> None:
    v = d.challenger
    for k, val in {"promotion.decision": "promote" if d.promote else "reject", "promotion.decided_at": d.decided_at,
                   "promotion.decided_by": actor(None), "promotion.compared_to": d.champion or "",
                   "promotion.baseline": d.baseline or "", "promotion.verdict": d.verdict or "",
                   "promotion.reasons": json.dumps(d.reasons)[:7900]}.items():
        c.set_model_version_tag(d.name, v, k, val)
    table = rows_markdown(comparison_rows(d))
    desc = f"{decision_text(d)} ({d.decided_at})\n\n{table}"
    c.update_model_version(d.name, v, description=desc[:DESCRIPTION_LIMIT])
    run_id = c.get_model_version(d.name, v).run_id
    if run_id:
        with tempfile.TemporaryDirectory() as td:
            stamp = d.decided_at.replace(":", "").replace("+", "Z")
            (Path(td) / f"decision-{stamp}.json").write_text(json.dumps(d.to_dict(), indent=2))
            (Path(td) / f"decision-{stamp}.md").write_text(decision_markdown(d))
            c.log_artifacts(run_id, td, artifact_path="promotion")
    _audit(c, d.name, "decide", v, d.champion, actor(None),
           ("promote: " if d.promote else "reject: ") + "; ".join(d.failed_reasons() or d.reasons), run_id)
