"""Training data for the worker loop: clean canonical rows -> tokenized examples -> deterministic batches.

Rows come from :func:`lexforge.data.prepare_dataset` when that module is installed (it sanitizes, dedupes and
splits); :func:`read_clean_rows` is the small, swappable fallback that reads canonical JSONL directly.

Batches are a pure function of ``(seed, step, rank)`` (see :class:`BatchPlan`), so the exact data position after
a resume is just the step number: no iterator state has to be checkpointed.
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
    """A GRPO prompt: its token ids plus what the rewards read (:mod:`lexforge.train.rewards`): the reference,
    the rubric, the prompt as text (the judge's question, citations' context), and the row's optional
    ``context`` (text the answer may cite) and ``labels`` (the closed label set of exact_match et al.)."""
    p = _prompt_ids(row["prompt"], tokenizer)
    if len(p) >= max_len:
        return None
    prompt = row["prompt"]
    text = prompt if not isinstance(prompt, list) else "\n\n".join(
        str(m.get("content", "")) for m in prompt if m.get("role") in ("system", "user"))
    ex = {"prompt_ids": p, "reference": str(row["reference"]), "rubric": row.get("rubric"), "prompt_text": str(text)}
    for k in ("context", "labels"):
        if row.get(k) is not None:
            ex[k] = row[k]
    return ex


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


def example_sizes(ex: dict) -> tuple[int, ...]:
    """Token length of each row of an example: one for chat, chosen + rejected for a pair, the prompt for GRPO."""
    if "prompt_ids" in ex:
        return (len(ex["prompt_ids"]),)
    if "chosen" in ex:
        return (len(ex["chosen"]["input_ids"]), len(ex["rejected"]["input_ids"]))
    return (len(ex["input_ids"]),)


def example_weight(ex: dict) -> int:
    """What a step's loss is normalised by: a chat example's trained tokens (labels after the shift), else 1."""
    if "labels" in ex:
        return sum(1 for lab in ex["labels"][1:] if lab != IGNORE)
    return 1


def collate(rows: list[dict], pad_id: int, packed: bool) -> dict:
    """Token rows -> one micro-batch of tensors.

    ``targets`` are each row's labels shifted left by one (the token predicted at each position; IGNORE where
    nothing is trained and at every row's last position), so a packed row never predicts across examples.
    ``segments`` is the row index of every token (-1 on padding). Packed: one row ``[1, sum(len)]``,
    ``position_ids`` restarting at 0 per row and the varlen boundaries ``cu_seq_lens``; padded: ``[n, max(len)]``
    with an ``attention_mask``. No rows: a one-token dummy with nothing trained (a rank's filler micro-batch).
    """
    import itertools

    import torch

    real = rows or [{"input_ids": [pad_id], "labels": [IGNORE]}]
    lens = [len(r["input_ids"]) for r in real]
    targets = [r["labels"][1:] + [IGNORE] for r in real]
    out: dict = {"rows": len(rows), "tokens": sum(lens) if rows else 0}
    if packed:
        out["input_ids"] = torch.tensor([list(itertools.chain.from_iterable(r["input_ids"] for r in real))])
        out["targets"] = torch.tensor([list(itertools.chain.from_iterable(targets))])
        out["position_ids"] = torch.cat([torch.arange(n) for n in lens])[None]
        out["segments"] = torch.repeat_interleave(torch.arange(len(real)), torch.tensor(lens))[None]
        out["cu_seq_lens"] = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)
        out["max_len"] = max(lens)
    else:
        n = max(lens)
        out["input_ids"] = torch.full((len(real), n), pad_id, dtype=torch.long)
        out["targets"] = torch.full((len(real), n), IGNORE, dtype=torch.long)
        out["attention_mask"] = torch.zeros((len(real), n), dtype=torch.long)
        out["segments"] = torch.full((len(real), n), -1, dtype=torch.long)
        for i, (r, t, k) in enumerate(zip(real, targets, lens)):
            out["input_ids"][i, :k] = torch.tensor(r["input_ids"])
            out["targets"][i, :k] = torch.tensor(t)
            out["attention_mask"][i, :k] = 1
            out["segments"][i, :k] = i
    out["computed"] = out["input_ids"].numel()
    return out


class BatchPlan:
    """Deterministic batches: which rows optimizer step ``s`` consumes, and how they split over ranks and micro-batches.

    Rows: each epoch is a seeded permutation of all examples; epochs are laid end to end as one stream and step
    ``s`` consumes stream positions ``s*B .. s*B+B-1``, ``B = batch_size x grad_accum x world_size`` rows. The SET
    of rows of a step depends on (seed, s, B) only, never on how it is split, and the data position after ``s``
    steps is ``s*B`` rows into the stream (so a run with fewer workers that keeps B can continue from it).

    Split (a pure function of the step's rows and their sizes; every rank computes all of it, no collective):

    * fixed rows (``max_tokens`` None): micro-batch ``m`` of rank ``r`` is rows ``(m*W + r)*bs ..+bs`` of the
      step, ``grad_accum`` micro-batches per rank;
    * token budget: rows go longest first to the least-loaded rank, then each rank's rows are cut into micro-batches
      of at most ``max_tokens`` tokens (packed: real tokens, first-fit decreasing; padded: rows x longest row). Every
      rank runs the same number of micro-batches (the most any rank needs), filling up with empty ones.

    ``sizes[i]`` are the row lengths of example ``i`` (:func:`example_sizes`), ``weights[i]`` what the loss is
    normalised by (:func:`example_weight`).
    """

    def __init__(self, sizes: list[tuple[int, ...]], weights: list[int], batch_size: int, world_size: int,
                 grad_accum: int, seed: int, max_tokens: int | None = None, packed: bool = False):
        self.sizes, self.weights = [tuple(s) for s in sizes], list(weights)
        self.num_examples = len(self.sizes)
        self.batch_size, self.world_size, self.grad_accum, self.seed = batch_size, world_size, grad_accum, seed
        self.max_tokens, self.packed = max_tokens, packed
        self.rows_per_step = batch_size * grad_accum * world_size
        self._perms: dict[int, np.ndarray] = {}
        if self.num_examples < self.rows_per_step:
            raise DataError(f"{self.num_examples} examples cannot fill one optimizer step of {self.rows_per_step} rows "
                            f"(per_device_batch_size {batch_size} x gradient_accumulation_steps {grad_accum} x "
                            f"{world_size} workers); lower hyperparams.per_device_batch_size or "
                            "gradient_accumulation_steps")
        if max_tokens is not None:
            worst = max(range(self.num_examples), key=self._cost1)
            if self._cost1(worst) > max_tokens:
                raise DataError(f"example {worst} needs {self._cost1(worst)} tokens, more than "
                                f"hyperparams.max_tokens_per_batch={max_tokens}; raise it or lower data.max_seq_len")

    # -- which rows --
    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        if max_steps:
            return max_steps
        return max(1, math.floor(epochs * self.num_examples / self.rows_per_step))

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.RandomState((self.seed + epoch) % (2**32)).permutation(self.num_examples)
        return self._perms[epoch]

    def step_rows(self, step: int) -> list[int]:
        """The example indices optimizer step ``step`` consumes (all ranks together), in stream order."""
        out: list[int] = []
        p, end = step * self.rows_per_step, (step + 1) * self.rows_per_step
        while p < end:
            epoch, i = divmod(p, self.num_examples)
            take = min(end - p, self.num_examples - i)
            out += self._perm(epoch)[i : i + take].tolist()
            p += take
        return out

    def step_weight(self, step: int) -> int:
        """Total loss weight of the step over all ranks (trained tokens for SFT, pairs for DPO)."""
        return max(1, sum(self.weights[i] for i in self.step_rows(step)))

    # -- how they split --
    def _cost1(self, i: int) -> int:
        s = self.sizes[i]
        return sum(s) if self.packed else len(s) * max(s)

    def cost(self, idx: list[int]) -> int:
        """Tokens a micro-batch computes: real tokens when packed, rows x longest row when padded."""
        if not idx:
            return 0
        if self.packed:
            return sum(sum(self.sizes[i]) for i in idx)
        return sum(len(self.sizes[i]) for i in idx) * max(max(self.sizes[i]) for i in idx)

    def _bins(self, idx: list[int]) -> list[list[int]]:
        order = sorted(idx, key=lambda i: (-self._cost1(i), i))
        bins: list[list[int]] = []
        if self.packed:  # first-fit decreasing
            loads: list[int] = []
            for i in order:
                c = self._cost1(i)
                j = next((j for j, load in enumerate(loads) if load + c <= self.max_tokens), None)
                if j is None:
                    bins.append([i])
                    loads.append(c)
                else:
                    bins[j].append(i)
                    loads[j] += c
            return bins
        for i in order:  # longest first, so a bin's first row is its longest: next-fit is tight
            if bins and self.cost(bins[-1] + [i]) <= self.max_tokens:
                bins[-1].append(i)
            else:
                bins.append([i])
        return bins

    def step_split(self, step: int) -> list[list[list[int]]]:
        """``split[rank][m]``: example indices of micro-batch ``m`` on ``rank``; every rank has the same count."""
        rows, W = self.step_rows(step), self.world_size
        if self.max_tokens is None:
            bs = self.batch_size
            return [[rows[(m * W + r) * bs : (m * W + r + 1) * bs] for m in range(self.grad_accum)] for r in range(W)]
        per_rank: list[list[int]] = [[] for _ in range(W)]
        loads = [0] * W
        for i in sorted(rows, key=lambda i: (-self._cost1(i), i)):
            r = loads.index(min(loads))
            per_rank[r].append(i)
            loads[r] += self._cost1(i)
        bins = [self._bins(idx) for idx in per_rank]
        n = max(len(b) for b in bins)
        return [b + [[] for _ in range(n - len(b))] for b in bins]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        return self.step_split(step)[rank]

    def token_counts(self, step: int) -> tuple[int, int]:
        """(real tokens, computed tokens incl. padding) of the whole step over all ranks."""
        split = self.step_split(step)
        real = sum(sum(self.sizes[i]) for rank in split for mb in rank for i in mb)
        return real, sum(self.cost(mb) for rank in split for mb in rank)

    def position(self, step: int) -> dict:
        """The data position after ``step`` committed steps (JSON; stored in every checkpoint)."""
        p = step * self.rows_per_step
        pos = {"step": step, "rows_consumed": p, "epoch": p // self.num_examples,
               "row_in_epoch": p % self.num_examples, "rows_per_step": self.rows_per_step, "seed": self.seed,
               "examples_consumed": p}
        if self.max_tokens is None:
            pos["micro_batches_consumed"] = step * self.grad_accum
        return pos


def build_batch_plan(examples: list[dict], hp, world_size: int, grad_accum: int | None = None) -> BatchPlan:
    """The :class:`BatchPlan` for tokenized ``examples`` under ``spec.hyperparams``. ``grad_accum`` overrides the
    spec's accumulation (an elastic resume on fewer workers keeps the global batch: ``JobSpec.grad_accum_for``),
    which keeps the rows of every step, so the data position stays exact across world sizes."""
    return BatchPlan([example_sizes(e) for e in examples], [example_weight(e) for e in examples],
                     hp.per_device_batch_size, world_size, grad_accum or hp.gradient_accumulation_steps, hp.seed,
                     max_tokens=hp.max_tokens_per_batch, packed=hp.packing)
