"""Training data for the worker loop: clean canonical rows -> tokenized examples -> deterministic batches.

Rows come from :func:`lexforge.data.prepare_dataset` when that module is installed (it sanitizes, dedupes and
splits); :func:`read_clean_rows` is the small, swappable fallback that reads canonical JSONL directly.

Batches are a pure function of ``(seed, epoch, micro_index, rank)`` (see :class:`BatchPlan`), so the exact
data position after a resume is just the step number: no iterator state has to be checkpointed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lexforge.storage.layout import DatasetLayout

IGNORE = -100


class DataError(ValueError):
    """Training data is unusable; the message names the file, line and what to do."""


# ---- reading ------------------------------------------------------------------------------------------------


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_clean_rows(path: str | Path) -> list[dict]:
    """Read canonical JSONL rows (already clean). Fails on the first bad line with file and line number."""
    rows: list[dict] = []
    p = Path(path)
    if not p.is_file():
        raise DataError(f"training data {p} not found (set data.train to a JSONL file)")
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p} line {i}: not valid JSON ({e.msg}); run `lexforge data prepare` to sanitize") from None
            if not isinstance(row, dict):
                raise DataError(f"{p} line {i}: expected a JSON object")
            rows.append(row)
    if not rows:
        raise DataError(f"{p}: no rows")
    return rows


def detect_format(row: dict) -> str:
    if "messages" in row:
        return "chat"
    if {"prompt", "chosen", "rejected"} <= row.keys():
        return "preference"
    if {"prompt", "reference"} <= row.keys():
        return "grpo"
    raise DataError(f"cannot tell the data format from keys {sorted(row)}; expected messages | prompt+chosen+rejected "
                    "| prompt+reference")


STAGE_FORMAT = {"sft": "chat", "dpo": "preference", "grpo": "grpo"}


@dataclass
class TrainData:
    """What the driver hands the workers: where the clean rows are and their identity."""

    format: str
    train_path: str
    digest: str
    source: str  # "prepare_dataset" | "direct"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def local_rows(self, store) -> str:
        """A path to the rows on THIS node: the driver's file when this node sees it (one machine, a local store),
        else a verified copy of the stored dataset on the node's local disk (nodes share only the store)."""
        in_store = store.local_path(DatasetLayout(self.digest).data) if self.digest else None
        if in_store is not None and in_store.is_file():
            return str(in_store)
        if Path(self.train_path).is_file() and store.local_path("") is not None:
            return self.train_path
        if not self.digest:
            return self.train_path
        from lexforge.config import node_local_dir
        from lexforge.data.store import fetch_dataset

        dest = node_local_dir() / "datasets" / self.digest / "data.jsonl"
        if dest.is_file():
            return str(dest)
        tmp = dest.with_name(f"data.jsonl.{os.getpid()}.partial")  # ranks of one node may fetch at once
        fetch_dataset(store, self.digest, tmp)
        os.replace(tmp, dest)
        return str(dest)


def resolve_train_data(spec, prepared=None, dataset_digest: str | None = None) -> TrainData:
    """Pick the clean training rows: a given PreparedDataset, the stored dataset ``dataset_digest`` (prepared
    earlier, e.g. by a flow's sanitize step: reused, never sanitized twice), lexforge.data.prepare_dataset, or
    spec.data.train as is. ``TrainData.digest`` is always the sha256 of the rows trained on."""
    want = STAGE_FORMAT[spec.stage]
    if prepared is None and dataset_digest:
        return _stored_train_data(spec, dataset_digest, want)
    if prepared is None:
        try:
            from lexforge.data import prepare_dataset  # type: ignore[attr-defined]
        except ImportError:
            prepare_dataset = None
        if prepare_dataset is not None:
            prepared = prepare_dataset(spec)
    if prepared is not None:
        fmt = prepared.format
        path, digest, source = str(prepared.train_path), prepared.digests.get("train", ""), "prepare_dataset"
        digest = digest or file_digest(path)
    else:
        path = _local_train_path(spec)
        rows = read_clean_rows(path)
        fmt = detect_format(rows[0]) if spec.data.format == "auto" else spec.data.format
        digest, source = file_digest(path), "direct"
    if fmt != want:
        raise DataError(f"stage={spec.stage} needs {want} rows but {path} holds {fmt} rows")
    return TrainData(format=fmt, train_path=path, digest=digest, source=source)


def _stored_train_data(spec, digest: str, want: str) -> TrainData:
    """The train split stored under ``digest`` (content addressed), copied locally and verified."""
    from lexforge.config import lexforge_home
    from lexforge.data.store import fetch_dataset
    from lexforge.storage import store_for_spec
    from lexforge.storage.layout import DatasetLayout

    store = store_for_spec(spec)
    layout = DatasetLayout(digest)
    try:
        lineage = json.loads(store.get_bytes(layout.lineage))
    except FileNotFoundError:
        raise DataError(f"dataset {digest} has no lineage in {store.url(layout.root)}: prepare it first "
                        "(`lexforge data sanitize`) or drop the dataset digest to prepare data.train") from None
    fmt = lineage.get("format")
    if fmt != want:
        raise DataError(f"stage={spec.stage} needs {want} rows but dataset {digest} holds {fmt} rows")
    local = store.local_path(layout.data)
    if local is None or not local.is_file():
        try:
            local = fetch_dataset(store, digest, lexforge_home() / "cache" / "datasets" / digest / "data.jsonl")
        except FileNotFoundError:
            raise DataError(f"dataset {digest} not found in {store.url(layout.root)}") from None
    return TrainData(format=fmt, train_path=str(local), digest=digest, source=f"store:{digest}")


def _local_train_path(spec) -> str:
    uri = spec.data.train
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if uri.startswith("s3://"):
        from lexforge.config import lexforge_home
        from lexforge.storage import open_store

        bucket_key = uri[len("s3://"):]
        bucket, _, key = bucket_key.partition("/")
        store = open_store(f"s3://{bucket}", endpoint_url=spec.storage.s3_endpoint_url, create_bucket=False)
        dest = lexforge_home() / "cache" / "data" / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(key).name
        return str(store.get_file(key, dest))
    return uri


# ---- tokenizing ---------------------------------------------------------------------------------------------


def _as_messages(x: Any, role: str) -> list[dict]:
    return x if isinstance(x, list) else [{"role": role, "content": str(x)}]


def assistant_spans(row: dict, tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans to train on: each assistant turn (its text, its tool
    calls and its end marker) unless it has ``weight: 0``. Tool results, user and system turns are context.

    Rendering goes through :mod:`lexforge.data.render` (the renderer the sanitizer's token counter uses, with the
    row's ``tools``), and each span is cut where the template puts the turn: prefix renders must be prefixes
    of the whole, else the mask cannot be exact and this raises."""
    from lexforge.data.render import render, template_messages

    msgs, tools = template_messages(row["messages"]), row.get("tools")
    text = render(tokenizer, msgs, tools)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(row["messages"]):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        head = render(tokenizer, msgs[:i], tools, add_generation_prompt=True) if i else ""
        upto = render(tokenizer, msgs[: i + 1], tools)
        if not (text.startswith(upto) and upto.startswith(head)):
            raise DataError("the chat template is not prefix-stable; cannot mask non-assistant tokens")
        spans.append((len(head), len(upto)))
    return text, spans


def tokenize_chat(row: dict, tokenizer, max_len: int) -> dict | None:
    """Token ids + labels where only the trained assistant turns (see :func:`assistant_spans`) count."""
    text, spans = assistant_spans(row, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [tok if any(s <= a < e for s, e in spans) else IGNORE for tok, (a, _b) in zip(ids, offsets)]
    ids, labels = ids[:max_len], labels[:max_len]
    if all(lab == IGNORE for lab in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def _prompt_ids(prompt: Any, tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template(_as_messages(prompt, "user"), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _completion_ids(completion: Any, tokenizer) -> list[int]:
    if isinstance(completion, list):
        completion = "".join(m["content"] for m in completion if m.get("role") == "assistant")
    eos = tokenizer.eos_token or ""
    return tokenizer(str(completion) + eos, add_special_tokens=False)["input_ids"]


def tokenize_preference(row: dict, tokenizer, max_len: int) -> dict | None:
    p = _prompt_ids(row["prompt"], tokenizer)
    out = {}
    for k in ("chosen", "rejected"):
        c = _completion_ids(row[k], tokenizer)
        ids = (p + c)[:max_len]
        labels = ([IGNORE] * len(p) + c)[:max_len]
        if all(lab == IGNORE for lab in labels):
            return None
        out[k] = {"input_ids": ids, "labels": labels}
    return out


def tokenize_grpo(row: dict, tokenizer, max_len: int) -> dict | None:
    p = _prompt_ids(row["prompt"], tokenizer)
    if len(p) >= max_len:
        return None
    return {"prompt_ids": p, "reference": str(row["reference"]), "rubric": row.get("rubric")}


TOKENIZERS = {"chat": tokenize_chat, "preference": tokenize_preference, "grpo": tokenize_grpo}


def tokenize_rows(rows: list[dict], fmt: str, tokenizer, max_len: int) -> list[dict]:
    fn = TOKENIZERS[fmt]
    out = [ex for ex in (fn(r, tokenizer, max_len) for r in rows) if ex is not None]
    if not out:
        raise DataError(f"no trainable {fmt} examples after tokenizing with max_seq_len={max_len}")
    return out


# ---- batching -----------------------------------------------------------------------------------------------


def pad_batch(examples: list[dict], pad_id: int) -> dict:
    import torch

    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = torch.tensor(e["input_ids"])
        labels[i, :k] = torch.tensor(e["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@dataclass
class BatchPlan:
    """Deterministic sharded batching: micro-batch ``g`` for ``rank`` depends only on (seed, g, rank).

    Each epoch is a seeded permutation of all examples, cut into global micro-batches of
    ``per_device_batch_size * world_size`` (the ragged tail is dropped). Step ``s`` consumes global
    micro-batches ``s*ga .. s*ga+ga-1``; so the data position after ``s`` committed steps is exactly
    ``s*ga`` micro-batches, whatever happened in between.
    """

    num_examples: int
    batch_size: int
    world_size: int
    grad_accum: int
    seed: int

    @property
    def micro_per_epoch(self) -> int:
        return self.num_examples // (self.batch_size * self.world_size)

    def __post_init__(self) -> None:
        if self.micro_per_epoch == 0:
            raise DataError(f"{self.num_examples} examples cannot fill one global batch of "
                            f"{self.batch_size} x {self.world_size} workers; lower hyperparams.per_device_batch_size")

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        if max_steps:
            return max_steps
        return max(1, math.floor(epochs * self.micro_per_epoch / self.grad_accum))

    def indices(self, micro_index: int, rank: int) -> list[int]:
        epoch, j = divmod(micro_index, self.micro_per_epoch)
        perm = np.random.RandomState((self.seed + epoch) % (2**32)).permutation(self.num_examples)
        start = (j * self.world_size + rank) * self.batch_size
        return perm[start : start + self.batch_size].tolist()

    def position(self, step: int) -> dict:
        g = step * self.grad_accum
        epoch, j = divmod(g, self.micro_per_epoch)
        return {"micro_batches_consumed": g, "epoch": epoch, "micro_in_epoch": j,
                "examples_consumed": g * self.batch_size * self.world_size}
