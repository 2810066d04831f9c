"""Text normalisation for training rows: each change is named so the sanitize report can count it.

``normalize_text(s)`` returns ``(clean, repairs)`` where ``repairs`` is a set drawn from
:data:`TEXT_REPAIRS`. Legal text keeps its line structure: only horizontal whitespace runs inside a
line are collapsed, leading indentation is kept.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

TEXT_REPAIRS = ("unicode_nfc", "nbsp", "crlf", "control_chars", "zero_width", "trim", "whitespace_runs")

_NBSP = re.compile("[\u00a0\u2007\u202f]")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_WS = re.compile(r"[ \t]+$", re.MULTILINE)
_INNER_RUNS = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_NOT_WORD = re.compile(r"[\W_]+")


def normalize_text(s: str) -> tuple[str, set[str]]:
    repairs: set[str] = set()
    if s.isascii():
        out = s
    else:
        out = unicodedata.normalize("NFC", s)
        if out != s:
            repairs.add("unicode_nfc")
        t = _NBSP.sub(" ", out)
        if t != out:
            repairs.add("nbsp")
            out = t
        t = _ZERO_WIDTH.sub("", out)
        if t != out:
            repairs.add("zero_width")
            out = t
    if "\r" in out:
        out = out.replace("\r\n", "\n").replace("\r", "\n")
        repairs.add("crlf")
    t = _CONTROL.sub("", out)
    if t != out:
        repairs.add("control_chars")
        out = t
    t = _TRAILING_WS.sub("", out).strip()
    if t != out:
        repairs.add("trim")
        out = t
    t = _INNER_RUNS.sub(" ", out)
    if t != out:
        repairs.add("whitespace_runs")
        out = t
    return out, repairs


def near_key_text(s: str) -> str:
    """Text reduced for near-duplicate detection: case-folded, only letters and digits."""
    return _NOT_WORD.sub("", s.casefold())


def hash64(data: bytes) -> int:
    """A 64-bit content hash (blake2b) used for dedupe sets and split assignment; keeps per-row memory small."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
