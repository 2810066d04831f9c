"""Lineage carried by every checkpoint and output: which spec, data, base model and code produced it."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """git sha of the lexforge checkout (``+dirty`` when modified), else the installed package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if sha:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"lexforge=={version('lexforge')}"
    except PackageNotFoundError:
        return "unknown"


def build_lineage(spec, base_model: str, data) -> dict:
    return {
        "run_name": spec.name,
        "spec_hash": spec.spec_hash(),
        "dataset_digest": data.digest,
        "dataset_path": data.train_path,
        "dataset_source": data.source,
        "base_model": base_model,
        "method": spec.method,
        "stage": spec.stage,
        "strategy": spec.strategy,
        "code_version": code_version(),
        "parent": spec.tags.get("parent_model") or None,
    }
