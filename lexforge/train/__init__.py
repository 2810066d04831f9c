"""Training on Ray Train: SFT / DPO / GRPO x LoRA / QLoRA / full x DDP / FSDP2 / DeepSpeed ZeRO-2/3, with
preemption-aware, sharded, atomically committed checkpoints. See docs/training.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["TrainResult", "run_training", "merge_adapter"]

if TYPE_CHECKING:  # pragma: no cover
    from lexforge.train.export import merge_adapter
    from lexforge.train.run import TrainResult, run_training


def __getattr__(name: str):  # lazy: importing lexforge.train must not pull in torch/ray
    if name in ("TrainResult", "run_training"):
        from lexforge.train import run

        return getattr(run, name)
    if name == "merge_adapter":
        from lexforge.train.export import merge_adapter

        return merge_adapter
    raise AttributeError(name)
