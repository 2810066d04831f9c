"""What one lexforge server runs: ``ServeSettings`` (plain, picklable) built from the job spec + CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from lexforge.config import JobSpec


class ChampionSourceConfig(BaseModel):
    """Where the stable name's adapter comes from (see :mod:`lexforge.serve.adapters`).

    kind: ``registry`` = MLflow registry ``@alias`` via ``lexforge.registry.resolve_servable``;
    ``file`` = a JSON pointer file ``{"adapter_path", "version"}`` (written by a flow or by hand);
    ``dir`` = one fixed adapter directory; ``none`` = the stable name serves the base model.
    """

    kind: Literal["registry", "file", "dir", "none"] = "none"
    registered_model: str = "lexforge-legal"
    alias: str = "champion"
    path: str | None = None
    tracking_uri: str | None = None


class ServeSettings(BaseModel):
    base_model: str = Field(..., description="Local path (or hub id) of the base model vLLM loads once.")
    base_name: str = Field(..., description="Model id of the bare base model in /v1/models.")
    served_name: str = "legal-champion"
    adapters: dict[str, str] = Field(default_factory=dict, description="Extra LoRA adapters: name -> PEFT dir.")
    champion: ChampionSourceConfig = Field(default_factory=ChampionSourceConfig)
    tracking_uri: str | None = Field(None, description="MLflow registry the app resolves models:/ versions from "
                                                       "(POST /admin/adapters with model_uri).")
    system_prompt: str = ""
    # engine
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    dtype: str = "auto"
    max_model_len: int = 2048
    max_loras: int = 4
    max_lora_rank: int = 64
    max_num_seqs: int = 32
    enforce_eager: bool = True
    cpu_kv_cache_gb: float = 1.0
    gpu_memory_utilization: float = 0.85
    trust_remote_code: bool = False
    # deployment
    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int = 64
    # auth (sha256 digests only; raw keys never reach the replicas)
    api_key_digests: list[str] = Field(default_factory=list)
    admin_key_digests: list[str] = Field(default_factory=list)

    def resolved_accelerator(self) -> str:
        if self.accelerator != "auto":
            return self.accelerator
        try:
            import torch

            return "gpu" if torch.cuda.is_available() else "cpu"
        except Exception:  # pragma: no cover
            return "cpu"


def _valid_lora_rank(r: int) -> int:
    # vLLM accepts only these ranks for max_lora_rank.
    for allowed in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if r <= allowed:
            return allowed
    return r


def model_max_len(model_path: str) -> int | None:
    """The base model's own context limit (max_position_embeddings), when its config is readable."""
    import json

    cfg = Path(model_path) / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    data = data.get("text_config", data)
    v = data.get("max_position_embeddings")
    return int(v) if v else None


def settings_from_spec(
    spec: JobSpec,
    base_model: str | None = None,
    adapters: dict[str, str] | None = None,
    champion: ChampionSourceConfig | None = None,
    api_key_digests: list[str] | None = None,
    admin_key_digests: list[str] | None = None,
    **overrides,
) -> ServeSettings:
    """Settings for serving ``spec``'s base model (+ adapters) under ``spec.serve.served_name``."""
    from lexforge.models import resolve_model_path, spec_base_path

    base = base_model or spec.model.base
    path = resolve_model_path(base) if base_model else spec_base_path(spec)
    base_name = Path(base).name if Path(base).expanduser().is_dir() else base
    if champion is None:
        champion = ChampionSourceConfig(
            kind="registry" if (spec.tracking.resolved_uri()) else "none",
            registered_model=spec.promotion.registered_model,
            tracking_uri=spec.tracking.resolved_uri(),
        )
    max_len = spec.serve.max_model_len
    limit = model_max_len(path)
    if limit and max_len > limit:
        # vLLM refuses a max_model_len beyond the model's positions; serve what the model supports.
        max_len = limit
    s = ServeSettings(
        base_model=path,
        base_name=base_name,
        served_name=spec.serve.served_name,
        adapters={k: str(Path(v).expanduser().resolve()) for k, v in (adapters or {}).items()},
        champion=champion,
        tracking_uri=spec.tracking.resolved_uri(),
        system_prompt=spec.serve.system_prompt,
        dtype=spec.model.dtype,
        max_model_len=max_len,
        max_loras=spec.serve.max_loras,
        max_lora_rank=_valid_lora_rank(spec.serve.max_lora_rank),
        trust_remote_code=spec.model.trust_remote_code,
        api_key_digests=api_key_digests or [],
        admin_key_digests=admin_key_digests or [],
    )
    return s.model_copy(update=overrides) if overrides else s
