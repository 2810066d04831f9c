"""One JSONL line -> a Python object, refusing what Python's ``json`` lets through but later steps cannot use.

``json.loads`` accepts things that would crash or silently change a row further on; :class:`JsonParser` turns
each into a :class:`RowDrop` (or a named repair) instead:

- a duplicated key (``json`` keeps the last value silently): same value twice -> repair ``duplicate_key_removed``;
  different values -> drop ``duplicate_key``;
- a lone UTF-16 surrogate escape (``"\\ud800"``): a string Python cannot encode as UTF-8 -> ``invalid_unicode``;
- ``NaN`` / ``Infinity`` and numbers that overflow to infinity (not JSON; they would be written out as invalid
  JSON) and integers past Python's digit limit -> ``invalid_json``;
- nesting deeper than the parser's recursion limit -> ``invalid_json``.

The same parser reads tool-call ``arguments`` (a JSON string inside the row), so they get the same checks.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from lexforge.data.reasons import RowDrop, short

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: deepest nesting accepted in free-form JSON that is carried into canonical rows (tool schemas, arguments)
MAX_DEPTH = 64


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not valid JSON (use null or a number)")


class JsonParser:
    """Reusable: one decoder whose object hook records duplicated keys of the text being parsed."""

    def __init__(self) -> None:
        self._dups: list[list[tuple[str, Any]]] = []
        self._decoder = json.JSONDecoder(object_pairs_hook=self._pairs, parse_constant=_no_constant)

    def _pairs(self, pairs: list[tuple[str, Any]]) -> dict:
        d = dict(pairs)
        if len(d) != len(pairs):
            self._dups.append(pairs)
        return d

    def parse(self, text: str, where: str = "line", truncated_hint: str = "") -> tuple[Any, set[str]]:
        """``(obj, repairs)``; raises :class:`RowDrop` (invalid_json, duplicate_key, invalid_unicode)."""
        self._dups = []
        prefix = "" if where == "line" else f"{where}: "
        try:
            obj = self._decoder.decode(text)
        except json.JSONDecodeError as e:
            msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg
            raise RowDrop("invalid_json", f"{prefix}{msg} at column {e.colno}{truncated_hint}") from None
        except RecursionError:
            raise RowDrop("invalid_json", f"{prefix}nesting too deep") from None
        except _NotJson as e:
            raise RowDrop("invalid_json", f"{prefix}{e}") from None
        except ValueError as e:  # an integer past Python's digit limit
            raise RowDrop("invalid_json", f"{prefix}a number is too long ({str(e).split(';')[0]})") from None
        repairs: set[str] = set()
        for pairs in self._dups:
            seen: dict[str, Any] = {}
            for k, v in pairs:
                if k in seen and seen[k] != v:
                    raise RowDrop("duplicate_key", f"{prefix}key {short(k)} appears twice with different values "
                                                   f"({short(seen[k], 40)} and {short(v, 40)})")
                seen[k] = v
        if self._dups:
            repairs.add("duplicate_key_removed")
        if ("\\ud" in text or "\\uD" in text) and _SURROGATE_ESCAPE.search(text):
            found = find_lone_surrogate(obj)
            if found:
                raise RowDrop("invalid_unicode", f"{prefix}{found} (a lone UTF-16 surrogate cannot be written as UTF-8)")
        return obj, repairs


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def find_lone_surrogate(obj: Any) -> str | None:
    """Where the first lone surrogate is (``"messages[1].content holds \\ud800 at character 4"``), else None."""
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            m = _SURROGATE.search(value)
            if m:
                return f"{path or 'the row'} holds {ascii(m.group())[1:-1]} at character {m.start() + 1}"
        elif isinstance(value, dict):
            for k, v in value.items():
                m = _SURROGATE.search(k)
                if m:
                    return f"a key of {path or 'the row'} ({ascii(k)}) holds {ascii(m.group())[1:-1]}"
                stack.append((v, _join(path, k)))
        elif isinstance(value, list):
            stack.extend((v, _join(path, i)) for i, v in enumerate(value))
    return None


def check_plain_json(value: Any, where: str, reason: str) -> None:
    """Free-form JSON carried into a canonical row: at most :data:`MAX_DEPTH` deep, finite numbers only."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise RowDrop(reason, f"{where} holds a number too large for JSON ({v})")
        if isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise RowDrop(reason, f"{where} is nested more than {MAX_DEPTH} levels deep")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
