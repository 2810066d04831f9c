"""Text normalisation for training rows: each change is named so the sanitize report can count it.

``normalize_text(s)`` returns ``(clean, repairs)`` where ``repairs`` is a set drawn from
:data:`TEXT_REPAIRS`. Legal text keeps its line structure: only horizontal whitespace runs inside a
line are collapsed, leading indentation is kept.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata

TEXT_REPAIRS = ("unicode_nfc", "nbsp", "crlf", "control_chars", "zero_width", "trim", "whitespace_runs")

_NBSP = re.compile("[\u00a0\u2007\u202f]")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_WS = re.compile(r"[ \t]+\n")
_INNER_RUNS = re.compile(r"(\S)[ \t]{2,}(?=\S)")
# near-duplicate key: ASCII punctuation and whitespace removed (bytes.translate is a C loop, ~GB/s)
NEAR_DELETE = (string.punctuation + string.whitespace).encode()


def _has_any(s: str, chars: str) -> bool:
    return any(c in s for c in chars)


def normalize_text(s: str) -> tuple[str, set[str]]:
    """Cheap ``in``/``isprintable`` checks first; the regexes only run on text that needs them.

    NFC comes last: removing a zero-width or control character can put a combining mark next to its base
    letter, and the result must already be normalised (sanitizing sanitized text changes nothing)."""
    repairs: set[str] = set()
    out = s
    if not s.isascii():
        if _has_any(out, "\u00a0\u2007\u202f"):
            out = _NBSP.sub(" ", out)
            repairs.add("nbsp")
        if _has_any(out, "\u200b\u200c\u200d\u2060\ufeff"):
            out = _ZERO_WIDTH.sub("", out)
            repairs.add("zero_width")
    if "\r" in out:
        out = out.replace("\r\n", "\n").replace("\r", "\n")
        repairs.add("crlf")
    if not out.isprintable() and _CONTROL.search(out):
        out = _CONTROL.sub("", out)
        repairs.add("control_chars")
    if " \n" in out or "\t\n" in out:
        out = _TRAILING_WS.sub("\n", out)
        repairs.add("trim")
    if out[:1].isspace() or out[-1:].isspace():
        out = out.strip()
        repairs.add("trim")
    if "  " in out or "\t" in out:
        t = _INNER_RUNS.sub(r"\1 ", out)
        if t != out:
            repairs.add("whitespace_runs")
            out = t
    if not out.isascii() and not unicodedata.is_normalized("NFC", out):
        out = unicodedata.normalize("NFC", out)
        repairs.add("unicode_nfc")
    return out, repairs


def hash64(data: bytes) -> int:
    """A 64-bit content hash (blake2b) used for dedupe sets and split assignment; keeps per-row memory small."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
