"""A run that starts from another run's output: ``model.base: run:<name>`` (or the path of a run's output folder).

:func:`resolve_base` gives the local HF model directory to train from and the parent (``"<run>@<spec hash>"``,
unless ``tags.parent_model`` sets it), which :func:`lexforge.train.lineage.build_lineage` records as
``Lineage.parent``; the spec is not rewritten (its hash stays the same everywhere). A LoRA output is merged into its
base (once, cached under ``$LEXFORGE_HOME/cache/parents``), so the child trains a new adapter, or all weights,
on top of the parent's weights. Where the output is stored is :class:`lexforge.storage.records.RunRecords`'.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lexforge.config import lexforge_home
from lexforge.storage.layout import OUTPUT_LINEAGE_NAME
from lexforge.storage.records import Lineage

RUN_PREFIX = "run:"


class ParentNotReady(ValueError):
    """``model.base`` names a run without a completed output."""


def parent_ref(lineage: Lineage) -> str:
    return f"{lineage.run_name}@{lineage.spec_hash}"


def _run_output(spec, run: str) -> tuple[Path, Lineage]:
    from lexforge.storage import store_for_spec
    from lexforge.storage.records import RunRecords

    records = RunRecords(store_for_spec(spec), run)
    if not records.has_output():
        raise ParentNotReady(f"model.base={spec.model.base!r}: run {run!r} has no completed output in the store "
                             f"{spec.storage.resolved_root()}; train it first (same storage.root), or point "
                             f"model.base at a model directory")
    lineage = records.read_output_lineage()
    local = records.local_output(lexforge_home() / "cache" / "run-outputs" / run)
    return Path(local), lineage


def _as_full_model(out: Path, lineage: Lineage) -> Path:
    """``out`` itself for full weights; a LoRA adapter merged into its base model (cached per parent spec)."""
    if not (out / "adapter_config.json").is_file():
        return out
    from lexforge.train.export import merge_adapter

    dest = lexforge_home() / "cache" / "parents" / f"{lineage.run_name}-{lineage.spec_hash}"
    if (dest / OUTPUT_LINEAGE_NAME).is_file() and (dest / "config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merge_adapter(lineage.base_model, out, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def resolve_base(spec) -> tuple[str, str | None]:
    """Where ``model.base`` points, as ``(local model directory, parent)``. ``parent`` is ``"<run>@<spec hash>"``
    when the base is a run's output (``run:<name>`` or an output folder with ``lineage.json``): the parent's
    weights, a LoRA adapter merged into its base. The spec itself is left as written, so its hash (which names
    ``run:<name>``, not a machine's cache path) is the same on every side; ``tags.parent_model`` overrides the
    recorded parent. A plain base resolves through :func:`lexforge.models.resolve_model_path`."""
    from lexforge.models import resolve_model_path

    base = spec.model.base
    if base.startswith(RUN_PREFIX):
        out, lineage = _run_output(spec, base[len(RUN_PREFIX):])
    elif (Path(base).expanduser() / OUTPUT_LINEAGE_NAME).is_file():
        out = Path(base).expanduser().resolve()
        lineage = Lineage.model_validate_json((out / OUTPUT_LINEAGE_NAME).read_bytes())
    else:
        return resolve_model_path(base), spec.tags.get("parent_model") or None
    return str(_as_full_model(out, lineage)), spec.tags.get("parent_model") or parent_ref(lineage)
