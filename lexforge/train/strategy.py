"""Parallelism strategies behind one small interface: DDP, FSDP2 (``fully_shard``) and DeepSpeed ZeRO-2/3.

A strategy owns the wrapped model and the optimizer and knows how to: run backward (with gradient
accumulation), take an optimizer step (clip + step + zero), save/load its sharded training state into a
checkpoint directory (DCP for DDP/FSDP, DeepSpeed's own format for ZeRO), and gather a full state dict on
rank 0 for export. The training loop never branches on the strategy.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch


def trainable_params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(spec, params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=spec.hyperparams.learning_rate, weight_decay=spec.hyperparams.weight_decay,
                             betas=(0.9, 0.999), eps=1e-8)


def build_scheduler(spec, optimizer, total_steps: int):
    import math

    hp = spec.hyperparams
    warmup = int(hp.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if hp.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if hp.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _grad_norm_value(norm) -> float:
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


class Strategy:
    name = "base"
    supports_async_save = False

    def __init__(self, spec, device: torch.device, precision: str, rank: int, world_size: int):
        self.spec, self.device, self.precision = spec, device, precision
        self.rank, self.world_size = rank, world_size
        self.is_lora = spec.method in ("lora", "qlora")
        self.grad_accum = spec.hyperparams.gradient_accumulation_steps
        self.model: Any = None
        self.optimizer: torch.optim.Optimizer | None = None

    # -- setup --
    def wrap(self, model) -> None:
        raise NotImplementedError

    def unwrapped(self):
        """The PEFT / HF model (not the DDP/DeepSpeed wrapper)."""
        return self.model

    # -- step --
    def autocast(self):
        if self.device.type == "cuda" and self.precision in ("bf16", "fp16"):
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
        return contextlib.nullcontext()

    def micro_context(self, is_last: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(trainable_params(self.model), self.spec.hyperparams.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return _grad_norm_value(norm)

    # -- checkpoint --
    def save(self, directory: Path, async_save: bool, process_group=None):
        raise NotImplementedError

    def load(self, directory: Path, process_group=None) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> dict | None:
        """Full (unsharded) state dict on rank 0, None elsewhere. Adapter weights only for LoRA. Collective."""
        raise NotImplementedError


class _DCPStrategy(Strategy):
    """Shared checkpointing for DDP and FSDP2 via torch.distributed.checkpoint (each rank writes its shard)."""

    supports_async_save = True

    def _sd_options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(ignore_frozen_params=self.is_lora, **kw)

    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        opts = self._sd_options()
        return {"model": get_model_state_dict(self.model, options=opts),
                "optim": get_optimizer_state_dict(self.model, self.optimizer, options=opts)}

    def save(self, directory: Path, async_save: bool, process_group=None):
        import torch.distributed.checkpoint as dcp

        state = self._state()
        if async_save:
            return dcp.async_save(state, checkpoint_id=str(directory), process_group=process_group)
        dcp.save(state, checkpoint_id=str(directory), process_group=process_group)
        return None

    def load(self, directory: Path, process_group=None) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        state = self._state()
        dcp.load(state, checkpoint_id=str(directory), process_group=process_group)
        opts = self._sd_options(strict=not self.is_lora)
        set_model_state_dict(self.model, state["model"], options=opts)
        set_optimizer_state_dict(self.model, self.optimizer, state["optim"], options=opts)
        self.optimizer.zero_grad(set_to_none=True)

    def full_state_dict(self) -> dict | None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        sd = get_model_state_dict(self.model, options=self._sd_options(full_state_dict=True, cpu_offload=True))
        return sd if self.rank == 0 else None


class DDPStrategy(_DCPStrategy):
    name = "ddp"

    def wrap(self, model) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = model.to(self.device) if self.spec.method != "qlora" else model
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.model = DDP(model, device_ids=ids) if self.world_size > 1 else model
        self.optimizer = build_optimizer(self.spec, trainable_params(self.model))

    def unwrapped(self):
        return getattr(self.model, "module", self.model)

    def micro_context(self, is_last: bool):
        if not is_last and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()


class FSDPStrategy(_DCPStrategy):
    """FSDP2: each decoder block and the root are ``fully_shard``-ed over a 1-D mesh of all workers."""

    name = "fsdp"

    def wrap(self, model) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        model = model.to(self.device)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        mp = None
        if self.precision in ("bf16", "fp16"):
            dt = torch.bfloat16 if self.precision == "bf16" else torch.float16
            mp = MixedPrecisionPolicy(param_dtype=dt, reduce_dtype=torch.float32)
        kw = {"mesh": mesh, **({"mp_policy": mp} if mp else {})}
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        blocks = set(getattr(base, "_no_split_modules", None) or [])
        if not blocks:
            raise RuntimeError(f"{type(base).__name__} declares no _no_split_modules; cannot pick FSDP units")
        for m in list(model.modules()):
            if type(m).__name__ in blocks:
                fully_shard(m, **kw)
        fully_shard(model, **kw)
        register_fsdp_forward_method(model, "generate")
        self.model = model
        self.optimizer = build_optimizer(self.spec, trainable_params(model))

    def autocast(self):
        return contextlib.nullcontext()  # MixedPrecisionPolicy casts


class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO-2 / ZeRO-3 (engine owns grad accumulation, clipping and the sharded optimizer)."""

    def __init__(self, spec, device, precision, rank, world_size, stage: int):
        super().__init__(spec, device, precision, rank, world_size)
        self.stage = stage
        self.name = f"deepspeed-zero{stage}"

    def ds_config(self) -> dict:
        hp = self.spec.hyperparams
        cpu = self.device.type != "cuda"
        bucket = int(5e5) if cpu else int(5e8)
        zero: dict[str, Any] = {"stage": self.stage, "overlap_comm": not cpu, "contiguous_gradients": True,
                                "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
        if self.stage == 3:
            zero.update({"stage3_prefetch_bucket_size": bucket, "stage3_param_persistence_threshold": 0 if cpu else int(1e5),
                         "stage3_gather_16bit_weights_on_model_save": True})
        return {
            "train_micro_batch_size_per_gpu": hp.per_device_batch_size,
            "gradient_accumulation_steps": hp.gradient_accumulation_steps,
            "train_batch_size": hp.per_device_batch_size * hp.gradient_accumulation_steps * self.world_size,
            "gradient_clipping": hp.max_grad_norm,
            "zero_optimization": zero,
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {"enabled": self.precision == "fp16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def wrap(self, model) -> None:
        import deepspeed

        base_opt = build_optimizer(self.spec, trainable_params(model))
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=base_opt, config=self.ds_config(),
                                                       dist_init_required=False)
        self.model = engine
        self.optimizer = base_opt  # the LR scheduler drives the client optimizer's param groups
        self._engine_optimizer = optimizer

    def unwrapped(self):
        return self.model.module

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.model.backward(loss)  # scales by 1/gradient_accumulation_steps itself
        self.model.step()  # only applies the update at the accumulation boundary

    def step(self) -> float:
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save(self, directory: Path, async_save: bool, process_group=None):
        self.model.save_checkpoint(str(directory), tag="deepspeed", save_latest=False,
                                   exclude_frozen_parameters=self.is_lora)
        return None

    def load(self, directory: Path, process_group=None) -> None:
        path, _ = self.model.load_checkpoint(str(directory), tag="deepspeed", load_module_strict=not self.is_lora,
                                             load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {directory}")

    def full_state_dict(self) -> dict | None:
        import deepspeed

        module = self.model.module
        params = [p for p in module.parameters() if p.requires_grad] if self.is_lora else list(module.parameters())
        names = {id(p): n for n, p in module.named_parameters()}
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.stage == 3):
            if self.rank != 0:
                return None
            if self.is_lora:
                return {names[id(p)]: p.detach().cpu().clone() for p in params}
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def build_strategy(spec, device, precision: str, rank: int, world_size: int) -> Strategy:
    s = spec.strategy
    if s == "ddp":
        return DDPStrategy(spec, device, precision, rank, world_size)
    if s == "fsdp":
        return FSDPStrategy(spec, device, precision, rank, world_size)
    if s.startswith("deepspeed-zero"):
        return DeepSpeedStrategy(spec, device, precision, rank, world_size, stage=int(s[-1]))
    raise ValueError(f"unknown strategy {s!r}")
