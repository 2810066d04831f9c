"""Lineage carried by every checkpoint and output (which spec, data, base model and code produced it), and the
resume rule: which settings of a spec must not change under an existing run name.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

from lexforge.storage.records import Lineage, LineageSegment


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """git sha of the lexforge checkout (``+dirty`` when modified), else the installed package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if sha:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"lexforge=={version('lexforge')}"
    except PackageNotFoundError:
        return "unknown"


def training_fields(spec) -> dict[str, Any]:
    """The settings of ``spec`` that determine the trained weights, compared with a checkpoint's lineage on
    resume. The global batch (per-device batch x accumulation x workers) counts, not its factors, so a resume on
    another number of workers that keeps the global batch (elastic resume) is not a change. Base model, data
    (its digest), method, stage and strategy are lineage fields of their own and are compared too."""
    h = spec.hyperparams
    out: dict[str, Any] = {
        "hyperparams.learning_rate": h.learning_rate,
        "hyperparams.lr_scheduler": h.lr_scheduler,
        "hyperparams.warmup_ratio": h.warmup_ratio,
        "hyperparams.weight_decay": h.weight_decay,
        "hyperparams.max_grad_norm": h.max_grad_norm,
        "hyperparams.epochs": h.epochs,
        "hyperparams.max_steps": h.max_steps,
        "global_batch": h.per_device_batch_size * h.gradient_accumulation_steps * spec.resources.num_workers,
        "hyperparams.seed": h.seed,
        "hyperparams.precision": h.precision,
        "data.max_seq_len": spec.data.max_seq_len,
        "data.seed": spec.data.seed,
    }
    if spec.method in ("lora", "qlora"):
        lo = spec.lora
        out.update({"lora.r": lo.r, "lora.alpha": lo.alpha, "lora.dropout": lo.dropout,
                    "lora.target_modules": lo.target_modules if isinstance(lo.target_modules, str)
                    else sorted(lo.target_modules)})
        if spec.method == "qlora":
            out.update({"lora.quant_type": lo.quant_type, "lora.double_quant": lo.double_quant})
    if spec.stage == "dpo":
        out["hyperparams.dpo_beta"] = h.dpo_beta
    if spec.stage == "grpo":
        # every grpo: setting shapes the weights (rollouts, objective, rewards) except where rollouts run
        g = spec.grpo.model_dump(mode="json", exclude={"rollout_engine", "vllm"})
        out.update({f"grpo.{k}": v for k, v in g.items()})
    return out


#: Lineage fields compared on resume besides :func:`training_fields`.
IDENTITY_FIELDS = ("base_model", "dataset_digest", "method", "stage", "strategy")

#: Fields that may change in an explicit continuation (more steps or epochs, a new schedule for the continuation).
CONTINUABLE = {"hyperparams.max_steps", "hyperparams.epochs", "hyperparams.learning_rate",
               "hyperparams.lr_scheduler", "hyperparams.warmup_ratio"}


def build_lineage(spec, base_model: str, dataset_digest: str, dataset_format: str,
                  parent: str | None = None) -> Lineage:
    """The lineage of a fresh run (one open segment from step 1). ``dataset_digest`` is the sha256 of the
    train split (:class:`lexforge.storage.records.Lineage`); ``parent`` the run it starts from
    (:func:`lexforge.train.parent.resolve_base`), else ``tags.parent_model``."""
    return Lineage(
        run_name=spec.name, spec_hash=spec.spec_hash(), dataset_digest=dataset_digest,
        dataset_format=dataset_format, base_model=base_model, method=spec.method, stage=spec.stage,
        strategy=spec.strategy, code_version=code_version(), parent=parent or spec.tags.get("parent_model") or None,
        training=training_fields(spec), segments=[LineageSegment(spec_hash=spec.spec_hash(), first_step=1)],
    )


class SpecChanged(ValueError):
    """The spec differs from the one the run's checkpoints were trained with."""


def spec_changes(old: Lineage, new: Lineage) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) for every compared setting that differs."""
    changes = [(k, getattr(old, k), getattr(new, k)) for k in IDENTITY_FIELDS
               if getattr(old, k) and getattr(new, k) and getattr(old, k) != getattr(new, k)]
    for k in sorted(set(old.training) | set(new.training)):
        if old.training and old.training.get(k) != new.training.get(k):
            changes.append((k, old.training.get(k), new.training.get(k)))
    return changes


def resumed_lineage(old: Lineage, new: Lineage, committed_step: int, *, total_steps: int, continuation: bool) -> Lineage:
    """The lineage to carry on from a checkpoint at ``committed_step`` (made with ``old``) under ``new``.

    Same training settings: the run resumes; a different spec hash (a change that does not touch training, e.g.
    eval settings) opens a new segment from the next step. Changed training settings are refused with every
    field named, unless this is an explicit continuation of changeable fields (then a new segment records the
    new spec from the next step). A continuation that would train nothing is refused."""
    run = new.run_name
    changes = spec_changes(old, new)
    if changes and not continuation:
        lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in changes)
        raise SpecChanged(
            f"run {run!r} has committed checkpoints up to step {committed_step} trained with a different spec "
            f"(spec hash {old.spec_hash}, now {new.spec_hash}):\n{lines}\n"
            f"Either give the job a new run name (name: ...), or continue this run explicitly "
            f"(--continue, or checkpoint.on_spec_change: continue) to train on from step {committed_step} with "
            f"the new settings, recorded as a new lineage segment.")
    if continuation and changes:
        fixed = [(k, a, b) for k, a, b in changes if k not in CONTINUABLE]
        if fixed:
            lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in fixed)
            raise SpecChanged(f"run {run!r}: a continuation may change only {sorted(CONTINUABLE)}; these changed too:"
                              f"\n{lines}\nUse a new run name for a different training setup.")
        if total_steps <= committed_step:
            raise SpecChanged(f"run {run!r}: the continuation would train nothing: the run already has step "
                              f"{committed_step} committed and the new spec stops at step {total_steps}; raise "
                              f"hyperparams.max_steps (or epochs) above {committed_step}")
    segments = [s.model_copy() for s in (old.segments or [LineageSegment(spec_hash=old.spec_hash, first_step=1)])]
    segments[-1].last_step = committed_step
    if new.spec_hash != segments[-1].spec_hash:
        segments.append(LineageSegment(spec_hash=new.spec_hash, first_step=committed_step + 1))
    return new.model_copy(update={"segments": segments, "parent": new.parent or old.parent})


def close_segments(lineage: Lineage, last_step: int) -> Lineage:
    """The lineage as of ``last_step``: the open segment ends there; segments that trained no step are dropped."""
    segments = [s.model_copy() for s in lineage.segments]
    if segments:
        segments[-1].last_step = last_step
    segments = [s for s in segments if s.last_step is None or s.last_step >= s.first_step]
    return lineage.model_copy(update={"segments": segments})
