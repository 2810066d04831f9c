"""One CheckpointManager for every strategy: sharded, async where possible, atomically committed, keep-K,
local or S3, with lineage.

Layout (store keys)::

    runs/<name>/checkpoints/step_00000042/
        dcp/...                 DDP/FSDP: torch.distributed.checkpoint shards (one file per rank) + .metadata
        deepspeed/...           ZeRO-2/3: DeepSpeed's own per-rank model/optimizer shards
        rank_00000.pt ...       per-rank trainer state: LR scheduler, RNG states, data position
        manifest.json           written LAST by rank 0 after every rank finished: the commit marker

A checkpoint without a readable ``manifest.json`` (or with a listed file missing / of the wrong size) does not
exist as far as :func:`find_latest` is concerned, so a crash in the middle of a save can never be resumed from.

The training loop calls :meth:`CheckpointManager.load` once and :meth:`CheckpointManager.save` after every
step; the manager decides whether a save is due (``every_n_steps`` / ``every_n_minutes``, preemption, end of
run), overlaps async writes with training, and commits finished writes at a later step boundary.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d{8})$")


def checkpoints_prefix(run_name: str) -> str:
    return f"runs/{run_name}/checkpoints"


def step_key(run_name: str, step: int) -> str:
    return f"{checkpoints_prefix(run_name)}/step_{step:08d}"


# ---- discovery (no torch.distributed needed) ----------------------------------------------------------------


def _step_dirs(store, run_name: str) -> dict[int, list[str]]:
    """step -> relative file names found under that checkpoint directory."""
    prefix = checkpoints_prefix(run_name) + "/"
    out: dict[int, list[str]] = {}
    for key in store.list(prefix):
        rest = key[len(prefix):]
        head, _, tail = rest.partition("/")
        m = _STEP_RE.match(head)
        if m and tail:
            out.setdefault(int(m.group(1)), []).append(tail)
    return out


def verify_checkpoint(store, run_name: str, step: int, files: list[str] | None = None) -> dict | None:
    """The manifest of a complete checkpoint, or None if it is incomplete or corrupt."""
    key = step_key(run_name, step)
    try:
        manifest = json.loads(store.get_bytes(f"{key}/{MANIFEST}"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("step") != step or not isinstance(manifest.get("files"), dict):
        return None
    present = set(files if files is not None else [k[len(key) + 1:] for k in store.list(key + "/")])
    local = getattr(store, "local_path", None)
    for rel, size in manifest["files"].items():
        if rel not in present:
            return None
        if local is not None and size is not None and local(f"{key}/{rel}").stat().st_size != size:
            return None
    return manifest


def find_latest(store, run_name: str) -> dict | None:
    """Manifest of the newest committed, intact checkpoint of ``run_name`` (skipping incomplete/corrupt ones)."""
    dirs = _step_dirs(store, run_name)
    for step in sorted(dirs, reverse=True):
        m = verify_checkpoint(store, run_name, step, dirs[step])
        if m is not None:
            return m
    return None


def list_committed(store, run_name: str) -> list[int]:
    dirs = _step_dirs(store, run_name)
    return sorted(s for s in dirs if verify_checkpoint(store, run_name, s, dirs[s]) is not None)


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


class CheckpointMismatch(RuntimeError):
    """The newest checkpoint of this run was made from a different base model / dataset / strategy."""


@dataclass
class CheckpointStats:
    saves: int = 0
    commits: int = 0
    last_stall_s: float = 0.0
    total_stall_s: float = 0.0
    committed_steps: list[int] = field(default_factory=list)


class CheckpointManager:
    def __init__(self, spec, store, strategy, scheduler, *, rank: int, world_size: int, local_rank: int,
                 lineage: dict, data_position: Callable[[int], dict], local_root: Path | None = None,
                 preemption=None, on_event: Callable[[dict], None] | None = None):
        self.spec, self.store, self.strategy, self.scheduler = spec, store, strategy, scheduler
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.lineage, self.data_position = lineage, data_position
        self.run = spec.name
        self.cfg = spec.checkpoint
        self.preemption = preemption
        self.on_event = on_event or (lambda e: None)
        self.is_local_store = hasattr(store, "local_path")
        from lexforge.config import lexforge_home

        self.local_root = Path(local_root or lexforge_home() / "cache" / "checkpoints")
        self.async_save = bool(self.cfg.async_save and strategy.supports_async_save)
        # Control flags and async DCP writes each get their own gloo group, so collectives issued from the
        # background writer never interleave with the training loop's.
        self.ctrl_pg = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self.ckpt_pg = dist.new_group(backend="gloo") if dist.is_initialized() and self.async_save else None
        self.stats = CheckpointStats()
        self.preempted = False
        self.resumed_from: int | None = None
        self._pending: tuple[int, Any, float] | None = None  # (step, future, started)
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

    # ---- paths -----------------------------------------------------------------------------------------------
    def _local_dir(self, step: int) -> Path:
        key = step_key(self.run, step)
        if self.is_local_store:
            return self.store.local_path(key)
        return self.local_root / self.run / f"step_{step:08d}"

    # ---- load ------------------------------------------------------------------------------------------------
    def load(self) -> int:
        """Restore model, optimizer, scheduler, RNG from the newest committed checkpoint; returns its step (0 if none)."""
        manifest = self._bcast(find_latest(self.store, self.run) if self.rank == 0 else None)
        if manifest is None:
            return 0
        step = manifest["step"]
        self._check_compatible(manifest)
        local = self._local_dir(step)
        if not self.is_local_store:
            if self.local_rank == 0:
                shutil.rmtree(local, ignore_errors=True)
                key = step_key(self.run, step)
                for rel in manifest["files"]:
                    self.store.get_file(f"{key}/{rel}", local / rel)
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
        self._last_saved_step = step
        self._last_save_time = time.monotonic()
        self.resumed_from = step
        self.on_event({"event": "checkpoint_loaded", "step": step, "seconds": time.perf_counter() - t0})
        return step

    def _check_compatible(self, manifest: dict) -> None:
        old = manifest.get("lineage", {})
        for k in ("base_model", "dataset_digest", "method", "stage"):
            if old.get(k) and self.lineage.get(k) and old[k] != self.lineage[k]:
                raise CheckpointMismatch(
                    f"run {self.run!r} has a checkpoint at step {manifest['step']} made with {k}={old[k]!r}, but this "
                    f"spec uses {self.lineage[k]!r}; use a new run name (or delete {step_key(self.run, manifest['step'])})")
        if manifest.get("strategy") and manifest["strategy"] != self.strategy.name:
            raise CheckpointMismatch(
                f"run {self.run!r} was checkpointed with strategy={manifest['strategy']}, this spec uses "
                f"{self.strategy.name}; resume with the same strategy or start a new run name")
        if self.strategy.name.startswith("deepspeed") and manifest.get("world_size") not in (None, self.world_size):
            raise CheckpointMismatch(f"DeepSpeed checkpoint of run {self.run!r} has world_size={manifest['world_size']}, "
                                     f"now {self.world_size}; keep resources.num_workers the same")

    # ---- save ------------------------------------------------------------------------------------------------
    def save(self, step: int, *, final: bool = False, metrics: dict | None = None) -> bool:
        """Called after every optimizer step; saves when due, commits finished async saves. Collective."""
        t0 = time.perf_counter()
        pending_busy = self._pending is not None and not self._pending[1].done()
        minutes_due = bool(self.cfg.every_n_minutes and
                           time.monotonic() - self._last_save_time >= self.cfg.every_n_minutes * 60)
        preempt_local = bool(self.preemption and self.cfg.save_on_preemption and self.preemption.local_flag(step))
        preempt, busy, minutes = (bool(x) for x in self._max([preempt_local, pending_busy, minutes_due]))
        self.preempted = preempt
        if self._pending is not None and not busy:
            self._commit_pending(metrics)
        due = final or preempt or minutes or bool(self.cfg.every_n_steps and step % self.cfg.every_n_steps == 0)
        if not due or step <= self._last_saved_step:
            if final or preempt:
                self._wait_and_commit(metrics)
            self._account(t0, saved=False)
            return False
        if self._pending is not None:
            self._wait_and_commit(metrics)
        self._start_save(step, use_async=self.async_save and not (final or preempt))
        if final or preempt or self._pending is None:
            self._wait_and_commit(metrics)
        self._account(t0, saved=True)
        return True

    def close(self) -> None:
        self._wait_and_commit(None)

    def _account(self, t0: float, saved: bool) -> None:
        stall = time.perf_counter() - t0
        self.stats.last_stall_s = stall
        self.stats.total_stall_s += stall

    def _start_save(self, step: int, use_async: bool) -> None:
        local = self._local_dir(step)
        if self.rank == 0:
            self.store.delete_prefix(step_key(self.run, step))  # leftovers of a crashed save at this step
            if not self.is_local_store:
                shutil.rmtree(local, ignore_errors=True)
        self._barrier()
        local.mkdir(parents=True, exist_ok=True)
        extra = {"scheduler": self.scheduler.state_dict(), "rng": rng_state(), "step": step,
                 "data_position": self.data_position(step)}
        torch.save(extra, local / f"rank_{self.rank:05d}.pt")
        if self.strategy.name.startswith("deepspeed"):
            fut = self.strategy.save(local, async_save=False)
        else:
            fut = self.strategy.save(local / "dcp", async_save=use_async, process_group=self.ckpt_pg)
        self._last_saved_step = step
        self._last_save_time = time.monotonic()
        self.stats.saves += 1
        self._pending = (step, fut, time.monotonic()) if fut is not None else None
        if fut is None:
            self._pending = (step, _Done(), time.monotonic())

    def _wait_and_commit(self, metrics: dict | None) -> None:
        if self._pending is None:
            return
        self._pending[1].result()
        self._commit_pending(metrics)

    def _commit_pending(self, metrics: dict | None) -> None:
        step, fut, started = self._pending
        self._pending = None
        fut.result()  # re-raises a failed background write
        self._barrier()  # every rank finished writing its shards
        key = step_key(self.run, step)
        local = self._local_dir(step)
        if not self.is_local_store and self.local_rank == 0:
            for p in sorted(local.rglob("*")):
                if p.is_file():
                    self.store.put_file(f"{key}/{p.relative_to(local).as_posix()}", p)
        self._barrier()  # every node uploaded its shards
        if self.rank == 0:
            files = self._file_sizes(key)
            manifest = {
                "format_version": FORMAT_VERSION, "step": step, "run": self.run, "strategy": self.strategy.name,
                "world_size": self.world_size, "async": self.async_save, "files": files,
                "data_position": self.data_position(step), "lineage": self.lineage, "metrics": metrics or {},
                "committed_at": time.time(), "write_seconds": time.monotonic() - started,
            }
            self.store.put_bytes(f"{key}/{MANIFEST}", json.dumps(manifest, indent=1, default=str).encode())
            self._prune(step)
        if not self.is_local_store and self.local_rank == 0:
            shutil.rmtree(local, ignore_errors=True)
        self.stats.commits += 1
        self.stats.committed_steps.append(step)
        self.on_event({"event": "checkpoint_committed", "step": step, "write_seconds": time.monotonic() - started,
                       "uri": self.store.url(key)})

    def _file_sizes(self, key: str) -> dict[str, int | None]:
        rels = [k[len(key) + 1:] for k in self.store.list(key + "/")]
        local = getattr(self.store, "local_path", None)
        return {r: (local(f"{key}/{r}").stat().st_size if local else None) for r in rels if r != MANIFEST}

    def _prune(self, newest: int) -> None:
        dirs = _step_dirs(self.store, self.run)
        committed = sorted(s for s in dirs if verify_checkpoint(self.store, self.run, s, dirs[s]) is not None)
        keep = set(committed[-self.cfg.keep_last:])
        for s in dirs:
            if s in keep or s > newest:
                continue
            key = step_key(self.run, s)
            self.store.delete(f"{key}/{MANIFEST}")  # uncommit first: a half-deleted checkpoint is never "complete"
            self.store.delete_prefix(key)


class _Done:
    def done(self) -> bool:
        return True

    def result(self):
        return None


def read_manifest_history(store, run_name: str) -> list[dict]:
    return [m for s in list_committed(store, run_name) if (m := verify_checkpoint(store, run_name, s))]
