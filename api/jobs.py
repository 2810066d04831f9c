"""Fine-tuning job requests -> the one JobSpec; job rows -> OpenAI ``fine_tuning.job`` objects.

Request fields follow the OpenAI API (model, training_file, validation_file, suffix, seed,
hyperparameters {n_epochs, batch_size, learning_rate_multiplier}, method {type, supervised|dpo}) plus
lexforge extensions in ``hyperparameters``: ``learning_rate`` (absolute), ``lora_rank``, ``lora_alpha``,
``lora_dropout``.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from api.errors import bad_request
from lexforge.config import DEFAULT_BASE_MODEL, HyperParams, JobSpec, SpecError, spec_from_dict

Auto = Literal["auto"]
DEFAULT_LR = HyperParams.model_fields["learning_rate"].default
JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: Union[Auto, int, None] = None
    batch_size: Union[Auto, int, None] = None
    learning_rate_multiplier: Union[Auto, float, None] = None
    beta: Union[Auto, float, None] = None  # DPO
    # lexforge extensions
    learning_rate: float | None = Field(None, gt=0)
    lora_rank: int | None = Field(None, gt=0, le=1024)
    lora_alpha: int | None = Field(None, gt=0)
    lora_dropout: float | None = Field(None, ge=0, lt=1)


class _MethodConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: _MethodConfig | None = None
    dpo: _MethodConfig | None = None
    reinforcement: dict[str, Any] | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., min_length=1, max_length=256)
    training_file: str = Field(..., min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def clean_suffix(suffix: str | None) -> str | None:
    if suffix is None:
        return None
    s = re.sub(r"[^a-z0-9-]+", "-", suffix.lower()).strip("-")
    if not s:
        raise bad_request(f"suffix {suffix!r} has no usable characters; use letters, digits and '-'", "suffix",
                          "invalid_suffix")
    return s


def fine_tuned_model_name(base: str, job_id: str, suffix: str | None) -> str:
    short = job_id.removeprefix("ftjob-")
    return f"{base}:ft-{suffix}-{short}" if suffix else f"{base}:ft-{short}"


def effective_hyperparameters(req: JobCreate) -> tuple[str, Hyperparameters]:
    """(method type, hyperparameters) with ``method.<type>.hyperparameters`` taking precedence over the
    deprecated top-level ``hyperparameters`` (as in the OpenAI API)."""
    mtype = req.method.type if req.method else "supervised"
    if mtype == "reinforcement":
        raise bad_request("method.type 'reinforcement' (grader-based RFT) is not supported by lexforge; use "
                          "'supervised' or 'dpo'", "method.type", "unsupported_method")
    hp = req.hyperparameters
    if req.method is not None:
        cfg = getattr(req.method, mtype)
        if cfg is not None and cfg.hyperparameters is not None:
            if hp is not None and hp.model_dump(exclude_none=True):
                raise bad_request("give hyperparameters either at top level or under method, not both",
                                  "hyperparameters", "conflicting_hyperparameters")
            hp = cfg.hyperparameters
    hp = hp or Hyperparameters()
    if hp.learning_rate is not None and hp.learning_rate_multiplier not in (None, "auto"):
        raise bad_request("set learning_rate or learning_rate_multiplier, not both", "hyperparameters.learning_rate",
                          "conflicting_hyperparameters")
    if hp.beta not in (None, "auto") and mtype != "dpo":
        raise bad_request("hyperparameters.beta applies only to method.type 'dpo'", "hyperparameters.beta")
    for name in ("n_epochs", "batch_size"):
        v = getattr(hp, name)
        if isinstance(v, int) and v <= 0:
            raise bad_request(f"hyperparameters.{name} must be a positive integer or 'auto', got {v}",
                              f"hyperparameters.{name}")
    if isinstance(hp.learning_rate_multiplier, float) and hp.learning_rate_multiplier <= 0:
        raise bad_request("hyperparameters.learning_rate_multiplier must be > 0", "hyperparameters.learning_rate_multiplier")
    return mtype, hp


def build_spec(job_id: str, req: JobCreate, *, base_model_path: str, train_uri: str, validation_uri: str | None,
               data_format: str, seed: int, store_root: str, s3_endpoint_url: str | None,
               overrides: tuple[str, ...] = ()) -> JobSpec:
    """The JobSpec a job runs with. Site overrides (resources, tracking, eval...) apply first, request values
    last, so a client cannot escape the site's storage root."""
    mtype, hp = effective_hyperparameters(req)
    hyper: dict[str, Any] = {"seed": seed}
    if isinstance(hp.n_epochs, int):
        hyper["epochs"] = hp.n_epochs
    if isinstance(hp.batch_size, int):
        hyper["per_device_batch_size"] = hp.batch_size
    if hp.learning_rate is not None:
        hyper["learning_rate"] = hp.learning_rate
    elif isinstance(hp.learning_rate_multiplier, (int, float)):
        hyper["learning_rate"] = DEFAULT_LR * float(hp.learning_rate_multiplier)
    if isinstance(hp.beta, (int, float)):
        hyper["dpo_beta"] = float(hp.beta)
    lora = {k: v for k, v in (("r", hp.lora_rank), ("alpha", hp.lora_alpha), ("dropout", hp.lora_dropout))
            if v is not None}
    data: dict[str, Any] = {"train": train_uri, "format": data_format, "seed": seed}
    if validation_uri:
        data["validation"] = validation_uri
    # API jobs never auto-promote into the serving champion (a site can override this)
    raw: dict[str, Any] = {"name": job_id, "data": data, "promotion": {"auto_promote": False}}
    site = spec_from_dict(raw, "site defaults", list(overrides)).model_dump(mode="json") if overrides else raw
    site["name"] = job_id
    site["stage"] = {"supervised": "sft", "dpo": "dpo"}[mtype]
    site.setdefault("model", {})["base"] = base_model_path
    site.setdefault("data", {}).update(data)
    site.setdefault("hyperparams", {}).update(hyper)
    if lora:
        site.setdefault("lora", {}).update(lora)
    if not (site.get("eval") or {}).get("suites"):
        site.setdefault("eval", {})["suites"] = default_eval_suites()
    site["storage"] = {"root": store_root, "s3_endpoint_url": s3_endpoint_url}
    tags = dict(site.get("tags") or {})
    tags.update({"api_job": job_id, "api_model": req.model})
    if req.suffix:
        tags["api_suffix"] = req.suffix
    site["tags"] = tags
    try:
        return spec_from_dict(site, f"fine-tuning job {job_id}")
    except SpecError as e:
        raise bad_request(str(e), "hyperparameters", "invalid_hyperparameters") from None


def default_eval_suites() -> list[dict[str, str]]:
    """The eval gate of the retrain pipeline needs suites: without site overrides (eval.suites=[...] in
    LEXFORGE_API_SPEC_OVERRIDES) API jobs use the shipped LegalBench-layout statute tasks."""
    from lexforge.samples import DATA_DIR

    root = DATA_DIR / "legalbench" / "tasks"
    kinds = {"statute_yes_no": "closed", "statute_mcq": "closed", "statute_explain": "open"}
    return [{"name": n, "path": str(root / n), "kind": k} for n, k in kinds.items() if (root / n).is_dir()]


def resolve_base_model(name: str, allowed: tuple[str, ...]) -> str:
    """A base model the client may name: one under $LEXFORGE_HOME/models (or the embedded default), never a
    filesystem path sent by the client."""
    from lexforge.models import is_hf_model_dir, models_dir, resolve_model_path

    if "/" in name or "\\" in name or name.startswith(".") or not re.fullmatch(r"[A-Za-z0-9._:-]+", name):
        raise bad_request(f"model {name!r} is not a model name; choose one of {available_models(allowed)}",
                          "model", "model_not_available")
    if allowed and name not in allowed:
        raise bad_request(f"model {name!r} is not available for fine-tuning; choose one of {list(allowed)}",
                          "model", "model_not_available")
    local = models_dir() / name
    if local.is_dir() and is_hf_model_dir(local):
        return str(local)
    if name == DEFAULT_BASE_MODEL:
        return resolve_model_path(name)
    raise bad_request(f"model {name!r} is not available for fine-tuning; choose one of {available_models(allowed)}",
                      "model", "model_not_available")


def available_models(allowed: tuple[str, ...]) -> list[str]:
    from lexforge.models import is_hf_model_dir, models_dir

    if allowed:
        return list(allowed)
    d = models_dir()
    names = {p.name for p in d.iterdir() if p.is_dir() and is_hf_model_dir(p)} if d.is_dir() else set()
    return sorted(names | {DEFAULT_BASE_MODEL})


def job_object(row: dict[str, Any], organization_id: str) -> dict[str, Any]:
    hp = row["hyperparameters"] or {}
    method = row["method"] or {"type": "supervised"}
    mtype = method.get("type", "supervised")
    out = {
        "id": row["id"],
        "object": "fine_tuning.job",
        "created_at": row["created_at"],
        "error": row["error"],
        "fine_tuned_model": row["fine_tuned_model"],
        "finished_at": row["finished_at"],
        "hyperparameters": {k: hp.get(k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
        "model": row["model"],
        "organization_id": organization_id,
        "result_files": row["result_files"] or [],
        "seed": row["seed"],
        "status": row["status"],
        "trained_tokens": row["trained_tokens"],
        "training_file": row["training_file"],
        "validation_file": row["validation_file"],
        "estimated_finish": row.get("estimated_finish"),
        "integrations": [],
        "metadata": row["metadata"],
        "method": {"type": mtype, mtype: {"hyperparameters": hp}},
        "user_provided_suffix": row["suffix"],
    }
    return out


def resolved_hyperparameters(spec: JobSpec, mtype: str) -> dict[str, Any]:
    h = spec.hyperparams
    out: dict[str, Any] = {
        "n_epochs": int(h.epochs) if float(h.epochs).is_integer() else h.epochs,
        "batch_size": h.per_device_batch_size,
        "learning_rate_multiplier": round(h.learning_rate / DEFAULT_LR, 10),
        "learning_rate": h.learning_rate,
        "lora_rank": spec.lora.r,
        "lora_alpha": spec.lora.alpha,
        "lora_dropout": spec.lora.dropout,
    }
    if mtype == "dpo":
        out["beta"] = h.dpo_beta
    return out
