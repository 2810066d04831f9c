"""``prepare_dataset(spec)``: sanitize -> token stats -> held-out split -> content-addressed store -> lineage.

This is what training and the Prefect flows call (see docs/dev/store-layout.md).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lexforge.config import JobSpec, lexforge_home
from lexforge.data import store as cas
from lexforge.data.sanitize import DataError, SanitizeOptions, Sanitizer, sniff_format
from lexforge.data.split import split_file
from lexforge.data.tokens import TokenCounter, load_tokenizer, token_stats, tokenizer_name

STAGE_FORMAT = {"sft": "chat", "dpo": "preference", "grpo": "grpo"}


@dataclass
class PreparedDataset:
    format: str                 # "chat" | "preference" | "grpo"
    train_path: Path            # local JSONL of clean canonical rows
    heldout_path: Path | None   # local JSONL, never overlaps train
    digests: dict[str, str]     # {"source", "sanitized", "train", "heldout"} sha256 hex
    uris: dict[str, str]        # store URIs of the same ("source" is where the raw input was read from)
    report: dict                # sanitize report (total, kept, repaired, dropped by reason + line numbers)
    token_stats: dict           # {"rows", "total_tokens", "p50", "p95", "max"} of the train split
    lineage: dict = field(default_factory=dict)  # the lineage.json record

    def to_dict(self) -> dict:
        d = asdict(self)
        d["train_path"] = str(self.train_path)
        d["heldout_path"] = str(self.heldout_path) if self.heldout_path else None
        return d


def spec_sanitize_options(spec: JobSpec, fmt: str) -> SanitizeOptions:
    d = spec.data
    return SanitizeOptions(format=fmt, max_seq_len=d.max_seq_len, on_too_long=d.on_too_long, strict=d.strict,
                           dedupe=d.dedupe, near_dedupe=d.near_dedupe, seed=d.seed)


def _tokenizer_for(spec: JobSpec) -> Any:
    return load_tokenizer(spec.model.tokenizer or spec.model.base, trust_remote_code=spec.model.trust_remote_code)


def _check_stage(spec: JobSpec, fmt: str, source: str) -> None:
    want = STAGE_FORMAT[spec.stage]
    if fmt != want:
        raise DataError(f"{source} holds {fmt} data but stage={spec.stage} needs {want} data; "
                        f"point data.train at {want} rows or change stage")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def prepare_dataset(spec: JobSpec, tokenizer=None, work_dir: Path | None = None, progress=None) -> PreparedDataset:
    """Sanitize ``spec.data.train`` (and ``spec.data.validation``), split, store by digest, record lineage.

    ``tokenizer`` defaults to the spec's model tokenizer; ``progress`` may be a rich ``Progress`` or a
    callable ``(done_bytes, total_bytes)``. Raises :class:`DataError` on unusable input (strict mode: on
    the first bad row, naming file and line).
    """
    work = Path(work_dir) if work_dir else lexforge_home() / "work" / spec.name / "data"
    work.mkdir(parents=True, exist_ok=True)
    endpoint = spec.storage.s3_endpoint_url
    src = cas.fetch_source(spec.data.train, work, endpoint)
    if not src.is_file():
        raise DataError(f"training data {spec.data.train} not found")
    fmt = spec.data.format if spec.data.format != "auto" else sniff_format(src)
    _check_stage(spec, fmt, spec.data.train)  # before any work: a wrong file fails in milliseconds
    tok = tokenizer if tokenizer is not None else _tokenizer_for(spec)
    opts = spec_sanitize_options(spec, fmt)
    counter = TokenCounter(tok, spec.data.max_seq_len, spec.data.on_too_long)
    sanitizer = Sanitizer(opts, counter)
    res = sanitizer.run(src, work / "sanitized.jsonl", progress=progress, row_log=work / "rows.jsonl")
    res.report["source"] = spec.data.train  # the URI as configured, not a local download path
    if res.report["kept"] == 0:
        raise DataError(f"{spec.data.train}: no usable rows ({res.report['dropped_total']} dropped; "
                        f"see {work / 'report.json'} or run `lexforge data check {spec.data.train}`)")
    _write_json(work / "report.json", res.report)

    digests = {"source": res.source_sha256, "sanitized": res.sha256}
    train_path, heldout_path = work / "train.jsonl", work / "heldout.jsonl"
    counts = res.token_counts
    if spec.data.validation:
        vsrc = cas.fetch_source(spec.data.validation, work / "validation", endpoint)
        vres = Sanitizer(spec_sanitize_options(spec, fmt), counter).run(
            vsrc, heldout_path, progress=progress, row_log=work / "validation.rows.jsonl", against=sanitizer)
        shutil.copyfile(res.path, train_path)
        digests.update(train=res.sha256, heldout=vres.sha256, validation_source=vres.source_sha256)
        res.report["validation"] = dict(vres.report, source=spec.data.validation)
        train_counts = list(counts)
        if vres.report["kept"] == 0:
            heldout_path = None
            digests.pop("heldout")
    else:
        split, mask = split_file(res.path, res.split_hashes, spec.data.holdout_fraction, train_path, heldout_path)
        digests.update(split)
        train_counts = [c for c, m in zip(counts, mask) if not m]
        if not any(mask):
            heldout_path.unlink(missing_ok=True)
            heldout_path = None
            digests.pop("heldout")
    stats = token_stats(train_counts)

    store = _open_store(spec)
    uris = {"source": spec.data.train}
    reused: dict[str, bool] = {}
    uris["sanitized"], reused["sanitized"] = cas.store_dataset(store, digests["sanitized"], res.path)
    uris["train"], reused["train"] = cas.store_dataset(store, digests["train"], train_path)
    if heldout_path is not None:
        uris["heldout"], reused["heldout"] = cas.store_dataset(store, digests["heldout"], heldout_path)
    lineage = build_lineage(spec, fmt, digests, uris, res.report, stats, tok, reused)
    _write_json(work / "lineage.json", lineage)
    cas.put_immutable_json(store, cas.dataset_key(digests["sanitized"], "report.json"), res.report)
    cas.put_immutable_json(store, cas.dataset_key(digests["sanitized"], "lineage.json"), lineage)
    for part in ("train", "heldout"):
        if part in digests and digests[part] != digests["sanitized"]:
            cas.put_immutable_json(store, cas.dataset_key(digests[part], "lineage.json"), lineage)
    res.report["token_stats_train"] = stats
    _write_json(work / "report.json", res.report)
    return PreparedDataset(format=fmt, train_path=train_path, heldout_path=heldout_path, digests=digests,
                           uris=uris, report=res.report, token_stats=stats, lineage=lineage)


def _open_store(spec: JobSpec):
    from lexforge.storage import store_for_spec

    return store_for_spec(spec)


def build_lineage(spec: JobSpec, fmt: str, digests: dict, uris: dict, report: dict, stats: dict, tok: Any,
                  reused: dict) -> dict:
    rows = {"sanitized": report["kept"], "train": stats["rows"]}
    rows["heldout"] = report["kept"] - stats["rows"] if "validation" not in report else report["validation"]["kept"]
    lineage = {
        "kind": "lexforge.dataset_lineage",
        "version": 1,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "spec_name": spec.name,
        "spec_hash": spec.spec_hash(),
        "format": fmt,
        "source": {"uri": uris["source"], "sha256": digests["source"], "rows": report["total"]},
        "sanitized": {"sha256": digests["sanitized"], "uri": uris["sanitized"], "rows": rows["sanitized"],
                      "derived_from": digests["source"]},
        "splits": {},
        "tokenizer": tokenizer_name(tok),
        "settings": dict(report["settings"], holdout_fraction=spec.data.holdout_fraction,
                         validation=spec.data.validation),
        "reused": reused,
    }
    if "validation_source" in digests:
        lineage["validation_source"] = {"uri": spec.data.validation, "sha256": digests["validation_source"]}
    for part in ("train", "heldout"):
        if part in digests:
            parent = digests["validation_source"] if part == "heldout" and "validation_source" in digests \
                else digests["sanitized"]
            lineage["splits"][part] = {"sha256": digests[part], "uri": uris[part], "rows": rows[part],
                                       "derived_from": parent}
    return lineage
