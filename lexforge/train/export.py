"""Final outputs: a PEFT adapter or full safetensors weights (+ lineage.json) and LoRA merge for export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def output_key(run_name: str) -> str:
    return f"runs/{run_name}/output"


def write_output(strategy, tokenizer, spec, lineage: dict, local_dir: Path) -> Path | None:
    """Gather the full state dict (collective) and, on rank 0, save it in HF/PEFT format into ``local_dir``."""
    sd = strategy.full_state_dict()
    if sd is None:
        return None
    local_dir = Path(local_dir)
    shutil.rmtree(local_dir, ignore_errors=True)
    local_dir.mkdir(parents=True)
    model = strategy.unwrapped()
    if spec.method in ("lora", "qlora"):
        model.save_pretrained(local_dir, state_dict=sd, safe_serialization=True)
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.save_pretrained(local_dir, state_dict=sd, safe_serialization=True)
    tokenizer.save_pretrained(local_dir)
    (local_dir / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str))
    return local_dir


def publish_output(store, run_name: str, local_dir: Path) -> str:
    """Copy a finished output directory into the store (lineage.json last, so its presence means complete)."""
    key = output_key(run_name)
    if getattr(store, "local_path", None) and store.local_path(key) == Path(local_dir):
        return store.url(key)
    store.delete_prefix(key)
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    for p in sorted(files, key=lambda p: p.name == "lineage.json"):
        store.put_file(f"{key}/{p.relative_to(local_dir).as_posix()}", p)
    return store.url(key)


def merge_adapter(base_model: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Merge a LoRA adapter into its base model and save full safetensors weights (for export / non-LoRA serving)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexforge.models import resolve_model_path

    base_path = resolve_model_path(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tok_src = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").is_file() else base_path
    AutoTokenizer.from_pretrained(tok_src).save_pretrained(out)
    lineage_src = Path(adapter_dir) / "lineage.json"
    lineage = json.loads(lineage_src.read_text()) if lineage_src.is_file() else {}
    lineage.update({"merged_from_adapter": str(adapter_dir), "base_model": base_path})
    (out / "lineage.json").write_text(json.dumps(lineage, indent=2))
    return out
