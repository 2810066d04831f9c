"""Driver side: ``run_training(spec)`` launches the job on Ray Train (V2 ``TorchTrainer``) and returns a
:class:`TrainResult`. Re-running with the same ``spec.name`` and storage resumes from the newest committed
checkpoint (worker deaths are retried in-job by ``FailureConfig(max_failures)``; a lost driver is recovered by
running the same command again). A completed run is not retrained: its result is returned as is.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lexforge.config import JobSpec, lexforge_home
from lexforge.storage import store_for_spec
from lexforge.storage.records import Lineage, RunRecords, RunResult
from lexforge.train import tracking
from lexforge.train.data import resolve_train_data
from lexforge.train.lineage import SpecChanged, build_lineage, resumed_lineage
from lexforge.train.loop import train_worker
from lexforge.train.model import SetupError

#: env vars forwarded to Ray Train workers (never credentials: those come from the cluster's environment).
FORWARD_ENV = ("LEXFORGE_HOME", "LEXFORGE_PREEMPT_AT_STEP", "LEXFORGE_STEP_DELAY_S", "LEXFORGE_S3_ENDPOINT_URL", "HF_HUB_OFFLINE",
               "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", "TORCH_EXTENSIONS_DIR",
               "DS_ACCELERATOR", "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_P2P_DISABLE",
               "NCCL_NVLS_ENABLE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "OMP_NUM_THREADS", "MLFLOW_TRACKING_URI",
               "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "PYTHONHASHSEED")


@dataclass
class TrainResult:
    """The driver's view of a finished run: its :class:`RunResult` record plus where the output is locally."""

    run_name: str
    output_dir: Path
    output_uri: str
    is_adapter: bool
    base_model: str
    steps: int
    final_loss: float | None
    resumed_from_step: int | None
    mlflow_run_id: str | None
    lineage: dict
    status: str = "completed"  # "completed" | "preempted" (re-run the same spec to resume)
    losses: dict[int, float] = field(default_factory=dict)
    trained_tokens: int = 0
    details: dict = field(default_factory=dict)

    @classmethod
    def from_record(cls, run_name: str, r: RunResult, output_dir: Path | None) -> "TrainResult":
        return cls(
            run_name=run_name, output_dir=Path(output_dir) if output_dir else Path(), output_uri=r.output_uri,
            is_adapter=r.is_adapter, base_model=r.base_model, steps=r.steps, final_loss=r.final_loss,
            resumed_from_step=r.resumed_from_step, mlflow_run_id=r.mlflow_run_id,
            lineage=r.lineage.model_dump(mode="json") if r.lineage else {}, status=r.status,
            losses=dict(r.losses), trained_tokens=r.trained_tokens,
            details=r.model_dump(mode="json", include={
                "checkpoint_stall_s", "checkpoint_saves", "train_seconds", "committed_steps", "preemption_reason",
                "first_step_at", "total_steps", "world_size", "workers", "sigterm_handler"}),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        return d


class TrainingFailed(RuntimeError):
    pass


# ---- builders -----------------------------------------------------------------------------------------------


def validate_for_launch(spec: JobSpec) -> None:
    """Driver-side fail-fast checks (the worker repeats hardware checks where the hardware is)."""
    r = spec.resources
    if spec.method == "qlora" and not r.use_gpu:
        raise SetupError("method=qlora needs CUDA GPUs (bitsandbytes 4-bit): set resources.gpus_per_worker>0 "
                         "(and resources.accelerator_type, e.g. H100), or use method=lora on CPU")
    if r.use_gpu and r.gpus_per_worker != 1 and spec.strategy != "ddp":
        raise SetupError("sharded strategies expect one GPU per worker (resources.gpus_per_worker=1); "
                         "use more workers instead")
    if spec.strategy == "fsdp" and spec.method == "qlora":
        raise SetupError("method=qlora with strategy=fsdp is not supported; use ddp or deepspeed-zero2")
    if spec.stage == "grpo" and spec.hyperparams.per_device_batch_size * spec.grpo.num_generations > 256:
        raise SetupError("per_device_batch_size * grpo.num_generations > 256 sequences per micro-batch; lower one")


def check_resume(spec: JobSpec, records: RunRecords, lineage: Lineage) -> None:
    """Fail before any GPU work when the run's checkpoints were trained with other settings (the workers check
    again with the exact step count)."""
    latest = records.latest()
    if latest is None:
        return
    total = spec.hyperparams.max_steps or latest.step + 1  # epochs: only the workers know the step count
    try:
        resumed_lineage(latest.lineage, lineage, latest.step, total_steps=total,
                        continuation=spec.checkpoint.on_spec_change == "continue")
    except SpecChanged as e:
        raise SetupError(str(e)) from None


def build_scaling_config(spec: JobSpec):
    from ray.train import ScalingConfig

    r = spec.resources
    res = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        res["GPU"] = r.gpus_per_worker
    workers = (r.min_workers, r.num_workers) if r.min_workers and r.min_workers < r.num_workers else r.num_workers
    return ScalingConfig(num_workers=workers, use_gpu=r.use_gpu, resources_per_worker=res,
                         accelerator_type=r.accelerator_type, placement_strategy=r.placement.upper())


def build_torch_config(spec: JobSpec):
    from ray.train.torch import TorchConfig

    return TorchConfig(backend="nccl" if spec.resources.use_gpu else "gloo", timeout_s=1800)


def worker_env(spec: JobSpec) -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    env.setdefault("LEXFORGE_HOME", str(lexforge_home()))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(lexforge_home() / "torch_extensions"))
    if not spec.resources.use_gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")
    else:
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    return env


def build_run_config(spec: JobSpec):
    from ray.train import FailureConfig, RunConfig

    return RunConfig(
        name=spec.name,
        storage_path=str(lexforge_home() / "ray_results"),
        failure_config=FailureConfig(max_failures=int(os.environ.get("LEXFORGE_MAX_FAILURES", "3"))),
        worker_runtime_env={"env_vars": worker_env(spec)},
    )


def ensure_ray(spec: JobSpec) -> None:
    import ray

    if ray.is_initialized():
        return
    from lexforge import ray_auth

    address = spec.resources.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        with ray_auth.ray_init_env(address):  # Ray token auth (lexforge/ray_auth.py)
            ray.init(address=address, log_to_driver=True)
        return
    r = spec.resources
    need = int(r.num_workers * r.cpus_per_worker + 0.999)
    with ray_auth.ray_init_env("local"):  # token auth, loopback only
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
                 log_to_driver=True, configure_logging=False)


# ---- progress -----------------------------------------------------------------------------------------------


class ProgressPoller:
    """Reads the run's Progress record from the store and calls ``on_progress`` (with its dict) when it changes."""

    def __init__(self, records: RunRecords, on_progress: Callable[[dict], None] | None, every_s: float = 1.0):
        self.records, self.cb, self.every_s = records, on_progress, every_s
        self._stop = threading.Event()
        self._last = None
        self._thread = threading.Thread(target=self._loop, daemon=True, name="lexforge-progress")

    def __enter__(self):
        if self.cb:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.poll()

    def poll(self) -> None:
        if not self.cb:
            return
        try:
            p = self.records.read_progress()
        except Exception:  # noqa: BLE001
            return
        if p is not None and p != self._last:
            self._last = p
            try:
                self.cb(p.model_dump(mode="json"))
            except Exception:  # noqa: BLE001 - a UI callback must not break training
                pass

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()


class DriverSigterm:
    """On SIGTERM to the driver: ask the workers to checkpoint at the next step boundary and exit cleanly."""

    def __init__(self, records: RunRecords):
        self.records, self.prev, self.received = records, None, False

    def _handler(self, signum, frame) -> None:
        self.received = True
        self.records.request_stop(reason=f"driver signal {signum}")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.prev = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            signal.signal(signal.SIGTERM, self.prev)


# ---- entry --------------------------------------------------------------------------------------------------


def _local_output(records: RunRecords) -> Path:
    return records.local_output(lexforge_home() / "cache" / "run-outputs" / records.run)


def run_training(spec: JobSpec, prepared=None, on_progress: Callable[[dict], None] | None = None,
                 dataset_digest: str | None = None) -> TrainResult:
    """Train ``spec`` on Ray Train; resumes if the run already has committed checkpoints.

    The training rows are ``prepared`` (a :class:`lexforge.data.PreparedDataset`), else the stored dataset
    ``dataset_digest`` (the train split a flow's sanitize step already prepared), else ``spec.data.train``
    prepared here."""
    from lexforge.train.parent import resolve_base

    validate_for_launch(spec)
    base, parent = resolve_base(spec)  # model.base = run:<name> -> that run's weights; lineage.parent links it
    data = resolve_train_data(spec, prepared, dataset_digest=dataset_digest)
    records = RunRecords(store_for_spec(spec), spec.name)
    lineage = build_lineage(spec, base, data.digest, data.format, parent)
    done = records.read_result()
    if done and done.status == "completed" and done.lineage and done.lineage.spec_hash == spec.spec_hash():
        return TrainResult.from_record(spec.name, done, _local_output(records))
    check_resume(spec, records, lineage)
    # this attempt becomes the run's only writer: workers of earlier attempts still running are fenced out
    epoch = records.claim_epoch(f"{socket.gethostname()}:{os.getpid()}")
    records.clear_stop()
    records.clear_result()
    run_id = tracking.start_run(spec, lineage)
    config = {"spec": spec.model_dump(mode="json"), "data": data.to_dict(), "base_model": base,
              "lineage": lineage.model_dump(mode="json"), "mlflow_uri": spec.tracking.resolved_uri(),
              "mlflow_run_id": run_id, "epoch": epoch.epoch}
    ensure_ray(spec)
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(train_worker, train_loop_config=config, scaling_config=build_scaling_config(spec),
                           torch_config=build_torch_config(spec), run_config=build_run_config(spec))
    res: RunResult | None = None
    out: Path | None = None
    try:
        with DriverSigterm(records), ProgressPoller(records, on_progress):
            trainer.fit()
        res = records.read_result()
        if res is None and records.current_epoch() > epoch.epoch:
            raise TrainingFailed(f"run {spec.name!r} was taken over by a newer attempt (epoch "
                                 f"{records.current_epoch()}); this attempt (epoch {epoch.epoch}) stopped writing")
        if res is None:
            raise TrainingFailed(f"run {spec.name!r} finished without writing {records.layout.result}")
        res.mlflow_run_id = run_id
        records.write_result(res)
        out = _local_output(records) if res.status == "completed" else None
        return TrainResult.from_record(spec.name, res, out)
    finally:
        records.clear_stop()
        try:
            tracking.finish_run(spec, run_id, res.status if res else "failed", out, res)
        except Exception:  # noqa: BLE001 - never mask the training outcome
            pass


def wait_for_progress(store, run_name: str, min_step: int, timeout: float = 120.0) -> dict:
    """Test/bench helper: block until the run's progress reports at least ``min_step``."""
    records = RunRecords(store, run_name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = records.read_progress()
        if p is not None and p.step >= min_step:
            return p.model_dump(mode="json")
        time.sleep(0.2)
    raise TimeoutError(f"run {run_name} did not reach step {min_step} in {timeout}s")
