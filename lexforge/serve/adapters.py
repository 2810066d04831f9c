"""Adapters by name, and where the champion comes from.

``AdapterTable`` maps every client-visible model name (the base model, each registered adapter, and the
stable ``served_name``) to an :class:`AdapterRef`. A promotion builds the new ref, loads it into the engine,
then swaps one dict entry: requests that already resolved their ref finish on the old adapter, every
request resolved after the swap gets the new one; nothing is restarted and nothing fails.

A ``ChampionSource`` answers "which adapter is champion now?". Three kinds:

- ``RegistryChampion``: the MLflow registry (``lexforge.registry.resolve_servable(name, alias)``).
- ``PointerFileChampion``: a JSON file ``{"adapter_path": ..., "version": ...}`` (no MLflow needed).
- ``FixedChampion``: one adapter directory (or none = the base model).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lexforge.serve.settings import ChampionSourceConfig


class AdapterError(ValueError):
    """An adapter cannot be served (missing dir, not PEFT, rank too large, wrong base...)."""


@dataclass(frozen=True)
class Champion:
    adapter_path: str | None  # None = the base model itself
    version: str
    base_model: str | None = None


@dataclass(frozen=True)
class AdapterRef:
    name: str                 # client-visible name
    path: str | None          # PEFT dir; None = base model
    version: str              # shown in X-Lexforge-Model-Version
    lora_id: int | None       # vLLM lora_int_id; None = base model
    source: str = "static"    # static | champion | admin

    @property
    def engine_name(self) -> str:
        return f"{self.name}@{self.version}"


class ChampionSource(Protocol):
    def resolve(self) -> Champion: ...


class FixedChampion:
    def __init__(self, path: str | None, version: str = "fixed"):
        self.path, self.version = path, version

    def resolve(self) -> Champion:
        return Champion(self.path, self.version)


class PointerFileChampion:
    """Reads ``{"adapter_path": str | null, "version": str, "base_model": str?}`` on every resolve."""

    def __init__(self, path: str):
        self.path = Path(path)

    def resolve(self) -> Champion:
        if not self.path.is_file():
            raise AdapterError(f"champion pointer file {self.path} not found")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise AdapterError(f"champion pointer file {self.path}: not valid JSON ({e.msg}, line {e.lineno})")
        if "version" not in data or "adapter_path" not in data:
            raise AdapterError(f"champion pointer file {self.path}: needs keys 'adapter_path' and 'version'")
        return Champion(data["adapter_path"], str(data["version"]), data.get("base_model"))


class RegistryChampion:
    """The MLflow registry's ``@alias`` version, via ``lexforge.registry.resolve_servable``."""

    def __init__(self, registered_model: str, alias: str = "champion", tracking_uri: str | None = None):
        self.registered_model, self.alias, self.tracking_uri = registered_model, alias, tracking_uri

    def resolve(self) -> Champion:
        from lexforge.registry import resolve_servable

        s = resolve_servable(self.registered_model, alias=self.alias, tracking_uri=self.tracking_uri)
        return Champion(getattr(s, "adapter_path", None) and str(s.adapter_path), str(s.version),
                        getattr(s, "base_model", None) and str(s.base_model))


def make_champion_source(cfg: ChampionSourceConfig) -> ChampionSource:
    if cfg.kind == "registry":
        return RegistryChampion(cfg.registered_model, cfg.alias, cfg.tracking_uri)
    if cfg.kind == "file":
        return PointerFileChampion(cfg.path or "")
    if cfg.kind == "dir":
        return FixedChampion(cfg.path, version=Path(cfg.path or "base").name)
    return FixedChampion(None, version="base")


def check_adapter_dir(path: str, max_lora_rank: int, base_model: str | None = None) -> dict:
    """Validate a PEFT LoRA dir (and, given ``base_model``, that its tensors fit that base); returns its
    adapter_config. Raises AdapterError naming what is wrong."""
    p = Path(path)
    cfg_file = p / "adapter_config.json"
    if not p.is_dir():
        raise AdapterError(f"adapter directory {p} does not exist")
    if not cfg_file.is_file():
        raise AdapterError(f"{p} is not a PEFT adapter (no adapter_config.json); full-weight models need their "
                           f"own deployment (--base {p})")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_file}: not valid JSON ({e.msg}, line {e.lineno})")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{cfg_file}: peft_type {cfg.get('peft_type')!r} is not LORA; vLLM serves LoRA adapters only")
    r = int(cfg.get("r", 0))
    if r > max_lora_rank:
        raise AdapterError(f"{cfg_file}: LoRA rank r={r} exceeds serve.max_lora_rank={max_lora_rank}; "
                           f"raise serve.max_lora_rank")
    if not any(p.glob("adapter_model.*")):
        raise AdapterError(f"{p}: no adapter_model.safetensors / .bin weights")
    if base_model:
        from lexforge.models import AdapterMismatch, check_adapter_fits_base

        try:
            check_adapter_fits_base(p, base_model)
        except AdapterMismatch as e:
            raise AdapterError(str(e)) from None
    return cfg


class AdapterTable:
    """Client-visible name -> AdapterRef. Mutated only on the replica's event loop (atomic swaps)."""

    def __init__(self, base_name: str):
        self._ids = itertools.count(1)
        self._id_by_key: dict[tuple[str, str], int] = {}
        self.base_name = base_name
        self._refs: dict[str, AdapterRef] = {base_name: AdapterRef(base_name, None, "base", None)}

    def names(self) -> list[str]:
        return list(self._refs)

    def refs(self) -> list[AdapterRef]:
        return list(self._refs.values())

    def get(self, name: str) -> AdapterRef | None:
        return self._refs.get(name)

    def build(self, name: str, path: str | None, version: str, source: str = "static") -> AdapterRef:
        """A ref for ``path`` (same path+version keeps its vLLM id, so re-registering is idempotent)."""
        if path is None:
            return AdapterRef(name, None, version, None, source)
        path = str(Path(path).resolve())
        key = (path, version)
        if key not in self._id_by_key:
            self._id_by_key[key] = next(self._ids)
        return AdapterRef(name, path, version, self._id_by_key[key], source)

    def put(self, ref: AdapterRef) -> AdapterRef | None:
        """Install ``ref`` under its name; returns the ref it replaced."""
        old = self._refs.get(ref.name)
        self._refs[ref.name] = ref
        return old
