"""Deterministic held-out split: the ``k = round(n * fraction)`` rows with the smallest seeded content hash.

The assignment depends only on the seed and each row's content, never on file order or the machine, and
the two outputs never share a row (the sanitized input is already de-duplicated; identical rows, if
de-duplication is off, have the same hash and land on the same side).
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from pathlib import Path


def heldout_count(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def split_file(src: Path, split_hashes: array, fraction: float, train_out: Path,
               heldout_out: Path) -> tuple[dict[str, str], array]:
    """Write train/heldout JSONL files; returns ({"train": sha256, "heldout": sha256}, heldout mask as bytes)."""
    n = len(split_hashes)
    k = heldout_count(n, fraction)
    threshold = heapq.nsmallest(k, split_hashes)[-1] if k else -1
    mask = array("b", (1 if h <= threshold else 0 for h in split_hashes))
    hashes = {"train": hashlib.sha256(), "heldout": hashlib.sha256()}
    with open(src, "rb") as f, open(train_out, "wb") as tr, open(heldout_out, "wb") as ho:
        for i, line in enumerate(f):
            if mask[i]:
                ho.write(line)
                hashes["heldout"].update(line)
            else:
                tr.write(line)
                hashes["train"].update(line)
    return {name: h.hexdigest() for name, h in hashes.items()}, mask
