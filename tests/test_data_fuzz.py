"""Property-based: no input crashes the checker. Arbitrary bytes, arbitrary JSON values, row-shaped JSON and
mutated valid rows go through ``check_data`` (what ``lexforge data check`` and the API upload run), the sanitizer
(with the real test tokenizer, so the chat-template check runs), the API's ``check_file``, the report renderers and
``prepare_dataset`` (what ``lexforge data sanitize`` runs); every time there is a report with
``total == kept + dropped``, every drop has a line and a reason, and the sanitized rows are a fixed point.

Deterministic (``derandomize``, no example database) and bounded, so CI is reproducible and fast.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lexforge.config import spec_from_dict
from lexforge.data import DROP_REASONS, DataError, SanitizeOptions, prepare_dataset, report_markdown, sanitize_file
from lexforge.data.sanitize import check_data

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FORMATS = st.sampled_from(["auto", "chat", "preference", "grpo"])
#: the only whole-file errors: the input is not line-delimited UTF-8 JSON at all, or has no recognisable rows
WHOLE_FILE = {"is empty": lambda b, f: b == b"", "UTF-16": lambda b, f: b[:2] in (b"\xff\xfe", b"\xfe\xff"),
              "gzip-compressed": lambda b, f: b[:2] == b"\x1f\x8b", "cannot detect the data format": lambda b, f: f == "auto"}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ---- strategies ----------------------------------------------------------------------------------------------

NASTY = ["\ud800", "\udfff", "\ud83d\ude00", "\u00a0", "\u200b", "\ufeff", "\r\n", "\r", "\n", "\t", "\x00", "\x7f",
         "e\u0301", " ", "  ", "<|im_end|>", "{{", "}}", "{%", "\\", '"', "é"]
TEXT = st.one_of(st.text(st.characters(exclude_categories=()), max_size=12), st.sampled_from(NASTY),
                 st.lists(st.sampled_from(NASTY + ["a", "Q", "1"]), max_size=6).map("".join))
KEYS = ["messages", "role", "content", "name", "weight", "tool_calls", "tool_call_id", "tools", "type", "text",
        "function", "arguments", "id", "parameters", "description", "parallel_tool_calls", "functions",
        "function_call", "conversations", "from", "value", "user", "assistant", "prompt", "chosen", "rejected",
        "input", "preferred_output", "non_preferred_output", "question", "reference", "answer", "rubric",
        "image_url", "completion"]
ROLES = ["user", "assistant", "system", "tool", "developer", "human", "gpt", "User", "function", "narrator", ""]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(), st.floats(), TEXT,
                    st.sampled_from(ROLES + ["text", "function", "image_url", "{}", '{"a": 1}', "[1]", "{bad"]))
JSON = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4),
                    max_leaves=24)
ROWISH = st.recursive(SCALARS, lambda c: st.lists(c, max_size=5) | st.dictionaries(
    st.sampled_from(KEYS) | TEXT, c, max_size=6), max_leaves=40)


def _msg(role: str, content, **kw) -> dict:
    return {"role": role, "content": content, **kw}


VALID_ROWS = [
    {"messages": [_msg("user", "What is a deed?"), _msg("assistant", "A written instrument.")]},
    {"messages": [_msg("system", "Be brief.", name="policy"), _msg("user", [{"type": "text", "text": "Draft it."}]),
                  _msg("assistant", "v1", weight=0), _msg("user", "Tighter."), _msg("assistant", "v2", weight=1)]},
    {"messages": [_msg("user", "Case 123?"),
                  _msg("assistant", None, tool_calls=[{"id": "c1", "type": "function", "function": {
                      "name": "lookup", "arguments": '{"case_id": "123"}'}}]),
                  {"role": "tool", "tool_call_id": "c1", "content": "tort, 2019"}, _msg("assistant", "Six years.")],
     "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
     "parallel_tool_calls": False},
    {"prompt": "Limit for tort?", "chosen": "Six years.", "rejected": "Two years."},
    {"input": {"messages": [_msg("user", "Oral land contract valid?")], "tools": []},
     "preferred_output": [_msg("assistant", "No: writing is required.")],
     "non_preferred_output": [_msg("assistant", "Yes.")]},
    {"prompt": [_msg("user", "Limit for deeds?")], "reference": "Twelve years.", "rubric": "cites s.8"},
]


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, path + (i,))


def _set(value, path, new):
    if not path:
        return new
    out = dict(value) if isinstance(value, dict) else list(value)
    out[path[0]] = _set(value[path[0]], path[1:], new)
    return out


def _delete(value, path):
    if len(path) == 1:
        out = dict(value) if isinstance(value, dict) else list(value)
        del out[path[0]]
        return out
    return _set(value, path[:1], _delete(value[path[0]], path[1:]))


def _get(value, path):
    for k in path:
        value = value[k]
    return value


@st.composite
def mutated_line(draw, rows: list[dict]) -> bytes:
    """A valid row with 0-2 small mutations (text made nasty, a value replaced or deleted, a role changed), then
    sometimes a textual one (cut short, a duplicated key, a lone surrogate escape, NaN/1e999)."""
    row = draw(st.sampled_from(rows))
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(list(_paths(row))))
        leaf = _get(row, path)
        op = draw(st.sampled_from(["text", "text", "scalar", "json", "delete", "role"]))
        if op == "text" and isinstance(leaf, str):
            row = _set(row, path, draw(st.sampled_from([leaf + draw(TEXT), draw(TEXT) + leaf, draw(TEXT)])))
        elif op == "delete" and path:
            row = _delete(row, path)
        elif op == "role" and path:
            row = _set(row, path, draw(st.sampled_from(ROLES)))
        else:
            row = _set(row, path, draw(SCALARS if op != "json" else JSON))
    line = json.dumps(row, ensure_ascii=draw(st.booleans()))
    text_op = draw(st.sampled_from(["none"] * 5 + ["cut", "dupkey", "dupkey_same", "surrogate", "nan"]))
    if text_op == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    elif text_op in ("dupkey", "dupkey_same"):
        def dup(m: re.Match) -> str:
            return f'"{m.group(1)}": {m.group(2)}, "{m.group(1)}": {"1" if text_op == "dupkey" else m.group(2)}'
        line = re.sub(r'"(role|content|weight|prompt|name)": ("[^"\\]*"|\d+)', dup, line, count=1)
    elif text_op == "surrogate":
        line = line.replace('"', '"\\ud800', 1 + draw(st.integers(0, 3)))
    elif text_op == "nan":
        line = line.replace("0", "NaN", 1).replace("1", "1e999", 1)
    return line.encode("utf-8", "surrogatepass")


ROWS_BY_FORMAT = {"chat": VALID_ROWS[:3], "preference": VALID_ROWS[3:5], "grpo": VALID_ROWS[5:]}


@st.composite
def mutated_file(draw) -> tuple[bytes, str]:
    fmt = draw(st.sampled_from(sorted(ROWS_BY_FORMAT)))
    lines = draw(st.lists(mutated_line(ROWS_BY_FORMAT[fmt]), min_size=1, max_size=6))
    return b"\n".join(lines) + b"\n", draw(st.sampled_from(["auto", fmt]))


def lines_file(line: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(line, min_size=1, max_size=6).map(lambda ls: b"\n".join(ls) + b"\n")


# ---- the property --------------------------------------------------------------------------------------------


def assert_report(rep: dict, n_lines: int) -> None:
    assert rep["total"] == rep["kept"] + rep["dropped_total"]
    assert rep["dropped_total"] == sum(d["count"] for d in rep["dropped"].values())
    for reason, d in rep["dropped"].items():
        assert reason in DROP_REASONS and d["hint"] == DROP_REASONS[reason]
        assert len(d["lines"]) == d["count"] and all(1 <= n <= n_lines for n in d["lines"])
        assert d["examples"] and all(e["line"] in d["lines"] and e["detail"].strip() for e in d["examples"])
        json.dumps(d, ensure_ascii=False).encode("utf-8")  # storable as UTF-8 (the API keeps it in sqlite)


def check_everything(data: bytes, fmt: str, tok) -> None:
    from rich.console import Console

    from api.checks import check_file
    from lexforge.data.report import print_report

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.jsonl"
        src.write_bytes(data)
        n_lines = len(data.splitlines())
        try:
            rep = check_data(src, SanitizeOptions(format=fmt), tokenizer=tok)
        except DataError as e:
            hits = [k for k in WHOLE_FILE if k in str(e)]
            assert hits and WHOLE_FILE[hits[0]](data, fmt), str(e)
            assert not check_file(src).ok
            return
        assert_report(rep, n_lines)
        print_report(rep, Console(file=io.StringIO(), width=120))
        report_markdown(rep).encode("utf-8")
        up = check_file(src, fmt)
        assert (up.report["total"], up.report["kept"]) == (rep["total"], rep["kept"] + rep["dropped"].get(
            "template_cannot_render", {}).get("count", 0) + rep["dropped"].get("too_long", {}).get("count", 0))
        assert all(isinstance(p["line"], int) and p["reason"] in DROP_REASONS for p in up.report["problems"]
                   if p["reason"] != "no_rows")
        up.summary.encode("utf-8")
        # the sanitized rows are canonical: sanitizing them again keeps every row, unchanged
        res = sanitize_file(src, Path(d) / "out.jsonl", SanitizeOptions(format=rep["format"]), tokenizer=tok)
        if res.report["kept"]:
            again = sanitize_file(res.path, Path(d) / "again.jsonl", SanitizeOptions(format=rep["format"]),
                                  tokenizer=tok)
            r2 = again.report
            assert (r2["kept"], r2["repaired"], r2["dropped_total"]) == (res.report["kept"], 0, 0), r2
            assert again.sha256 == res.sha256


@FUZZ
@given(data=st.binary(max_size=400) | lines_file(st.binary(max_size=80)), fmt=FORMATS)
def test_arbitrary_bytes(tok, data, fmt):
    check_everything(data, fmt, tok)


@FUZZ
@given(data=lines_file(JSON.map(lambda v: json.dumps(v).encode())), fmt=FORMATS)
def test_arbitrary_json_values(tok, data, fmt):
    check_everything(data, fmt, tok)


@FUZZ
@given(data=lines_file(ROWISH.map(lambda v: json.dumps(v).encode())), fmt=FORMATS)
def test_row_shaped_json(tok, data, fmt):
    check_everything(data, fmt, tok)


@settings(FUZZ, max_examples=300)
@given(case=mutated_file())
def test_mutated_valid_rows(tok, case):
    check_everything(*case, tok)


@settings(FUZZ, max_examples=30)
@given(data=lines_file(mutated_line(ROWS_BY_FORMAT["chat"])))
def test_prepare_dataset_on_mutated_chat_rows(tok, data):
    """``lexforge data sanitize`` / training's data step: a report and splits, or 'no usable rows'."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.jsonl"
        src.write_bytes(data)
        spec = spec_from_dict({"name": "fuzz", "stage": "sft", "data": {"train": str(src), "format": "chat"},
                               "storage": {"root": str(Path(d) / "store")}})
        try:
            p = prepare_dataset(spec, tokenizer=tok, work_dir=Path(d) / "w")
        except DataError as e:
            assert "no usable rows" in str(e), str(e)
            return
        assert_report(p.report, len(data.splitlines()))
        rows = p.train_path.read_bytes().splitlines() + (p.heldout_path.read_bytes().splitlines()
                                                         if p.heldout_path else [])
        assert len(rows) == p.report["kept"] and p.token_stats["rows"] == len(p.train_path.read_bytes().splitlines())
