"""Driver side: ``run_training(spec)`` launches the job on Ray Train (V2 ``TorchTrainer``) and returns a
:class:`TrainResult`. Re-running with the same ``spec.name`` and storage resumes from the newest committed
checkpoint (worker deaths are retried in-job by ``FailureConfig(max_failures)``; a lost driver is recovered by
running the same command again). A completed run is not retrained: its result is returned as is.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lexforge.config import JobSpec, lexforge_home
from lexforge.storage import store_for_spec
from lexforge.train.data import resolve_train_data
from lexforge.train.export import output_key
from lexforge.train.lineage import build_lineage
from lexforge.train.loop import progress_key, result_key, train_worker
from lexforge.train.model import SetupError
from lexforge.train.preemption import clear_stop, request_stop
from lexforge.train import tracking

#: env vars forwarded to Ray Train workers (never credentials: those come from the cluster's environment).
FORWARD_ENV = ("LEXFORGE_HOME", "LEXFORGE_PREEMPT_AT_STEP", "LEXFORGE_STEP_DELAY_S", "LEXFORGE_S3_ENDPOINT_URL", "HF_HUB_OFFLINE",
               "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", "TORCH_EXTENSIONS_DIR",
               "DS_ACCELERATOR", "NCCL_DEBUG", "NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_P2P_DISABLE",
               "NCCL_NVLS_ENABLE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "OMP_NUM_THREADS", "MLFLOW_TRACKING_URI",
               "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "PYTHONHASHSEED")


@dataclass
class TrainResult:
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
    details: dict = field(default_factory=dict)

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
    if spec.stage == "grpo" and spec.hyperparams.per_device_batch_size * spec.hyperparams.grpo_num_generations > 256:
        raise SetupError("per_device_batch_size * grpo_num_generations > 256 sequences per micro-batch; lower one")


def build_scaling_config(spec: JobSpec):
    from ray.train import ScalingConfig

    r = spec.resources
    res = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        res["GPU"] = r.gpus_per_worker
    return ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=res,
                         accelerator_type=r.accelerator_type, placement_strategy="PACK")


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
    """Reads runs/<name>/progress.json from the store and calls ``on_progress`` when it changes."""

    def __init__(self, store, run_name: str, on_progress: Callable[[dict], None] | None, every_s: float = 1.0):
        self.store, self.run_name, self.cb, self.every_s = store, run_name, on_progress, every_s
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
            raw = self.store.get_bytes(progress_key(self.run_name))
        except Exception:  # noqa: BLE001
            return
        if raw != self._last:
            self._last = raw
            try:
                self.cb(json.loads(raw))
            except Exception:  # noqa: BLE001 - a UI callback must not break training
                pass

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()


class DriverSigterm:
    """On SIGTERM to the driver: ask the workers to checkpoint at the next step boundary and exit cleanly."""

    def __init__(self, store, run_name: str):
        self.store, self.run_name, self.prev, self.received = store, run_name, None, False

    def _handler(self, signum, frame) -> None:
        self.received = True
        request_stop(self.store, self.run_name, reason=f"driver signal {signum}")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.prev = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            signal.signal(signal.SIGTERM, self.prev)


# ---- entry --------------------------------------------------------------------------------------------------


def _read_result(store, run_name: str) -> dict | None:
    try:
        return json.loads(store.get_bytes(result_key(run_name)))
    except (FileNotFoundError, ValueError):
        return None


def _local_output(store, run_name: str) -> Path:
    key = output_key(run_name)
    if hasattr(store, "local_path"):
        return Path(store.local_path(key))
    dest = lexforge_home() / "runs" / run_name / "output"
    for k in store.list(key + "/"):
        store.get_file(k, dest / k[len(key) + 1:])
    return dest


def _to_result(spec: JobSpec, store, res: dict, run_id: str | None) -> TrainResult:
    status = res["status"]
    out_dir = _local_output(store, spec.name) if status == "completed" else Path()
    return TrainResult(
        run_name=spec.name, output_dir=out_dir, output_uri=res.get("output_uri", ""), is_adapter=res["is_adapter"],
        base_model=res["base_model"], steps=res["steps"], final_loss=res.get("final_loss"),
        resumed_from_step=res.get("resumed_from_step"), mlflow_run_id=run_id, lineage=res["lineage"], status=status,
        losses={int(k): v for k, v in res.get("losses", {}).items()},
        details={k: res.get(k) for k in ("checkpoint_stall_s", "checkpoint_saves", "train_seconds", "tokens_total",
                                          "committed_steps", "preemption_reason",
                                          "first_step_at", "total_steps", "world_size", "sigterm_handler")},
    )


def run_training(spec: JobSpec, prepared=None, on_progress: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``spec`` on Ray Train; resumes if the run already has committed checkpoints."""
    from lexforge.models import resolve_model_path

    validate_for_launch(spec)
    base = resolve_model_path(spec.model.base)
    data = resolve_train_data(spec, prepared)
    store = store_for_spec(spec)
    lineage = build_lineage(spec, base, data)
    done = _read_result(store, spec.name)
    if done and done.get("status") == "completed" and done.get("lineage", {}).get("spec_hash") == spec.spec_hash():
        return _to_result(spec, store, done, done.get("mlflow_run_id"))
    clear_stop(store, spec.name)
    store.delete(result_key(spec.name))
    run_id = tracking.start_run(spec, lineage)
    config = {"spec": spec.model_dump(mode="json"), "data": data.to_dict(), "base_model": base, "lineage": lineage,
              "mlflow_uri": tracking.tracking_uri(spec), "mlflow_run_id": run_id}
    ensure_ray(spec)
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(train_worker, train_loop_config=config, scaling_config=build_scaling_config(spec),
                           torch_config=build_torch_config(spec), run_config=build_run_config(spec))
    status = "failed"
    res = None
    try:
        with DriverSigterm(store, spec.name), ProgressPoller(store, spec.name, on_progress):
            trainer.fit()
        res = _read_result(store, spec.name)
        if res is None:
            raise TrainingFailed(f"run {spec.name!r} finished without writing {result_key(spec.name)}")
        res["mlflow_run_id"] = run_id
        store.put_bytes(result_key(spec.name), json.dumps(res, default=str).encode())
        status = res["status"]
        result = _to_result(spec, store, res, run_id)
        return result
    finally:
        clear_stop(store, spec.name)
        try:
            out = _local_output(store, spec.name) if status == "completed" else None
            tracking.finish_run(spec, run_id, status, out, res)
        except Exception:  # noqa: BLE001 - never mask the training outcome
            pass


def wait_for_progress(store, run_name: str, min_step: int, timeout: float = 120.0) -> dict:
    """Test/bench helper: block until progress.json reports at least ``min_step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            p = json.loads(store.get_bytes(progress_key(run_name)))
            if (p.get("step") or 0) >= min_step:
                return p
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"run {run_name} did not reach step {min_step} in {timeout}s")
