"""Streaming sanitizer: JSONL in, canonical JSONL out, every repair and drop counted with its line number.

Memory stays flat in the input size: the file is read line by line, rows are written as soon as their
token length is known (batches of :data:`BATCH` rows), and per kept row only a few integers are held in
flat arrays (two 64-bit dedupe hashes with first line numbers in :class:`HashIndex` tables, a 64-bit split
hash, a token count): roughly 50-80 bytes per distinct row, independent of row size.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lexforge.data.formats import DROP_REASONS, FORMATS, RowDrop, canonicalize, detect_format
from lexforge.data.hashindex import HashIndex
from lexforge.data.normalize import NEAR_DELETE, hash64
from lexforge.data.parse import JsonParser

BATCH = 256
DETECT_LINES = 1000
#: reasons that are removals configured by the user, not errors: strict mode does not fail on them.
NOT_ERRORS = {"duplicate", "near_duplicate", "overlaps_train"}


class DataError(ValueError):
    """Bad input data; the message names file, line and what to do."""


@dataclass
class SanitizeOptions:
    format: str = "auto"
    max_seq_len: int = 1024
    on_too_long: str = "drop"
    strict: bool = False
    dedupe: bool = True
    near_dedupe: bool = True
    seed: int = 42
    max_lines_per_reason: int = 1000

    def __post_init__(self) -> None:
        if self.format not in ("auto", *FORMATS):
            raise DataError(f"unknown data format {self.format!r}; use auto, {', '.join(FORMATS)}")
        if self.on_too_long not in ("drop", "truncate"):
            raise DataError(f"on_too_long must be drop or truncate, not {self.on_too_long!r}")
        if self.max_seq_len <= 8:
            raise DataError(f"max_seq_len must be > 8, not {self.max_seq_len}")


@dataclass
class SanitizeResult:
    path: Path
    report: dict
    sha256: str
    source_sha256: str
    split_hashes: array = field(default_factory=lambda: array("Q"))
    token_counts: array = field(default_factory=lambda: array("I"))


class Progress:
    """Adapter for ``progress``: a rich ``Progress``, a callable ``(done_bytes, total_bytes)`` or None."""

    def __init__(self, progress: Any, description: str, total: int):
        self.p, self.total, self.done = progress, total, 0
        self.task = progress.add_task(description, total=total) if hasattr(progress, "add_task") else None

    def advance(self, n: int) -> None:
        self.done += n
        if self.task is not None:
            self.p.update(self.task, completed=self.done)
        elif callable(self.p):
            self.p(self.done, self.total)


def near_key_of(line: bytes) -> bytes:
    """Near-duplicate key of a canonical JSONL line: lower-cased, ASCII punctuation and whitespace removed.

    Working on the serialised line (one C-level pass) keeps this cheap; field names and roles stay in the key.
    """
    return line.lower().translate(None, NEAR_DELETE)


def check_container(path: Path) -> None:
    """Fail early, with the fix, on files that are not line-delimited UTF-8 text at all."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise DataError(f"{path}: the file is empty")
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{path}: the file is UTF-16; re-export it as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`)")
    if head[:2] == b"\x1f\x8b":
        raise DataError(f"{path}: the file is gzip-compressed; decompress it first (`gunzip -k {path.name}`)")


def sniff_format(path: Path, n: int = DETECT_LINES) -> str:
    check_container(path)
    objs = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            if i >= n:
                break
            try:
                objs.append(json.loads(raw.decode("utf-8").lstrip("\ufeff")))
            except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: bad JSON, NaN, huge ints
                continue
    fmt = detect_format(objs)
    if fmt is None:
        raise DataError(f"{path}: cannot detect the data format from its first {n} lines; expected chat "
                        "({'messages': [...]}), preference ({'prompt','chosen','rejected'}) or grpo "
                        "({'prompt','reference'}) rows, or declare it with data.format / --format")
    return fmt


def _serialise(row: dict) -> bytes:
    """One canonical JSONL line (canonical rows have a fixed key order, so equal rows give equal bytes)."""
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class Sanitizer:
    """One sanitize pass; keeps its dedupe sets so a validation file can be checked against training rows."""

    def __init__(self, opts: SanitizeOptions, counter: Any = None):
        self.opts = opts
        self.counter = counter
        self.exact = HashIndex()
        self.near = HashIndex()

    def run(self, src: Path, out: Path, progress: Any = None, row_log: Path | None = None,
            against: "Sanitizer | None" = None) -> SanitizeResult:
        src, out = Path(src), Path(out)
        if not src.is_file():
            raise DataError(f"{src}: input file not found")
        check_container(src)
        fmt = self.opts.format
        detected = fmt == "auto"
        if detected:
            fmt = sniff_format(src)
        if fmt not in FORMATS:
            raise DataError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
        state = _RunState(self, src, fmt, against)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        log_path = row_log or out.with_name(out.stem + ".rows.jsonl")
        prog = Progress(progress, f"sanitize {src.name}", src.stat().st_size) if progress is not None else None
        started = time.perf_counter()
        try:
            with open(src, "rb") as f, open(tmp, "wb") as w, open(log_path, "w", encoding="utf-8") as log:
                state.writer, state.log = w, log
                for lineno, raw in enumerate(f, 1):
                    state.source_hash.update(raw)
                    if prog:
                        prog.advance(len(raw))
                    state.line(lineno, raw)
                state.flush()
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        report = state.report(detected, time.perf_counter() - started, log_path)
        return SanitizeResult(out, report, state.out_hash.hexdigest(), state.source_hash.hexdigest(),
                              state.split_hashes, state.token_counts)


class _RunState:
    def __init__(self, san: Sanitizer, src: Path, fmt: str, against: Sanitizer | None):
        self.san, self.opts, self.src, self.fmt, self.against = san, san.opts, src, fmt, against
        self.source_hash, self.out_hash = hashlib.sha256(), hashlib.sha256()
        self.seed = str(self.opts.seed).encode() + b"\0"
        self.total = self.kept = self.repaired = self.blank = 0
        self.drops: dict[str, dict] = {}
        self.repairs: dict[str, dict] = {}
        self.notes: dict[str, dict] = {}
        self.pending: list[tuple[int, dict, set[str], bytes, int]] = []
        self.split_hashes, self.token_counts = array("Q"), array("I")
        self.writer: Any = None
        self.log: Any = None
        self.parser = JsonParser()

    # ---- bookkeeping -------------------------------------------------------------------------------------------
    def drop(self, lineno: int, reason: str, detail: str) -> None:
        detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")  # printable and storable, always
        if self.opts.strict and reason not in NOT_ERRORS:
            raise DataError(f"{self.src}:{lineno}: {reason}: {detail}. What to do: {DROP_REASONS[reason]} "
                            "(or run without strict mode to drop such rows with a report)")
        d = self.drops.setdefault(reason, {"count": 0, "lines": [], "examples": []})
        d["count"] += 1
        if len(d["lines"]) < self.opts.max_lines_per_reason:
            d["lines"].append(lineno)
        if len(d["examples"]) < 3:
            d["examples"].append({"line": lineno, "detail": detail})
        self.log.write(json.dumps({"line": lineno, "action": "dropped", "reason": reason, "detail": detail}) + "\n")

    def _count_lines(self, table: dict[str, dict], kinds: Any, lineno: int) -> None:
        for r in sorted(kinds):
            e = table.setdefault(r, {"rows": 0, "lines": []})
            e["rows"] += 1
            if len(e["lines"]) < self.opts.max_lines_per_reason:
                e["lines"].append(lineno)

    def keep(self, lineno: int, row: dict, repairs: set[str], tokens: int | None, data: bytes | None = None,
             ekey: int | None = None, notes: frozenset = frozenset()) -> None:
        if data is None:  # rows changed after the duplicate check (truncation) are serialised again
            data = _serialise(row)
            ekey = hash64(data)
        self.writer.write(data)
        self.out_hash.update(data)
        self.split_hashes.append(hash64(self.seed + ekey.to_bytes(8, "big")))
        if tokens is not None:
            self.token_counts.append(tokens)
        self.kept += 1
        if repairs:
            self.repaired += 1
            self._count_lines(self.repairs, repairs, lineno)
            self.log.write(json.dumps({"line": lineno, "action": "repaired", "repairs": sorted(repairs)}) + "\n")
        if notes:  # kept unchanged, but training will not see all of it (e.g. the template ignores `name`)
            self._count_lines(self.notes, notes, lineno)
            self.log.write(json.dumps({"line": lineno, "action": "noted", "notes": sorted(notes)}) + "\n")

    # ---- per line ----------------------------------------------------------------------------------------------
    def line(self, lineno: int, raw: bytes) -> None:
        if not raw.strip():
            self.blank += 1
            return
        self.total += 1
        repairs: set[str] = set()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return self.drop(lineno, "non_utf8", f"byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8")
        if text.startswith("\ufeff"):
            text = text[1:]
            repairs.add("bom")
        tail = "" if raw.endswith(b"\n") else " (last line has no newline: the file looks truncated)"
        try:
            obj, r = self.parser.parse(text, truncated_hint=tail)
            repairs |= r
            row, r = canonicalize(obj, self.fmt)
        except RowDrop as e:
            return self.drop(lineno, e.reason, e.detail)
        repairs |= r
        data = _serialise(row)
        ekey = hash64(data)
        if self.is_duplicate(lineno, data, ekey):
            return
        self.pending.append((lineno, row, repairs, data, ekey))
        if len(self.pending) >= BATCH:
            self.flush()

    def is_duplicate(self, lineno: int, data: bytes, ekey: int) -> bool:
        opts, san = self.opts, self.san
        nkey = hash64(near_key_of(data))
        if self.against is not None:
            first = self.against.exact.get(ekey) or self.against.near.get(nkey)  # line numbers start at 1
            if first is not None:
                self.drop(lineno, "overlaps_train", f"same as training line {first}")
                return True
        # keys are always recorded (a validation file is checked against them even without dedupe)
        first = san.exact.setdefault(ekey, lineno)
        if opts.dedupe and first is not None:
            self.drop(lineno, "duplicate", f"exact duplicate of line {first}")
            return True
        first = san.near.setdefault(nkey, lineno)
        if opts.near_dedupe and first is not None:
            self.drop(lineno, "near_duplicate", f"same text as line {first} up to case, spacing and punctuation")
            return True
        return False

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        counter = self.san.counter
        if counter is None:
            for lineno, row, repairs, data, ekey in batch:
                self.keep(lineno, row, repairs, None, data, ekey)
            return
        measured = counter.measure([b[1] for b in batch], self.fmt)
        for (lineno, _, repairs, data, ekey), m in zip(batch, measured):
            if m.row is None:
                self.drop(lineno, m.reason, m.detail)
            elif m.truncated:
                self.keep(lineno, m.row, repairs | {"truncated"}, m.tokens, notes=m.notes)
            else:
                self.keep(lineno, m.row, repairs, m.tokens, data, ekey, notes=m.notes)

    # ---- result ------------------------------------------------------------------------------------------------
    def report(self, detected: bool, seconds: float, log_path: Path) -> dict:
        counter = self.san.counter
        from lexforge.data.tokens import token_stats, tokenizer_name

        dropped = sum(d["count"] for d in self.drops.values())
        for reason, d in self.drops.items():
            d["hint"] = DROP_REASONS[reason]
            d["lines_truncated"] = d["count"] > len(d["lines"])
        return {
            "source": str(self.src),
            "source_sha256": self.source_hash.hexdigest(),
            "format": self.fmt,
            "format_detected": detected,
            "total": self.total,
            "kept": self.kept,
            "repaired": self.repaired,
            "dropped_total": dropped,
            "blank_lines": self.blank,
            "repairs": dict(sorted(self.repairs.items())),
            "notes": dict(sorted(self.notes.items())),
            "dropped": dict(sorted(self.drops.items())),
            "sanitized_sha256": self.out_hash.hexdigest(),
            "tokenizer": tokenizer_name(counter.tok) if counter else None,
            "chat_template": bool(counter and counter.has_template),
            "token_stats": token_stats(self.token_counts) if counter else None,
            "settings": {k: getattr(self.opts, k) for k in ("max_seq_len", "on_too_long", "strict", "dedupe",
                                                              "near_dedupe", "seed")},
            "row_log": str(log_path),
            "seconds": round(seconds, 3),
        }


def sanitize_file(src: str | Path, out: str | Path, options: SanitizeOptions | None = None, tokenizer: Any = None,
                  progress: Any = None) -> SanitizeResult:
    """Sanitize one JSONL file (see :class:`Sanitizer`); ``tokenizer`` enables length checks, the chat-template
    check (``template_cannot_render``) and token stats."""
    opts = options or SanitizeOptions()
    counter = None
    if tokenizer is not None:
        from lexforge.data.tokens import TokenCounter

        counter = TokenCounter(tokenizer, opts.max_seq_len, opts.on_too_long)
    return Sanitizer(opts, counter).run(Path(src), Path(out), progress=progress)


def check_data(src: str | Path, options: SanitizeOptions | None = None, tokenizer: Any = None,
               progress: Any = None) -> dict:
    """The report of ``lexforge data check`` and of the API's upload check (one code path): sanitize into a
    temporary directory that is removed afterwards; ``row_log`` is None (the row log went with it)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lexforge-check-") as tmp:
        res = sanitize_file(src, Path(tmp) / "out.jsonl", options, tokenizer=tokenizer, progress=progress)
    return dict(res.report, row_log=None)
