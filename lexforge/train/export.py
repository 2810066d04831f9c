"""Final outputs: a PEFT adapter or full safetensors weights (+ lineage.json) and LoRA merge for export.
Where an output lives in the store is :class:`lexforge.storage.layout.RunLayout` (``output``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lexforge.storage.layout import OUTPUT_LINEAGE_NAME


def write_output(strategy, tokenizer, spec, lineage, local_dir: Path) -> Path | None:
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
    (local_dir / OUTPUT_LINEAGE_NAME).write_bytes(lineage.to_json())
    return local_dir


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
