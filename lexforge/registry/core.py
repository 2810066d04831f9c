"""Registry operations on a real MLflow tracking server (``MlflowClient``)."""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lexforge.evaluate.identity import weights_digest
from lexforge.registry.tags import (
    AUDIT_PREFIX,
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    PREVIOUS,
    REGISTER_KEY_FIELDS,
    REGISTER_KEY_TAG,
    PromotionRefused,
    RegistryError,
    eval_tags,
    lineage_tags,
    report_artifact_path,
    selection_tags,
)

log = logging.getLogger(__name__)


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    source_uri: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass
class Servable:
    name: str
    version: str
    alias: str | None
    base_model: str  # local path (or hub id) of the base model; the full model when adapter_path is None
    adapter_path: str | None  # local PEFT adapter directory, None for full weights
    source_uri: str
    tags: dict[str, str] = field(default_factory=dict)


# ---- helpers ------------------------------------------------------------------------------------------------


def client(tracking_uri: str | None = None):
    """An MlflowClient on ``tracking_uri``, else the URI :meth:`lexforge.config.TrackingSpec.resolved_uri` gives."""
    from mlflow import MlflowClient

    from lexforge.config import TrackingSpec

    uri = TrackingSpec(mlflow_uri=tracking_uri).resolved_uri()
    if not uri:
        raise RegistryError("no MLflow tracking server: set tracking.mlflow_uri in the spec or MLFLOW_TRACKING_URI "
                            "(`lexforge up` prints it)")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def client_for_spec(spec):
    return client(spec.tracking.resolved_uri() if spec is not None else None)


def actor(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("LEXFORGE_ACTOR"):
        return os.environ["LEXFORGE_ACTOR"]
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _info(mv, aliases: list[str] | None = None) -> ModelVersionInfo:
    return ModelVersionInfo(name=mv.name, version=str(mv.version), source_uri=mv.source, run_id=mv.run_id,
                            tags=dict(mv.tags or {}), aliases=list(aliases if aliases is not None else
                                                                   (getattr(mv, "aliases", None) or [])))


def aliases_of(c, name: str) -> dict[str, str]:
    """{alias: version} of a registered model."""
    try:
        rm = c.get_registered_model(name)
    except Exception as e:
        raise RegistryError(f"registered model {name!r} not found on {c.tracking_uri}: {e}") from None
    return {a: str(v) for a, v in (rm.aliases or {}).items()}


def get_version(c, name: str, version: str | int) -> ModelVersionInfo:
    try:
        mv = c.get_model_version(name, str(version))
    except Exception as e:
        raise RegistryError(f"model version {name}/{version} not found: {e}") from None
    al = [a for a, v in aliases_of(c, name).items() if v == str(version)]
    return _info(mv, al)


def _history(c, name: str) -> list[str]:
    raw = (c.get_registered_model(name).tags or {}).get(HISTORY_TAG)
    return [str(v) for v in json.loads(raw)] if raw else []


# ---- register -----------------------------------------------------------------------------------------------

def _register_key(tags: dict[str, str]) -> str:
    """What makes two registrations the same model: the same weights, trained by the same spec on the same data."""
    ident = {k: tags[k] for k in REGISTER_KEY_FIELDS}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def _find_registered(c, name: str, key: str) -> str | None:
    try:
        found = c.search_model_versions(f"name = '{name}' and tags.{REGISTER_KEY_TAG} = '{key}'")
    except Exception:  # a store without tag filters: scan this model's versions
        found = [v for v in c.search_model_versions(f"name = '{name}'") if (v.tags or {}).get(REGISTER_KEY_TAG) == key]
    versions = sorted((int(v.version) for v in found), reverse=False)
    return str(versions[0]) if versions else None


def register_model(spec, train_result, eval_report, *, set_challenger: bool = True,
                   selection: dict | None = None) -> ModelVersionInfo:
    """Log the trained output dir + eval report to an MLflow run and register it as a new model version.

    ``train_result`` is a :class:`lexforge.train.TrainResult` (or anything with ``output_dir``, ``is_adapter``,
    ``base_model``, ``mlflow_run_id``, ``lineage``). The new version gets alias ``challenger``. ``selection``
    (from :func:`lexforge.evaluate.checkpoints.select_checkpoint`) records which checkpoint this is and why.

    Idempotent: registering the same trained weights again (same bytes, spec hash, dataset digest and base)
    returns the version registered the first time, so a resumed or resubmitted pipeline that already got past
    registration does not add a duplicate version.
    """
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    out_dir = Path(train_result.output_dir)
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        raise RegistryError(f"train output {out_dir} is missing or empty; nothing to register")
    if getattr(train_result, "is_adapter", True) and not (out_dir / "adapter_config.json").is_file():
        raise RegistryError(f"{out_dir} has no adapter_config.json but is_adapter=True")
    c = client_for_spec(spec)
    name = spec.promotion.registered_model
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description="lexforge legal model; aliases champion/challenger")
    exp = c.get_experiment_by_name(spec.tracking.experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(spec.tracking.experiment)
    tags = lineage_tags(spec, train_result)
    tags["weights_digest"] = weights_digest(out_dir)
    tags[REGISTER_KEY_TAG] = _register_key(tags)
    existing = _find_registered(c, name, tags[REGISTER_KEY_TAG])
    if existing is not None:
        aliases = set(c.get_model_version(name, existing).aliases or [])
        log.info("registry: %s version %s already holds this training output (%s); not registering again",
                 name, existing, tags["train.output_uri"] or tags["parent_run_id"])
        if set_challenger and CHAMPION not in aliases and CHALLENGER not in aliases:
            c.set_registered_model_alias(name, CHALLENGER, existing)
        return _recorded(spec, get_version(c, name, existing))
    run_tags = {"lexforge.kind": "register", "lexforge.spec_hash": tags["spec_hash"]}
    if tags["parent_run_id"]:
        run_tags["lexforge.parent_run_id"] = tags["parent_run_id"]
    run = c.create_run(exp_id, run_name=f"register-{spec.name}", tags=run_tags)
    run_id = run.info.run_id
    try:
        c.log_artifacts(run_id, str(out_dir), artifact_path="model")
        with tempfile.TemporaryDirectory() as td:
            rep = Path(td) / "eval"
            rep.mkdir()
            label = getattr(eval_report, "label", "candidate")
            report_file = Path(td) / report_artifact_path(label)
            report_file.write_text(eval_report.to_json())
            report_file.with_suffix(".md").write_text(eval_report.to_markdown())
            (Path(td) / "spec.yaml").write_text(spec.to_yaml())
            c.log_artifacts(run_id, str(rep), artifact_path="eval")
            c.log_artifact(run_id, str(Path(td) / "spec.yaml"))
            if selection:
                (Path(td) / "checkpoint-selection.json").write_text(json.dumps(selection, indent=2))
                c.log_artifact(run_id, str(Path(td) / "checkpoint-selection.json"))
        for k, v in (("eval_blended", eval_report.blended), ("eval_closed", eval_report.closed),
                     ("eval_open", eval_report.open)):
            if v is not None:
                c.log_metric(run_id, k, float(v))
        tags.update(eval_tags(eval_report))
        tags.update(selection_tags(selection))
        # resolve against this client's server, never a tracking URI cached globally by an earlier caller
        source = RunsArtifactRepository.get_underlying_uri(f"runs:/{run_id}/model", tracking_uri=c.tracking_uri)
        mv = c.create_model_version(name, source, run_id=run_id, tags=tags,
                                    description=f"{spec.name} ({spec.method}/{spec.stage}) spec {tags['spec_hash']}")
        c.set_terminated(run_id, "FINISHED")
    except Exception:
        c.set_terminated(run_id, "FAILED")
        raise
    version = str(mv.version)
    if set_challenger:
        c.set_registered_model_alias(name, CHALLENGER, version)
    _audit(c, name, "register", version, None, actor(None), f"registered from run {run_id}", run_id)
    return _recorded(spec, get_version(c, name, version))


def _recorded(spec, info: ModelVersionInfo) -> ModelVersionInfo:
    """Note next to the run which registry version its output became (read by the fine-tuning API)."""
    from lexforge.storage import store_for_spec
    from lexforge.storage.records import Registration, RunRecords

    RunRecords(store_for_spec(spec), spec.name).write_registration(Registration(
        name=info.name, version=info.version, base_model=info.tags.get("base_model", ""),
        is_adapter=info.tags.get("is_adapter", "true") == "true"))
    return info


# ---- audit --------------------------------------------------------------------------------------------------


def _audit(c, name: str, action: str, version: str | None, from_version: str | None, who: str, why: str,
           run_id: str | None) -> dict:
    tags = c.get_registered_model(name).tags or {}
    seq = 1 + sum(1 for k in tags if k.startswith(AUDIT_PREFIX))
    entry = {"seq": seq, "action": action, "version": version, "from_version": from_version, "by": who, "at": now(),
             "reason": why}
    c.set_registered_model_tag(name, f"{AUDIT_PREFIX}{seq:06d}", json.dumps(entry, sort_keys=True))
    if run_id:  # the same entry as an artifact next to the version's files
        with tempfile.TemporaryDirectory() as td:
            p = Path(td) / f"{seq:06d}-{action}.json"
            p.write_text(json.dumps(entry, indent=2, sort_keys=True))
            try:
                c.log_artifact(run_id, str(p), artifact_path="audit")
            except Exception:  # the registered-model tag above is the authoritative record
                pass
    return entry


def audit_log(name: str, tracking_uri: str | None = None) -> list[dict]:
    c = client(tracking_uri)
    tags = c.get_registered_model(name).tags or {}
    return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(AUDIT_PREFIX)]


# ---- promote / rollback -------------------------------------------------------------------------------------


def promote(name: str, version: str | int, decision=None, *, by: str | None = None, reason: str | None = None,
            force: bool = False, tracking_uri: str | None = None) -> None:
    """Make ``version`` the champion. The old champion becomes ``previous_champion`` first, then ``champion``
    moves in one call, so readers always see a champion. ``decision`` (from ``decide_promotion``) must allow
    it unless ``force``; its reasons are recorded."""
    version = str(version)
    c = client(tracking_uri)
    get_version(c, name, version)  # exists?
    if decision is not None and not decision.promote and not force:
        raise PromotionRefused(f"{name} v{version} not promoted: " + "; ".join(decision.failed_reasons()))
    al = aliases_of(c, name)
    current = al.get(CHAMPION)
    if current == version:
        raise RegistryError(f"{name} v{version} is already the champion")
    who = actor(by)
    why = reason or (("; ".join(decision.reasons)) if decision is not None else "manual promotion")
    if force and decision is not None and not decision.promote:
        why = f"FORCED despite: {'; '.join(decision.failed_reasons())}" + (f" ({reason})" if reason else "")
    if current:
        c.set_registered_model_alias(name, PREVIOUS, current)
    c.set_registered_model_alias(name, CHAMPION, version)  # single atomic alias move
    if al.get(CHALLENGER) == version:
        c.delete_registered_model_alias(name, CHALLENGER)
    hist = _history(c, name)
    if current and (not hist or hist[-1] != current):
        hist.append(current)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(hist + [version]))
    ts = now()
    for k, v in {"promotion.status": "champion", "promotion.promoted_at": ts, "promotion.promoted_by": who,
                 "promotion.reason": why[:4000], "promotion.replaced_version": current or ""}.items():
        c.set_model_version_tag(name, version, k, v)
    if current:
        c.set_model_version_tag(name, current, "promotion.status", "previous_champion")
        c.set_model_version_tag(name, current, "promotion.replaced_by", version)
    mv = c.get_model_version(name, version)
    _audit(c, name, "promote", version, current, who, why, mv.run_id)


def rollback(name: str, *, by: str | None = None, reason: str | None = None,
             tracking_uri: str | None = None) -> ModelVersionInfo:
    """Point ``champion`` back at ``previous_champion`` (one alias move) and mark the demoted version."""
    c = client(tracking_uri)
    al = aliases_of(c, name)
    current, target = al.get(CHAMPION), al.get(PREVIOUS)
    if not current:
        raise RegistryError(f"{name} has no champion; nothing to roll back")
    if not target:
        raise RegistryError(f"{name} has no previous_champion alias; nothing to roll back to "
                            f"(promote a specific version with `lexforge promote {name} VERSION` instead)")
    who, why = actor(by), reason or "rollback"
    c.set_registered_model_alias(name, CHAMPION, target)  # atomic: champion never missing
    hist = _history(c, name)
    while hist and hist[-1] != target:  # drop the demoted version (and anything after target)
        hist.pop()
    if not hist:
        hist = [target]
    earlier = [v for v in hist[:-1] if v not in (target, current)]
    if earlier:
        c.set_registered_model_alias(name, PREVIOUS, earlier[-1])
    else:
        c.delete_registered_model_alias(name, PREVIOUS)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(hist))
    ts = now()
    for k, v in {"promotion.status": "rolled_back", "promotion.rolled_back_at": ts, "promotion.rolled_back_by": who,
                 "promotion.rollback_reason": why[:4000]}.items():
        c.set_model_version_tag(name, current, k, v)
    c.set_model_version_tag(name, target, "promotion.status", "champion")
    c.set_model_version_tag(name, target, "promotion.restored_at", ts)
    mv = c.get_model_version(name, target)
    _audit(c, name, "rollback", target, current, who, why, mv.run_id)
    return get_version(c, name, target)


# ---- list / resolve -----------------------------------------------------------------------------------------


def list_versions(name: str, tracking_uri: str | None = None) -> list[ModelVersionInfo]:
    c = client(tracking_uri)
    al = aliases_of(c, name)
    by_version: dict[str, list[str]] = {}
    for a, v in al.items():
        by_version.setdefault(v, []).append(a)
    mvs = c.search_model_versions(f"name='{name}'")
    return sorted((_info(mv, sorted(by_version.get(str(mv.version), []))) for mv in mvs),
                  key=lambda i: int(i.version))


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    rest = uri[len("models:/"):] if uri.startswith("models:/") else uri
    if "@" in rest:
        n, a = rest.split("@", 1)
        return n, a, None
    if "/" in rest:
        n, v = rest.rsplit("/", 1)
        return n, None, v
    return rest, CHAMPION, None


def resolve_servable(name: str, alias: str | None = "champion", *, version: str | None = None,
                     dest: str | Path | None = None, tracking_uri: str | None = None) -> Servable:
    """Download the version's files locally and say how to serve them (base model path + adapter path).

    ``name`` may also be a ``models:/name@alias`` or ``models:/name/version`` URI."""
    import mlflow.artifacts

    from lexforge.config import lexforge_home
    from lexforge.models import resolve_model_path

    if name.startswith("models:/"):
        name, alias, version = parse_model_uri(name)
    c = client(tracking_uri)
    if version is None:
        al = aliases_of(c, name)
        if alias not in al:
            raise RegistryError(f"{name} has no @{alias} alias (aliases: {sorted(al) or 'none'})")
        version = al[alias]
    info = get_version(c, name, version)
    target = Path(dest) if dest else lexforge_home() / "registry" / name / str(version)
    marker = target / ".lexforge_complete"
    if not marker.is_file():
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.source_uri, dst_path=str(tmp),
                                                         tracking_uri=c.tracking_uri))
        if local != tmp:  # download_artifacts puts the directory's contents under tmp/<basename>
            for p in local.iterdir():
                shutil.move(str(p), tmp / p.name)
            shutil.rmtree(local, ignore_errors=True)
        (tmp / ".lexforge_complete").write_text(json.dumps({"name": name, "version": version, "at": now()}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    is_adapter = info.tags.get("is_adapter", "true") == "true"
    if is_adapter:
        base = info.tags.get("base_model", "")
        base_path = base if base and Path(base).is_dir() else resolve_model_path(
            info.tags.get("base_model_name") or base)
        return Servable(name, str(version), alias, base_path, str(target), info.source_uri, info.tags)
    return Servable(name, str(version), alias, str(target), None, info.source_uri, info.tags)
