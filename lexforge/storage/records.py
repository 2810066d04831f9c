"""Typed records of a run, shared by every writer and reader, and :class:`RunRecords`, their I/O on a store.

The trainer, the checkpoint manager, the job dispatcher, the flows, the fine-tuning API, the eval runner and
the registry all read these records through the same classes, so a field renamed in one place is renamed
everywhere, and a test fake is made by calling the real writer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lexforge.storage.layout import MANIFEST_NAME, RunLayout

MANIFEST_FORMAT_VERSION = 2


class _Record(BaseModel):
    # Records written by older versions may carry fields this one does not know: keep them, never fail on them.
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1, by_alias=True).encode()


class LineageSegment(_Record):
    """One stretch of training under one spec: steps ``first_step..last_step`` (inclusive; open while running)."""

    spec_hash: str
    first_step: int
    last_step: int | None = None


class Lineage(_Record):
    """Which spec, data, base model and code produced a checkpoint or an output.

    ``dataset_digest`` has one meaning everywhere: the sha256 of the train split's canonical JSONL (the exact
    rows trained on; :class:`lexforge.storage.layout.DatasetLayout` finds it in the store).
    """

    run_name: str
    spec_hash: str
    dataset_digest: str
    dataset_format: str = ""
    base_model: str
    method: str
    stage: str
    strategy: str
    code_version: str = ""
    parent: str | None = None
    #: the spec's training-relevant settings (see lexforge.train.lineage.training_fields), compared on resume
    training: dict[str, Any] = Field(default_factory=dict)
    #: spec hashes of the stretches of training that produced this state, oldest first
    segments: list[LineageSegment] = Field(default_factory=list)


class Manifest(_Record):
    """The commit marker of a checkpoint (``manifest.json``, written last)."""

    format_version: int = MANIFEST_FORMAT_VERSION
    step: int
    run: str
    strategy: str
    world_size: int
    async_save: bool = Field(False, alias="async")
    files: dict[str, int | None]  # path relative to the checkpoint folder -> size in bytes
    data_position: dict[str, Any] = Field(default_factory=dict)
    lineage: Lineage
    metrics: dict[str, Any] = Field(default_factory=dict)
    trained_tokens: int = 0  # cumulative, over every step up to this one
    committed_at: float
    write_seconds: float = 0.0
    epoch: int = 0  # the writer's epoch (fencing)


class Progress(_Record):
    step: int
    total_steps: int
    loss: float | None = None
    tokens_per_s: float | None = None
    trained_tokens: int | None = None
    eta_s: float | None = None
    status: str = "running"
    updated_at: float = Field(default_factory=time.time)


RunStatus = Literal["completed", "preempted", "failed", "invalid", "fenced"]


class RunResult(_Record):
    """What a training run reports when its job ends (``result.json``; also the job's LEXFORGE_RESULT line)."""

    status: RunStatus
    steps: int = 0
    total_steps: int | None = None
    final_loss: float | None = None
    losses: dict[int, float] = Field(default_factory=dict)
    train_seconds: float = 0.0
    trained_tokens: int = 0
    checkpoint_saves: int = 0
    checkpoint_stall_s: float = 0.0
    committed_steps: list[int] = Field(default_factory=list)
    resumed_from_step: int | None = None
    first_step_at: float | None = None
    preemption_reason: str | None = None
    lineage: Lineage | None = None
    is_adapter: bool = True
    base_model: str = ""
    world_size: int | None = None
    workers: list[dict[str, Any]] = Field(default_factory=list)  # rank, local_rank, node_rank, node_id, hostname
    sigterm_handler: str | None = None
    output_uri: str = ""
    mlflow_run_id: str | None = None
    error: str | None = None


class Registration(_Record):
    """The registry model version a run's output was registered as (one model, one identity)."""

    name: str
    version: str
    base_model: str = ""
    is_adapter: bool = True
    registered_at: float = Field(default_factory=time.time)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class StopRequest(_Record):
    reason: str
    at: float = Field(default_factory=time.time)


class WriterEpoch(_Record):
    epoch: int
    owner: str = ""
    at: float = Field(default_factory=time.time)


def _read(store, key: str, model: type[BaseModel]):
    try:
        raw = store.get_bytes(key)
    except FileNotFoundError:
        return None
    try:
        return model.model_validate(json.loads(raw))
    except (ValueError, TypeError):  # corrupt or foreign JSON: treated as absent, never as a valid record
        return None


class RunRecords:
    """Typed reads and writes of one run's records in a store."""

    def __init__(self, store, run_name: str):
        self.store = store
        self.layout = RunLayout(run_name)
        self.run = run_name

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def _step_files(self) -> dict[int, list[str]]:
        """step -> file paths (relative to the step folder) found in the store."""
        out: dict[int, list[str]] = {}
        for key in self.store.list(self.layout.checkpoints + "/"):
            step = self.layout.step_of(key)
            rel = self.layout.checkpoint_rel(key)
            if step is not None and rel:
                out.setdefault(step, []).append(rel)
        return out

    def checkpoint_steps(self) -> list[int]:
        """Every step folder present, committed or not (ascending)."""
        return sorted(self._step_files())

    def read_manifest(self, step: int, present: list[str] | None = None) -> Manifest | None:
        """The manifest of a complete checkpoint, or None when it is uncommitted, incomplete or corrupt."""
        m = _read(self.store, self.layout.manifest(step), Manifest)
        if m is None or m.step != step:
            return None
        have = set(present if present is not None else self._step_files().get(step, []))
        for rel, size in m.files.items():
            if rel not in have:
                return None
            if size is not None:
                actual = self.store.size(self.layout.checkpoint_file(step, rel))
                if actual is not None and actual != size:
                    return None
        return m

    def committed(self) -> list[Manifest]:
        """Manifests of every committed, intact checkpoint, oldest first."""
        files = self._step_files()
        return [m for s in sorted(files) if (m := self.read_manifest(s, files[s])) is not None]

    def committed_steps(self) -> list[int]:
        return [m.step for m in self.committed()]

    def latest(self) -> Manifest | None:
        """The newest committed, intact checkpoint (incomplete or corrupt ones are skipped)."""
        files = self._step_files()
        for s in sorted(files, reverse=True):
            m = self.read_manifest(s, files[s])
            if m is not None:
                return m
        return None

    def write_manifest(self, manifest: Manifest) -> str:
        return self.store.put_bytes(self.layout.manifest(manifest.step), manifest.to_json())

    def delete_checkpoint(self, step: int) -> None:
        """Uncommit first (manifest), then delete: a half-deleted checkpoint is never "complete"."""
        self.store.delete(self.layout.manifest(step))
        self.store.delete_prefix(self.layout.checkpoint_dir(step))

    def checkpoint_file_sizes(self, step: int) -> dict[str, int | None]:
        key = self.layout.checkpoint_dir(step)
        rels = [r for r in self._step_files().get(step, []) if r != MANIFEST_NAME]
        return {r: self.store.size(f"{key}/{r}") for r in sorted(rels)}

    # ---- progress / result -------------------------------------------------------------------------------------
    def read_progress(self) -> Progress | None:
        return _read(self.store, self.layout.progress, Progress)

    def write_progress(self, p: Progress) -> None:
        self.store.put_bytes(self.layout.progress, p.to_json())

    def read_result(self) -> RunResult | None:
        return _read(self.store, self.layout.result, RunResult)

    def write_result(self, r: RunResult) -> None:
        self.store.put_bytes(self.layout.result, r.to_json())

    def clear_result(self) -> None:
        self.store.delete(self.layout.result)

    # ---- registration ------------------------------------------------------------------------------------------
    def read_registration(self) -> Registration | None:
        return _read(self.store, self.layout.registration, Registration)

    def write_registration(self, r: Registration) -> None:
        self.store.put_bytes(self.layout.registration, r.to_json())

    # ---- control -------------------------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        self.store.put_bytes(self.layout.stop_request, StopRequest(reason=reason).to_json())

    def stop_requested(self) -> bool:
        return self.store.exists(self.layout.stop_request)

    def clear_stop(self) -> None:
        self.store.delete(self.layout.stop_request)

    def read_epoch(self) -> WriterEpoch | None:
        return _read(self.store, self.layout.epoch, WriterEpoch)

    def claim_epoch(self, owner: str) -> WriterEpoch:
        """Make a new attempt the run's only writer: the next epoch. Writers of older epochs are fenced out
        (their checkpoint commits, saves and deletions are refused from now on)."""
        current = self.read_epoch()
        claimed = WriterEpoch(epoch=(current.epoch if current else 0) + 1, owner=owner)
        self.store.put_bytes(self.layout.epoch, claimed.to_json())
        return claimed

    def current_epoch(self) -> int:
        e = self.read_epoch()
        return e.epoch if e else 0

    # ---- output ----------------------------------------------------------------------------------------------------
    def output_files(self) -> list[str]:
        """Paths (relative to the output folder) of the final output."""
        prefix = self.layout.output + "/"
        return [k[len(prefix):] for k in self.store.list(prefix)]

    def has_output(self) -> bool:
        """True when the output is complete (its lineage.json is written last)."""
        return self.store.exists(self.layout.output_lineage)

    def read_output_lineage(self) -> Lineage | None:
        return _read(self.store, self.layout.output_lineage, Lineage)

    def output_uri(self) -> str:
        return self.store.url(self.layout.output)

    def local_output(self, cache_dir: Path) -> Path:
        """A local directory holding the output: the store's own folder for local stores, else a verified copy
        under ``cache_dir``."""
        local = self.store.local_path(self.layout.output)
        if local is not None:
            return Path(local)
        dest = Path(cache_dir)
        for rel in self.output_files():
            self.store.get_file(self.layout.output_file(rel), dest / rel)
        return dest

    def publish_output(self, local_dir: Path) -> str:
        """Copy a finished output folder into the store (lineage.json last, so its presence means complete)."""
        local_dir = Path(local_dir)
        target = self.store.local_path(self.layout.output)
        if target is not None and Path(target) == local_dir:
            return self.output_uri()
        self.store.delete_prefix(self.layout.output)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        for p in sorted(files, key=lambda p: p.relative_to(local_dir).as_posix() == "lineage.json"):
            self.store.put_file(self.layout.output_file(p.relative_to(local_dir).as_posix()), p)
        return self.output_uri()

    # ---- eval reports ------------------------------------------------------------------------------------------------
    def eval_labels(self) -> list[str]:
        return sorted(lab for k in self.store.list(self.layout.eval_reports + "/")
                      if (lab := self.layout.eval_label_of(k)) is not None)

    def read_eval_report(self, label: str) -> dict | None:
        try:
            return json.loads(self.store.get_bytes(self.layout.eval_report(label)))
        except (FileNotFoundError, ValueError):
            return None

    def write_eval_report(self, label: str, payload: bytes) -> str:
        return self.store.put_bytes(self.layout.eval_report(label), payload)
