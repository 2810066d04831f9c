"""The training loop that runs inside every Ray Train worker (torchtitan style: a Trainer holding a few
components, each made by a small builder).

Components: tokenizer + tokenized examples + :class:`BatchPlan` (data), a :class:`Strategy` (model and
optimizer, sharded), an LR scheduler, a stage recipe (loss), a :class:`CheckpointManager` (with the
preemption watcher), and rank-0 reporting (progress.json + MLflow).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from lexforge.config import node_local_dir, spec_from_dict
from lexforge.storage import store_for_spec
from lexforge.storage.records import Lineage, Progress, RunRecords, RunResult
from lexforge.train.checkpoint import CheckpointManager, WriterFenced
from lexforge.train.data import TrainData, build_batch_plan, read_clean_rows, tokenize_rows
from lexforge.train.export import write_output
from lexforge.train.lineage import close_segments
from lexforge.train.metrics import TrainMetrics
from lexforge.train.model import (build_policy, build_reference, build_tokenizer, check_compile_supported,
                                  check_method_supported, resolve_attn_implementation, resolve_precision)
from lexforge.train.preemption import PreemptionWatcher
from lexforge.train.recipes import build_recipe
from lexforge.train.strategy import build_scheduler, build_strategy
from lexforge.train.tracking import MetricLogger


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    node_rank: int = 0
    node_id: str = ""

    def describe(self) -> dict:
        import socket

        return {"rank": self.rank, "local_rank": self.local_rank, "node_rank": self.node_rank,
                "node_id": self.node_id, "hostname": socket.gethostname(), "device": str(self.device)}


def worker_context(spec) -> WorkerContext:
    node_rank, node_id = 0, ""
    try:
        import ray
        import ray.train

        ctx = ray.train.get_context()
        rank, world, local = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
        node_rank, node_id = ctx.get_node_rank(), ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - plain torchrun / single process
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        local = int(os.environ.get("LOCAL_RANK", 0))
    if spec.resources.use_gpu and torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
    return WorkerContext(rank, world, local, device, node_rank, node_id)


@dataclass
class Reporter:
    """Rank-0 progress: the run's Progress record in the store (throttled) and MLflow metrics every N steps."""

    records: RunRecords
    total_steps: int
    rank: int
    metrics: MetricLogger
    log_every: int
    start_step: int = 0
    started: float = field(default_factory=time.monotonic)
    last_write: float = 0.0

    def step(self, step: int, loss: float, stats: dict, trained_tokens: int, force: bool = False) -> None:
        if self.rank != 0:
            return
        done = step - self.start_step
        elapsed = time.monotonic() - self.started
        eta = (self.total_steps - step) * elapsed / done if done > 0 else None
        if step % self.log_every == 0 or force:
            self.metrics.log({"loss": loss, **stats}, step)
        if force or time.monotonic() - self.last_write >= 1.0:
            self.last_write = time.monotonic()
            self.write(Progress(step=step, total_steps=self.total_steps, loss=loss,
                                tokens_per_s=stats.get("tokens_per_s"), trained_tokens=trained_tokens, eta_s=eta))

    def write(self, p: Progress) -> None:
        if self.rank != 0:
            return
        try:
            self.records.write_progress(p)
        except Exception:  # noqa: BLE001 - progress is best effort
            pass


class Trainer:
    def __init__(self, config: dict):
        self.spec = spec = spec_from_dict(config["spec"])
        self.config = config
        self.ctx = ctx = worker_context(spec)
        check_method_supported(spec, ctx.device.type)
        check_compile_supported(spec, ctx.device.type)
        self.store = store_for_spec(spec)
        self.records = RunRecords(self.store, spec.name)
        self.lineage = Lineage.model_validate(config["lineage"])
        base = config["base_model"]
        precision = resolve_precision(spec, ctx.device.type)
        attn = resolve_attn_implementation(spec, ctx.device.type)
        self.tokenizer = build_tokenizer(spec, base)
        data = TrainData(**config["data"])
        self.examples = tokenize_rows(read_clean_rows(data.local_rows(self.store)), data.format, self.tokenizer,
                                      spec.data.max_seq_len)
        hp = spec.hyperparams
        # the spec's global batch on however many workers this attempt got (elastic resume: more accumulation)
        self.plan = build_batch_plan(self.examples, hp, ctx.world_size, spec.grad_accum_for(ctx.world_size))
        # GRPO trains grpo.num_iterations optimizer steps on each batch of prompts (TRL's repeat sampler): step s
        # reads the plan's batch s // rollout_reuse, and an epoch is rollout_reuse times as many steps.
        self.rollout_reuse = spec.grpo.num_iterations if spec.stage == "grpo" else 1
        self.total_steps = hp.max_steps or self.plan.total_steps(hp.epochs, None) * self.rollout_reuse
        torch.manual_seed(hp.seed)  # identical initial weights on every rank (FSDP/ZeRO shard from them)
        model = build_policy(spec, base, precision, attn, ctx.device)
        self.strategy = build_strategy(spec, ctx.device, precision, ctx.rank, ctx.world_size)
        self.strategy.wrap(model)
        self.strategy.unwrapped().train()
        self.scheduler = build_scheduler(spec, self.strategy.optimizer, self.total_steps)
        reference = None
        if spec.method == "full" and (spec.stage == "dpo" or (spec.stage == "grpo" and spec.grpo.beta > 0)):
            reference = build_reference(spec, base, precision, attn, ctx.device)
        self.recipe = build_recipe(spec, self.tokenizer, self.strategy, ctx.device, reference)
        self.metrics = MetricLogger(config.get("mlflow_uri"), config.get("mlflow_run_id")) if ctx.rank == 0 \
            else MetricLogger(None, None)
        self.preemption = PreemptionWatcher(self.records, ctx.rank)
        self.ckpt = CheckpointManager(spec, self.store, self.strategy, self.scheduler, rank=ctx.rank,
                                      world_size=ctx.world_size, local_rank=ctx.local_rank, lineage=self.lineage,
                                      data_position=self.data_position, total_steps=self.total_steps,
                                      preemption=self.preemption, epoch=int(config.get("epoch", 0)),
                                      on_event=self.metrics.event, recipe=self.recipe)
        self.metrics_pg = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self.prom = TrainMetrics(spec.name, ctx.rank)
        self.reporter = Reporter(self.records, self.total_steps, ctx.rank, self.metrics, hp.log_every_n_steps)

    def data_position(self, step: int) -> dict:
        """Where the data stream stands after ``step`` steps (GRPO: the prompt batches whose rollouts began)."""
        if self.rollout_reuse == 1:
            return self.plan.position(step)
        return {**self.plan.position(-(-step // self.rollout_reuse)), "step": step}

    def _global_mean(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.metrics_pg is not None:
            dist.all_reduce(t, group=self.metrics_pg)
            t /= self.ctx.world_size
        return t.tolist()

    def train_step(self, step: int) -> tuple[float, dict]:
        batch = step // self.rollout_reuse
        micro = self.plan.micro_batches(batch, self.ctx.rank)  # the same count on every rank
        world = self.ctx.world_size
        summed = getattr(self.recipe, "loss_reduction", "mean") == "sum"
        # Summed losses are divided by the step's total weight (trained tokens / pairs over all micro-batches and
        # ranks, known from the plan; a recipe with begin_step, GRPO, returns its own). strategy.backward divides
        # by gradient_accumulation_steps and DDP/FSDP/ZeRO average gradients over ranks, so both are multiplied
        # back in: the gradient is d(sum / weight).
        weight = self.plan.step_weight(batch) if summed else len(micro)
        if hasattr(self.recipe, "begin_step"):  # GRPO: rollouts, rewards, advantages for the step
            weight = self.recipe.begin_step(step, [[self.examples[i] for i in idx] for idx in micro])
        scale = self.strategy.grad_accum * world / weight if summed else self.strategy.grad_accum / len(micro)
        loss_sum, tokens, computed, extra = 0.0, 0, 0, {}
        for m, idx in enumerate(micro):
            batch = [self.examples[i] for i in idx]
            with self.strategy.micro_context(m == len(micro) - 1):
                with self.strategy.autocast():
                    r = self.recipe.micro_step(batch)
                self.strategy.backward(r.loss * scale)
            loss_sum = r.loss.detach().double() + loss_sum  # stays on the device: one sync per step
            tokens += r.tokens
            computed += r.tokens if r.computed is None else r.computed
            for k, v in r.metrics.items():
                extra[k] = extra.get(k, 0.0) + v
        grad_norm = self.strategy.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        keys = sorted(extra)
        per_rank = world / weight if summed else 1.0 / len(micro)  # so that the mean over ranks is the step's value
        vals = self._global_mean([float(loss_sum) * per_rank, tokens, computed, *[extra[k] * per_rank for k in keys]])
        loss, tokens_mean, computed_mean = vals[0], vals[1], vals[2]
        stats = {"lr": lr, "grad_norm": grad_norm, "tokens": tokens_mean * world,
                 "padding_share": 1.0 - tokens_mean / computed_mean if computed_mean else 0.0,
                 **dict(zip(keys, vals[3:]))}
        if hasattr(self.recipe, "end_step"):  # metrics the recipe reduces over ranks itself
            stats.update(self.recipe.end_step())
        return loss, stats

    def run(self) -> RunResult:
        try:
            return self._run()
        except WriterFenced as e:  # a newer attempt owns the run: stop without touching its records
            return RunResult(status="fenced", error=str(e), world_size=self.ctx.world_size)

    def _run(self) -> RunResult:
        start = self.ckpt.load()
        resumed = self.ckpt.resumed_manifest
        trained_tokens = resumed.trained_tokens if resumed is not None else 0
        self.reporter.start_step = start
        losses: dict[int, float] = {}
        status, loss = "completed", None
        step = start
        self.reporter.write(Progress(step=start, total_steps=self.total_steps, trained_tokens=trained_tokens))
        first_step_at = None
        train_seconds = 0.0
        delay = float(os.environ.get("LEXFORGE_STEP_DELAY_S", "0") or 0)  # drills/benchmarks: stretch tiny steps
        while step < self.total_steps:
            t0 = time.perf_counter()
            loss, stats = self.train_step(step)
            step += 1
            if delay:
                time.sleep(delay)
            step_time = time.perf_counter() - t0
            first_step_at = first_step_at or time.time()
            losses[step] = loss
            train_seconds += step_time
            trained_tokens += int(round(stats["tokens"]))
            saved = self.ckpt.save(step, metrics={"loss": loss}, trained_tokens=trained_tokens)
            self.prom.record(stats["tokens"] / self.ctx.world_size / step_time, step_time,
                             self.ckpt.stats.last_stall_s if saved else None)
            stats.update(step_time_s=step_time, tokens_per_s=stats["tokens"] / step_time,
                         checkpoint_stall_s=self.ckpt.stats.last_stall_s)
            self.reporter.step(step, loss, stats, trained_tokens, force=step == self.total_steps)
            if self.ckpt.preempted:
                status = "preempted"
                break
        if status == "completed":
            self.ckpt.save(step, final=True, metrics={"loss": loss} if loss is not None else None,
                           trained_tokens=trained_tokens)
        self.ckpt.close()
        if hasattr(self.recipe, "close"):
            self.recipe.close()
        workers = [self.ctx.describe()]
        if self.metrics_pg is not None:  # where every rank ran (ranks, node ranks, local ranks)
            workers = [None] * self.ctx.world_size
            dist.all_gather_object(workers, self.ctx.describe(), group=self.metrics_pg)
        lineage = close_segments(self.ckpt.lineage, step)
        result = RunResult(
            status=status, steps=step, total_steps=self.total_steps, final_loss=loss, losses=losses,
            train_seconds=train_seconds, trained_tokens=trained_tokens, checkpoint_saves=self.ckpt.stats.saves,
            resumed_from_step=self.ckpt.resumed_from, first_step_at=first_step_at,
            checkpoint_stall_s=self.ckpt.stats.total_stall_s, committed_steps=self.ckpt.stats.committed_steps,
            preemption_reason=self.preemption.reason, lineage=lineage,
            is_adapter=self.spec.method in ("lora", "qlora"), base_model=self.config["base_model"],
            world_size=self.ctx.world_size, workers=workers, sigterm_handler=self.preemption.handler)
        if status == "completed":
            result.output_uri = self._export(lineage)
        if self.ctx.rank == 0:
            self.reporter.write(Progress(step=step, total_steps=self.total_steps, loss=loss,
                                         trained_tokens=trained_tokens, eta_s=0 if status == "completed" else None,
                                         status=status))
            self.records.write_result(result)
        return result

    def _export(self, lineage: Lineage) -> str:
        """Write the final adapter/weights (+ lineage.json) and publish them as the run's output."""
        in_store = self.store.local_path(self.records.layout.output)
        if in_store is not None:
            staging = Path(in_store).with_name("output.partial")
        else:
            staging = node_local_dir() / "outputs" / self.spec.name
        out = write_output(self.strategy, self.tokenizer, self.spec, lineage, staging)
        if out is not None:
            if in_store is not None:
                import shutil

                shutil.rmtree(in_store, ignore_errors=True)
                os.replace(out, in_store)
            else:
                self.records.publish_output(out)
        if dist.is_initialized():
            dist.barrier(group=self.metrics_pg)
        return self.records.output_uri()


def train_worker(config: dict) -> None:
    """Ray Train entry point (``train_loop_per_worker``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    Trainer(config).run()
