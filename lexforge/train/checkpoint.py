"""One CheckpointManager for every strategy: sharded, async where possible, atomically committed, keep-K,
local or S3, with lineage.

Inside a checkpoint folder (its key is :meth:`lexforge.storage.layout.RunLayout.checkpoint_dir`)::

    dcp/...                 DDP/FSDP: torch.distributed.checkpoint shards (one file per rank) + .metadata
    deepspeed/...           ZeRO-2/3: DeepSpeed's own per-rank model/optimizer shards
    rank_00000.pt ...       per-rank trainer state: LR scheduler, RNG states, data position, and the recipe's
                            state when it has one (GRPO: the rollout buffer of the current cycle)
    manifest.json           written LAST by rank 0 after every rank finished: the commit marker

A checkpoint without a readable manifest (or with a listed file missing / of the wrong size) does not exist as
far as :meth:`lexforge.storage.records.RunRecords.latest` is concerned, so a crash in the middle of a save can
never be resumed from.

The training loop calls :meth:`CheckpointManager.load` once and :meth:`CheckpointManager.save` after every
step; the manager decides whether a save is due (``every_n_steps`` / ``every_n_minutes``, preemption, end of
run), overlaps async writes with training, and commits finished writes at a later step boundary.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from lexforge.storage.layout import RunLayout
from lexforge.storage.records import Lineage, Manifest, RunRecords
from lexforge.train.lineage import SpecChanged, close_segments, resumed_lineage


# ---- per-rank trainer state ---------------------------------------------------------------------------------


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class WriterFenced(RuntimeError):
    """A newer attempt claimed this run: this (older) attempt's workers may not write its checkpoints."""


class CheckpointMismatch(RuntimeError):
    """The newest checkpoint of this run was made by a different training setup (spec, data, strategy)."""


@dataclass
class CheckpointStats:
    saves: int = 0
    commits: int = 0
    last_stall_s: float = 0.0
    total_stall_s: float = 0.0
    committed_steps: list[int] = field(default_factory=list)


class CheckpointManager:
    def __init__(self, spec, store, strategy, scheduler, *, rank: int, world_size: int, local_rank: int,
                 lineage: Lineage, data_position: Callable[[int], dict], total_steps: int,
                 local_root: Path | None = None,
                 preemption=None, on_event: Callable[[dict], None] | None = None, epoch: int = 0, recipe=None):
        self.spec, self.store, self.strategy, self.scheduler = spec, store, strategy, scheduler
        # a recipe with state_dict/load_state_dict keeps per-rank state in rank_XXXXX.pt
        self.recipe = recipe if hasattr(recipe, "state_dict") else None
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.lineage, self.data_position, self.total_steps = lineage, data_position, total_steps
        self.epoch = epoch
        self.run = spec.name
        self.layout = RunLayout(spec.name)
        self.records = RunRecords(store, spec.name)
        self.cfg = spec.checkpoint
        self.preemption = preemption
        self.on_event = on_event or (lambda e: None)
        self.is_local_store = store.local_path(self.layout.checkpoints) is not None
        from lexforge.config import node_local_dir

        self.local_root = Path(local_root or node_local_dir() / "checkpoints")
        self.async_save = bool(self.cfg.async_save and strategy.supports_async_save)
        # Control flags and async DCP writes each get their own gloo group, so collectives issued from the
        # background writer never interleave with the training loop's.
        self.ctrl_pg = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self.ckpt_pg = dist.new_group(backend="gloo") if dist.is_initialized() and self.async_save else None
        self.stats = CheckpointStats()
        self.preempted = False
        self.resumed_from: int | None = None
        self.resumed_manifest: Manifest | None = None
        self._pending: _PendingSave | None = None
        self._last_saved_step = -1
        self._last_save_time = time.monotonic()

    # ---- collectives -----------------------------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.ctrl_pg is not None:
            dist.barrier(group=self.ctrl_pg)

    def _max(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.ctrl_pg is not None:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.ctrl_pg)
        return t.tolist()

    def _bcast(self, obj):
        if self.ctrl_pg is None:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.ctrl_pg)
        return box[0]

    def _check_fence(self, action: str) -> None:
        """Collective: refuse to touch the run's checkpoints once a newer attempt owns the run."""
        newer = self._bcast(self.records.current_epoch() if self.rank == 0 else None)
        if newer > self.epoch:
            raise WriterFenced(f"run {self.run!r}: attempt epoch {self.epoch} may not {action}: a newer attempt "
                               f"(epoch {newer}) owns the run; this attempt's workers stop here")

    # ---- paths -----------------------------------------------------------------------------------------------
    def _local_dir(self, step: int) -> Path:
        """Where this node writes (and reads) the files of ``step``: the store folder itself for a local store,
        else a staging folder on the node's local disk."""
        in_store = self.store.local_path(self.layout.checkpoint_dir(step))
        if in_store is not None:
            return Path(in_store)
        return self.local_root / self.run / RunLayout.step_dir_name(step)

    # ---- load ------------------------------------------------------------------------------------------------
    def load(self) -> int:
        """Restore model, optimizer, scheduler, RNG from the newest committed checkpoint; returns its step (0 if none)."""
        latest = self.records.latest() if self.rank == 0 else None
        manifest = self._bcast(latest.model_dump(mode="json", by_alias=True) if latest is not None else None)
        if manifest is None:
            return 0
        manifest = Manifest.model_validate(manifest)
        step = manifest.step
        self._check_compatible(manifest)
        local = self._local_dir(step)
        if not self.is_local_store:
            if self.local_rank == 0:
                shutil.rmtree(local, ignore_errors=True)
                for rel in manifest.files:
                    self.store.get_file(self.layout.checkpoint_file(step, rel), local / rel)
            self._barrier()
        t0 = time.perf_counter()
        sub = "deepspeed" if self.strategy.name.startswith("deepspeed") else "dcp"
        self.strategy.load(local if sub == "deepspeed" else local / "dcp", process_group=self.ckpt_pg)
        extra_path = local / f"rank_{self.rank:05d}.pt"
        if not extra_path.is_file():  # world size changed: RNG of rank 0, same scheduler
            extra_path = local / "rank_00000.pt"
        extra = torch.load(extra_path, weights_only=False)
        self.scheduler.load_state_dict(extra["scheduler"])
        set_rng_state(extra["rng"])
        if self.recipe is not None and "recipe" in extra:
            self.recipe.load_state_dict(extra["recipe"])
        self._last_saved_step = step
        self._last_save_time = time.monotonic()
        self.resumed_from = step
        self.resumed_manifest = manifest
        self.on_event({"event": "checkpoint_loaded", "step": step, "seconds": time.perf_counter() - t0})
        return step

    def _check_compatible(self, manifest: Manifest) -> None:
        """Refuse a checkpoint made by another training setup (naming each changed field); adopt its lineage
        chain otherwise (see :func:`lexforge.train.lineage.resumed_lineage`)."""
        try:
            self.lineage = resumed_lineage(manifest.lineage, self.lineage, manifest.step, total_steps=self.total_steps,
                                           continuation=self.spec.checkpoint.on_spec_change == "continue")
        except SpecChanged as e:
            raise CheckpointMismatch(str(e)) from None
        if manifest.strategy != self.strategy.name:
            raise CheckpointMismatch(
                f"run {self.run!r} was checkpointed with strategy={manifest.strategy}, this spec uses "
                f"{self.strategy.name}; resume with the same strategy or start a new run name")
        if self.strategy.name.startswith("deepspeed") and manifest.world_size != self.world_size:
            raise CheckpointMismatch(f"DeepSpeed checkpoint of run {self.run!r} has world_size={manifest.world_size}, "
                                     f"now {self.world_size}; keep resources.num_workers the same")

    # ---- save ------------------------------------------------------------------------------------------------
    def save(self, step: int, *, final: bool = False, metrics: dict | None = None, trained_tokens: int = 0) -> bool:
        """Called after every optimizer step; saves when due, commits finished async saves. Collective."""
        t0 = time.perf_counter()
        pending_busy = self._pending is not None and not self._pending.future.done()
        minutes_due = bool(self.cfg.every_n_minutes and
                           time.monotonic() - self._last_save_time >= self.cfg.every_n_minutes * 60)
        preempt_local = bool(self.preemption and self.cfg.save_on_preemption and self.preemption.local_flag(step))
        preempt, busy, minutes = (bool(x) for x in self._max([preempt_local, pending_busy, minutes_due]))
        self.preempted = preempt
        if self._pending is not None and not busy:
            self._commit_pending()
        due = final or preempt or minutes or bool(self.cfg.every_n_steps and step % self.cfg.every_n_steps == 0)
        if not due or step <= self._last_saved_step:
            if final or preempt:
                self._wait_and_commit()
            self._account(t0, saved=False)
            return False
        if self._pending is not None:
            self._wait_and_commit()
        self._start_save(step, use_async=self.async_save and not (final or preempt),
                         metrics=metrics or {}, trained_tokens=trained_tokens)
        if final or preempt or self._pending is None:
            self._wait_and_commit()
        self._account(t0, saved=True)
        return True

    def close(self) -> None:
        self._wait_and_commit()

    def _account(self, t0: float, saved: bool) -> None:
        stall = time.perf_counter() - t0
        self.stats.last_stall_s = stall
        self.stats.total_stall_s += stall

    def _start_save(self, step: int, use_async: bool, metrics: dict, trained_tokens: int) -> None:
        self._check_fence(f"save step {step}")
        local = self._local_dir(step)
        if self.rank == 0:
            self.records.delete_checkpoint(step)  # leftovers of a crashed save at this step
            if not self.is_local_store:
                shutil.rmtree(local, ignore_errors=True)
        self._barrier()
        local.mkdir(parents=True, exist_ok=True)
        extra = {"scheduler": self.scheduler.state_dict(), "rng": rng_state(), "step": step,
                 "data_position": self.data_position(step)}
        if self.recipe is not None:
            extra["recipe"] = self.recipe.state_dict()
        torch.save(extra, local / f"rank_{self.rank:05d}.pt")
        if self.strategy.name.startswith("deepspeed"):
            fut = self.strategy.save(local, async_save=False)
        else:
            fut = self.strategy.save(local / "dcp", async_save=use_async, process_group=self.ckpt_pg)
        self._last_saved_step = step
        self._last_save_time = time.monotonic()
        self.stats.saves += 1
        self._pending = _PendingSave(step, fut if fut is not None else _Done(), time.monotonic(), metrics,
                                     trained_tokens)

    def _wait_and_commit(self) -> None:
        if self._pending is None:
            return
        self._pending.future.result()
        self._commit_pending()

    def _commit_pending(self) -> None:
        pending, self._pending = self._pending, None
        step = pending.step
        pending.future.result()  # re-raises a failed background write
        self._barrier()  # every rank finished writing its shards
        local = self._local_dir(step)
        if not self.is_local_store and self.local_rank == 0:
            for p in sorted(local.rglob("*")):
                if p.is_file():
                    self.store.put_file(self.layout.checkpoint_file(step, p.relative_to(local).as_posix()), p)
        self._barrier()  # every node uploaded its shards
        self._check_fence(f"commit step {step}")
        if self.rank == 0:
            manifest = Manifest(
                step=step, run=self.run, strategy=self.strategy.name, world_size=self.world_size,
                async_save=self.async_save, files=self.records.checkpoint_file_sizes(step),
                data_position=self.data_position(step), lineage=close_segments(self.lineage, step),
                metrics=pending.metrics,
                trained_tokens=pending.trained_tokens, committed_at=time.time(),
                write_seconds=time.monotonic() - pending.started, epoch=self.epoch)
            self.records.write_manifest(manifest)
            self._prune(step)
        if not self.is_local_store and self.local_rank == 0:
            shutil.rmtree(local, ignore_errors=True)
        self.stats.commits += 1
        self.stats.committed_steps.append(step)
        self.on_event({"event": "checkpoint_committed", "step": step,
                       "write_seconds": time.monotonic() - pending.started,
                       "uri": self.store.url(self.layout.checkpoint_dir(step))})

    def _prune(self, newest: int) -> None:
        present = self.records.checkpoint_steps()
        keep = set(self.records.committed_steps()[-self.cfg.keep_last:])
        for s in present:
            if s not in keep and s <= newest:
                self.records.delete_checkpoint(s)


@dataclass
class _PendingSave:
    step: int
    future: Any
    started: float
    metrics: dict
    trained_tokens: int


class _Done:
    def done(self) -> bool:
        return True

    def result(self):
        return None

