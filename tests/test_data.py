"""lexforge.data: sanitize (repairs, drops, strict), token stats with the real tokenizer and chat template,
held-out split, content-addressed local store, lineage (real MLflow server), LegalBench loader, CLI, streaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lexforge.config import spec_from_dict
from lexforge.data import (
    DataError,
    SanitizeOptions,
    find_legalbench_tasks,
    load_legalbench_task,
    log_lineage_to_mlflow,
    prepare_dataset,
    report_markdown,
    sanitize_file,
)
from lexforge.data.cli import register
from lexforge.data.store import dataset_key, fetch_dataset, file_sha256
from lexforge.samples import sample_path

SAMPLE = sample_path("legal_qa.jsonl")


@pytest.fixture(scope="session")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def chat(u: str, a: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}


def write_lines(path: Path, lines: list, newline: bytes = b"\n", final_newline: bool = True) -> Path:
    raw = [x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode() for x in lines]
    path.write_bytes(newline.join(raw) + (newline if final_newline else b""))
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def exact_len(tok, msgs) -> int:
    """Independent token count: the tokenizer's own apply_chat_template(tokenize=True)."""
    return len(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])


def spec_for(tmp_path: Path, train: Path, **data) -> object:
    stage = {"preference": "dpo", "grpo": "grpo"}.get(data.get("format", ""), "sft")
    return spec_from_dict({"name": "t-data", "stage": stage, "data": {"train": str(train), **data},
                           "storage": {"root": str(tmp_path / "store")}})


# ---- the shipped sample --------------------------------------------------------------------------------------


def _sample_lines_containing(needle: bytes) -> list[int]:
    return [i for i, line in enumerate(SAMPLE.read_bytes().split(b"\n"), 1) if needle in line]


def test_shipped_legal_qa_exact_repairs_and_drops(tmp_path, tok):
    res = sanitize_file(SAMPLE, tmp_path / "out.jsonl", SanitizeOptions(), tokenizer=tok)
    rep = res.report
    assert rep["format"] == "chat" and rep["format_detected"]
    assert (rep["total"], rep["kept"], rep["repaired"], rep["dropped_total"]) == (168, 159, 4, 9)
    assert rep["kept"] + rep["dropped_total"] == rep["total"]
    drops = {r: d["lines"] for r, d in rep["dropped"].items()}
    L = _sample_lines_containing
    raw_lines = SAMPLE.read_bytes().split(b"\n")
    assert drops == {
        "invalid_json": L(b"Truncated export row"),
        "non_utf8": L(b"Caf\xe9"),
        "missing_assistant_turn": L(b"notice period for 3 years"),
        "empty_content": L(b'"content": ""'),
        "wrong_type": sorted(L(b'"content": 42') + L(b'"messages": "user: what is theft?')),
        "wrong_format": L(b'"prompt": "What is theft?"'),
        "duplicate": [i for i, x in enumerate(raw_lines, 1) if x == raw_lines[0]][1:],
        "near_duplicate": L(b" ?"),
    }
    assert all(len(v) == 1 for k, v in drops.items() if k != "wrong_type") and len(drops["wrong_type"]) == 2
    repairs = {k: v["lines"] for k, v in rep["repairs"].items()}
    ws_line = L(b"for  defamation")
    assert repairs == {
        "role_alias": sorted(L(b'"role": "human"') + L(b'"role": "bot"')),
        "role_as_key": L(b'{"user": "What duty'),
        "nbsp": ws_line, "crlf": ws_line, "trim": ws_line, "whitespace_runs": ws_line,
    }
    rows = read_rows(res.path)
    assert len(rows) == 159
    texts = [m["content"] for r in rows for m in r["messages"]]
    assert "What is the limitation period for defamation?" in texts
    assert "One year from accrual (Limitation Act 1980, s.4A)." in texts
    assert {m["role"] for r in rows for m in r["messages"]} == {"system", "user", "assistant"}
    # the row log names every dropped and repaired line
    log = [json.loads(x) for x in Path(rep["row_log"]).read_text().splitlines()]
    assert sorted(x["line"] for x in log if x["action"] == "dropped") == sorted(sum(drops.values(), []))
    assert len([x for x in log if x["action"] == "repaired"]) == 4
    # token stats are the tokenizer's own chat-template counts
    expected = sorted(exact_len(tok, r["messages"]) for r in rows)
    ts = rep["token_stats"]
    assert ts["rows"] == 159 and ts["total_tokens"] == sum(expected) and ts["max"] == expected[-1]
    assert ts["p50"] == expected[79] and ts["p95"] == expected[151]  # nearest rank: ceil(.95 * 159) = 152nd


def test_same_input_same_digest(tmp_path, tok):
    a = sanitize_file(SAMPLE, tmp_path / "a.jsonl", tokenizer=tok)
    b = sanitize_file(SAMPLE, tmp_path / "b.jsonl", tokenizer=tok)
    assert a.sha256 == b.sha256 == file_sha256(tmp_path / "a.jsonl")
    assert a.source_sha256 == file_sha256(SAMPLE)


# ---- nasty inputs --------------------------------------------------------------------------------------------


def test_nasty_corpus_bom_crlf_types_mixed_truncated(tmp_path, tok):
    good = chat("What is a deed?", "A written instrument executed as a deed.")
    lines = [
        b"\xef\xbb\xbf" + json.dumps(chat("Is a BOM a problem?", "Not after sanitizing.")).encode(),  # 1 bom
        json.dumps({"conversations": [{"from": "human", "value": "ShareGPT style?"},
                                      {"from": "gpt", "value": "Repaired."}]}),  # 2 sharegpt + alias
        {"messages": [{"role": "user", "content": {"text": "nested"}}, {"role": "assistant", "content": "x"}]},  # 3
        {"messages": [{"role": "user", "content": "q"}, ["assistant", "a"]]},  # 4 message not an object
        {"messages": [{"role": "narrator", "content": "q"}, {"role": "assistant", "content": "a"}]},  # 5
        {"messages": [{"role": "user", "content": "q1"}, {"role": "system", "content": "late"},
                      {"role": "assistant", "content": "a"}]},  # 6 system in the middle
        {"prompt": "p", "chosen": "c", "rejected": "r"},  # 7 preference row in chat data
        [1, 2, 3],  # 8 not an object
        "",  # 9 blank line (not a row)
        {"messages": [{"role": "system", "content": "  "}, {"role": "USER", "content": "zero\u200bwidth q"},
                      {"role": "Model", "content": "caf\u0065\u0301"}]},  # 10 empty system, zero width, NFC
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                      {"role": "user", "content": "follow-up without answer"}]},  # 11 ends with a user turn
        {"messages": [{"role": "assistant", "content": "only"}]},  # 12 no user
        good, good, good,  # 13-15: duplicate flood
        {"messages": [{"role": "user", "content": "WHAT is a deed"}, {"role": "assistant",
                                                                      "content": "A written instrument, executed as a deed!"}]},  # 16
        b'{"messages": [{"role": "user", "content": "cut off mid',  # 17 truncated last line, no newline
    ]
    src = write_lines(tmp_path / "nasty.jsonl", lines, newline=b"\r\n", final_newline=False)
    rep = sanitize_file(src, tmp_path / "out.jsonl", SanitizeOptions(format="chat"), tokenizer=tok).report
    dropped = {r: d["lines"] for r, d in rep["dropped"].items()}
    assert dropped == {
        "wrong_type": [3, 4], "unknown_role": [5], "roles_out_of_order": [6], "wrong_format": [7],
        "not_an_object": [8], "missing_assistant_turn": [11], "missing_user_turn": [12], "duplicate": [14, 15],
        "near_duplicate": [16], "invalid_json": [17],
    }
    assert "file looks truncated" in rep["dropped"]["invalid_json"]["examples"][0]["detail"]
    assert rep["blank_lines"] == 1 and rep["total"] == 16 and rep["kept"] == 4 and rep["dropped_total"] == 12
    repairs = {k: v["lines"] for k, v in rep["repairs"].items()}
    assert repairs["bom"] == [1] and repairs["sharegpt_keys"] == [2] and repairs["role_alias"] == [2, 10]
    assert repairs["empty_system_removed"] == [10] and repairs["zero_width"] == [10] and repairs["unicode_nfc"] == [10]
    assert "crlf" not in repairs  # CRLF line endings are line separators, not content
    rows = read_rows(tmp_path / "out.jsonl")
    assert rows[2] == {"messages": [{"role": "user", "content": "zerowidth q"},
                                    {"role": "assistant", "content": "caf\u00e9"}]}


class _EncodeSpy:
    """Wraps the real tokenizer and records the longest text it was asked to encode."""

    def __init__(self, tok):
        self._tok, self.longest = tok, 0

    def __call__(self, texts, **kw):
        for t in [texts] if isinstance(texts, str) else texts:
            self.longest = max(self.longest, len(t))
        return self._tok(texts, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_ten_megabyte_single_row(tmp_path, tok):
    big = chat("Summarise this bundle.", "Lorem ipsum dolor sit amet. " * (10_000_000 // 28))
    src = write_lines(tmp_path / "big.jsonl", [chat("q?", "a."), big])
    assert src.stat().st_size > 10_000_000
    spy = _EncodeSpy(tok)
    rep = sanitize_file(src, tmp_path / "o.jsonl", SanitizeOptions(max_seq_len=256), tokenizer=spy).report
    assert spy.longest < 1000  # the 10 MB text was never tokenized (it would take ~20 s on this tokenizer)
    assert rep["dropped"]["too_long"]["lines"] == [2] and rep["kept"] == 1
    assert "> max_seq_len 256" in rep["dropped"]["too_long"]["examples"][0]["detail"]
    spy = _EncodeSpy(tok)
    res = sanitize_file(src, tmp_path / "t.jsonl", SanitizeOptions(max_seq_len=256, on_too_long="truncate"),
                        tokenizer=spy)
    assert spy.longest < 256 * 2 * 64  # only a cut copy of the answer is tokenized
    assert res.report["kept"] == 2 and res.report["repairs"]["truncated"]["lines"] == [2]
    row = read_rows(tmp_path / "t.jsonl")[1]
    assert 200 < exact_len(tok, row["messages"]) <= 256
    assert row["messages"][-1]["content"].startswith("Lorem ipsum dolor sit amet.")


def test_too_long_drop_and_truncate_respect_chat_template(tmp_path, tok):
    rows = [chat(f"Question {i}?", ("The limitation period is six years from accrual. " * i).strip()) for i in range(1, 30)]
    src = write_lines(tmp_path / "len.jsonl", rows)
    lens = [exact_len(tok, r["messages"]) for r in rows]
    limit = 96
    over = [i + 1 for i, n in enumerate(lens) if n > limit]
    assert over, "fixture must contain rows over the limit"
    rep = sanitize_file(src, tmp_path / "d.jsonl", SanitizeOptions(max_seq_len=limit), tokenizer=tok).report
    assert rep["dropped"]["too_long"]["lines"] == over and rep["kept"] == len(rows) - len(over)
    assert rep["token_stats"]["max"] == max(n for n in lens if n <= limit)
    res = sanitize_file(src, tmp_path / "t.jsonl", SanitizeOptions(max_seq_len=limit, on_too_long="truncate"),
                        tokenizer=tok)
    kept = read_rows(res.path)
    assert len(kept) == len(rows) and res.report["repairs"]["truncated"]["lines"] == over
    assert all(exact_len(tok, r["messages"]) <= limit for r in kept)
    # a prompt that alone exceeds the limit cannot be truncated: dropped with that reason
    src2 = write_lines(tmp_path / "p.jsonl", [chat("why? " * 200, "Because.")])
    rep2 = sanitize_file(src2, tmp_path / "p.out", SanitizeOptions(max_seq_len=limit, on_too_long="truncate"),
                         tokenizer=tok).report
    assert rep2["kept"] == 0 and "prompt alone" in rep2["dropped"]["too_long"]["examples"][0]["detail"]


def test_strict_mode_fails_with_file_line_and_hint(tmp_path, tok):
    src = write_lines(tmp_path / "s.jsonl", [chat("q?", "a."), chat("q?", "a."), {"messages": [
        {"role": "user", "content": "q2"}]}])
    with pytest.raises(DataError) as e:
        sanitize_file(src, tmp_path / "o.jsonl", SanitizeOptions(strict=True), tokenizer=tok)
    msg = str(e.value)
    assert f"{src}:3: missing_assistant_turn" in msg and "What to do:" in msg
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.partial").exists()
    # duplicates are a configured removal, not an error: strict passes on them
    ok = write_lines(tmp_path / "dup.jsonl", [chat("q?", "a."), chat("q?", "a.")])
    rep = sanitize_file(ok, tmp_path / "o2.jsonl", SanitizeOptions(strict=True), tokenizer=tok).report
    assert rep["kept"] == 1 and rep["dropped"]["duplicate"]["lines"] == [2]


def test_dedupe_can_be_disabled(tmp_path):
    src = write_lines(tmp_path / "d.jsonl", [chat("q?", "a."), chat("q?", "a."), chat("Q", "a")])
    rep = sanitize_file(src, tmp_path / "o.jsonl", SanitizeOptions(dedupe=False, near_dedupe=False)).report
    assert rep["kept"] == 3 and rep["tokenizer"] is None and rep["token_stats"] is None


def test_preference_and_grpo_formats(tmp_path, tok):
    pref = [
        {"prompt": "Limit for tort?", "chosen": "Six years.", "rejected": "Two years."},  # 1 strings
        {"prompt": [{"role": "human", "content": "Limit for deeds?"}],
         "chosen": [{"role": "assistant", "content": "Twelve years."}], "rejected": "Five years."},  # 2 mixed
        {"chosen": [{"role": "user", "content": "Notice for 3 years?"}, {"role": "assistant", "content": "3 weeks."}],
         "rejected": [{"role": "user", "content": "Notice for 3 years?"}, {"role": "assistant", "content": "1 day."}]},
        {"prompt": "Same?", "chosen": "Yes.", "rejected": " Yes. "},  # 4 identical after normalisation
        {"prompt": "No rejected", "chosen": "x"},  # 5 missing field -> looks like nothing we know
        {"prompt": 7, "chosen": "a", "rejected": "b"},  # 6 wrong type
        chat("chat row", "in preference data"),  # 7 wrong format
    ]
    res = sanitize_file(write_lines(tmp_path / "p.jsonl", pref), tmp_path / "p.out", tokenizer=tok)
    rep = res.report
    assert rep["format"] == "preference"
    assert {r: d["lines"] for r, d in rep["dropped"].items()} == {
        "identical_pair": [4], "missing_field": [5], "wrong_type": [6], "wrong_format": [7]}
    assert rep["repairs"]["preference_shape_unified"]["lines"] == [2]
    assert rep["repairs"]["implicit_prompt_extracted"]["lines"] == [3]
    rows = read_rows(res.path)
    assert rows[1]["rejected"] == [{"role": "assistant", "content": "Five years."}]
    assert rows[2]["prompt"] == [{"role": "user", "content": "Notice for 3 years?"}]
    # preference length = the longer of prompt+chosen and prompt+rejected with the template
    p0 = [{"role": "user", "content": "Limit for tort?"}]
    want = max(exact_len(tok, p0 + [{"role": "assistant", "content": x}]) for x in ("Six years.", "Two years."))
    assert rep["token_stats"]["max"] >= want

    grpo = [
        {"prompt": "Limit for tort?", "reference": "Six years."},
        {"question": "Limit for deeds?", "answer": "Twelve years.", "rubric": "Cite s.8"},
        {"prompt": "No reference"},
        {"prompt": "Rubric type", "reference": "x", "rubric": ["a"]},
    ]
    res = sanitize_file(write_lines(tmp_path / "g.jsonl", grpo), tmp_path / "g.out",
                        SanitizeOptions(format="grpo"), tokenizer=tok)
    assert res.report["kept"] == 2 and res.report["repairs"]["field_alias"]["lines"] == [2]
    assert {r: d["lines"] for r, d in res.report["dropped"].items()} == {"missing_field": [3], "wrong_type": [4]}
    assert read_rows(res.path)[1] == {"prompt": "Limit for deeds?", "reference": "Twelve years.", "rubric": "Cite s.8"}


def test_undetectable_format_is_a_clear_error(tmp_path):
    src = write_lines(tmp_path / "x.jsonl", [{"a": 1}, "not json"])
    with pytest.raises(DataError, match="cannot detect the data format.*--format"):
        sanitize_file(src, tmp_path / "o.jsonl")


# ---- prepare_dataset: split, store, lineage ------------------------------------------------------------------


def test_prepare_dataset_split_store_lineage(tmp_path, tok):
    spec = spec_for(tmp_path, SAMPLE, holdout_fraction=0.2, seed=7)
    p = prepare_dataset(spec, tokenizer=tok, work_dir=tmp_path / "w1")
    assert p.format == "chat" and set(p.digests) == {"source", "sanitized", "train", "heldout"}
    train, held = read_rows(p.train_path), read_rows(p.heldout_path)
    assert len(held) == round(159 * 0.2) and len(train) + len(held) == 159
    assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in held}
    assert p.token_stats["rows"] == len(train)
    assert p.token_stats["total_tokens"] == sum(exact_len(tok, r["messages"]) for r in train)
    store_root = tmp_path / "store"
    for part in ("sanitized", "train", "heldout"):
        stored = store_root / dataset_key(p.digests[part])
        assert p.uris[part] == str(stored) and file_sha256(stored) == p.digests[part]
    lin = json.loads((store_root / dataset_key(p.digests["sanitized"], "lineage.json")).read_text())
    assert lin["source"]["sha256"] == file_sha256(SAMPLE) == p.digests["source"]
    assert lin["sanitized"]["derived_from"] == p.digests["source"]
    assert lin["splits"]["train"]["derived_from"] == p.digests["sanitized"]
    assert lin["splits"]["heldout"]["rows"] == len(held)
    assert json.loads((tmp_path / "w1" / "lineage.json").read_text()) == p.lineage
    assert json.loads((store_root / dataset_key(p.digests["sanitized"], "report.json")).read_text())["kept"] == 159
    # same input + seed -> same digests; stored objects are never rewritten
    mtime = (store_root / dataset_key(p.digests["train"])).stat().st_mtime_ns
    p2 = prepare_dataset(spec, tokenizer=tok, work_dir=tmp_path / "w2")
    assert p2.digests == p.digests and p2.lineage["reused"] == {"sanitized": True, "train": True, "heldout": True}
    assert (store_root / dataset_key(p.digests["train"])).stat().st_mtime_ns == mtime
    # another seed -> another split of the same sanitized data
    p3 = prepare_dataset(spec_for(tmp_path, SAMPLE, holdout_fraction=0.2, seed=8), tokenizer=tok,
                         work_dir=tmp_path / "w3")
    assert p3.digests["sanitized"] == p.digests["sanitized"] and p3.digests["train"] != p.digests["train"]
    # a corrupted stored object is detected on fetch
    assert fetch_dataset(_store(store_root), p.digests["heldout"], tmp_path / "h.jsonl").is_file()
    (store_root / dataset_key(p.digests["heldout"])).write_text("tampered\n")
    with pytest.raises(ValueError, match="corrupted"):
        fetch_dataset(_store(store_root), p.digests["heldout"], tmp_path / "h2.jsonl")


def _store(root):
    from lexforge.storage import open_store

    return open_store(str(root))


def test_prepare_with_validation_file_never_overlaps_train(tmp_path, tok):
    train = write_lines(tmp_path / "train.jsonl", [chat(f"q{i}?", f"a{i}.") for i in range(10)])
    val = write_lines(tmp_path / "val.jsonl", [chat("q3?", "a3."), chat("Q3", "A3"), chat("new?", "yes.")])
    p = prepare_dataset(spec_for(tmp_path, train, validation=str(val)), tokenizer=tok, work_dir=tmp_path / "w")
    assert len(read_rows(p.train_path)) == 10 and read_rows(p.heldout_path) == [chat("new?", "yes.")]
    assert p.report["validation"]["dropped"]["overlaps_train"]["lines"] == [1, 2]
    assert p.lineage["splits"]["heldout"]["derived_from"] == file_sha256(val)


def test_prepare_rejects_stage_format_mismatch_and_empty_data(tmp_path, tok):
    spec = spec_from_dict({"name": "t", "stage": "dpo", "data": {"train": str(SAMPLE)},
                           "storage": {"root": str(tmp_path / "s")}})
    with pytest.raises(DataError, match="holds chat data but stage=dpo needs preference"):
        prepare_dataset(spec, tokenizer=tok, work_dir=tmp_path / "w")
    bad = write_lines(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(DataError, match="no usable rows"):
        prepare_dataset(spec_for(tmp_path, bad), tokenizer=tok, work_dir=tmp_path / "w2")
    with pytest.raises(DataError, match="not found"):
        prepare_dataset(spec_for(tmp_path, tmp_path / "missing.jsonl"), tokenizer=tok, work_dir=tmp_path / "w3")


def test_progress_callback_reaches_file_size(tmp_path, tok):
    seen = []
    prepare_dataset(spec_for(tmp_path, SAMPLE), tokenizer=tok, work_dir=tmp_path / "w",
                    progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (SAMPLE.stat().st_size, SAMPLE.stat().st_size)


def test_report_markdown_lists_reasons_and_lines(tmp_path, tok):
    rep = sanitize_file(SAMPLE, tmp_path / "o.jsonl", tokenizer=tok).report
    md = report_markdown(rep)
    assert "**168** total, **159** kept, **4** repaired, **9** dropped" in md
    for reason, d in rep["dropped"].items():
        assert f"| {reason} | {d['count']} | {', '.join(map(str, d['lines']))} |" in md


def test_lineage_logged_to_mlflow_as_dataset_inputs(tmp_path, tok, mlflow_server, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    p = prepare_dataset(spec_for(tmp_path, SAMPLE), tokenizer=tok, work_dir=tmp_path / "w")
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("test-data-lineage")
    assert log_lineage_to_mlflow(p) is False  # no active run: nothing logged
    with mlflow.start_run() as run:
        assert log_lineage_to_mlflow(p) is True
    r = MlflowClient(mlflow_server).get_run(run.info.run_id)
    inputs = {}
    for di in r.inputs.dataset_inputs:
        tags = {t.key: t.value for t in di.tags}
        inputs[tags["mlflow.data.context"]] = (di.dataset, tags)
    assert set(inputs) == {"training", "evaluation"}
    ds, tags = inputs["training"]
    assert tags["lexforge.sha256"] == p.digests["train"] and ds.digest == p.digests["train"][:32]
    assert json.loads(ds.source)["uri"] == p.uris["train"]
    assert json.loads(ds.profile)["num_rows"] == p.token_stats["rows"]
    assert tags["lexforge.source_sha256"] == p.digests["source"]
    arts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id, "data")}
    assert arts == {"data/report.json", "data/lineage.json"}
    assert r.data.tags["lexforge.data.sanitized_sha256"] == p.digests["sanitized"]
    # large splits are logged as metadata-only datasets (no rows loaded), same digests and tags
    import lexforge.data.lineage as lineage_mod

    monkeypatch.setattr(lineage_mod, "PANDAS_MAX_ROWS", 0)
    mlflow.set_experiment("test-data-lineage-meta")  # MLflow reuses a dataset record per experiment+name+digest
    with mlflow.start_run() as run2:
        log_lineage_to_mlflow(p)
    dis = MlflowClient(mlflow_server).get_run(run2.info.run_id).inputs.dataset_inputs
    assert {d.dataset.digest for d in dis} == {p.digests["train"][:32], p.digests["heldout"][:32]}
    assert [d.dataset.source_type for d in dis] == ["local", "local"], [d.dataset for d in dis]
    assert all("num_rows" not in (d.dataset.profile or "") for d in dis), [d.dataset.profile for d in dis]


def test_prepare_loads_the_spec_tokenizer(tmp_path, tiny_model_dir):
    spec = spec_from_dict({"name": "t-tok", "model": {"base": str(tiny_model_dir)},
                           "data": {"train": str(sample_path("legal_grpo.jsonl")), "format": "grpo"}, "stage": "grpo",
                           "storage": {"root": str(tmp_path / "store")}})
    p = prepare_dataset(spec, work_dir=tmp_path / "w")
    assert p.format == "grpo" and p.report["tokenizer"] == str(tiny_model_dir) and p.token_stats["total_tokens"] > 0


# ---- LegalBench ----------------------------------------------------------------------------------------------


def test_load_shipped_legalbench_tasks():
    root = sample_path("legalbench", "tasks")
    tasks = {d.name: load_legalbench_task(d) for d in find_legalbench_tasks(root)}
    assert set(tasks) == {"statute_yes_no", "statute_mcq", "statute_explain"}
    mcq = tasks["statute_mcq"]
    assert mcq.placeholders == ["text", "A", "B", "C", "D"] and mcq.train and mcq.test
    row = mcq.test[0]
    prompt = mcq.render(row)
    assert "{{" not in prompt and prompt.endswith(f"Question: {row['text']}\nA. {row['A']}\nB. {row['B']}\n"
                                                  f"C. {row['C']}\nD. {row['D']}\nAnswer:")
    assert tasks["statute_explain"].render(tasks["statute_explain"].test[0]) == tasks["statute_explain"].test[0]["text"]
    assert all(r["answer"] in ("Yes", "No") for r in tasks["statute_yes_no"].test)


def test_legalbench_errors_name_file_and_fix(tmp_path):
    d = tmp_path / "task"
    d.mkdir()
    (d / "base_prompt.txt").write_text("Q: {{text}} {{missing}}\nA:")
    (d / "test.tsv").write_text("index\ttext\tanswer\n0\thello\tYes\n")
    with pytest.raises(DataError, match=r"placeholders \{\{missing\}\} are not columns of test.tsv"):
        load_legalbench_task(d)
    (d / "base_prompt.txt").write_text("Q: {{text}}\nA:")
    (d / "test.tsv").write_text("index\ttext\tanswer\n0\thello\tYes\n1\tstray\ttab\tNo\n")
    with pytest.raises(DataError, match=r"test.tsv:3: 4 fields but the header has 3"):
        load_legalbench_task(d)
    (d / "test.tsv").write_bytes(b"index\ttext\tanswer\r\n0\tcaf\xc3\xa9 \tYes\r\n")
    t = load_legalbench_task(d)
    assert t.render(t.test[0]) == "Q: caf\u00e9\nA:" and t.train == []
    with pytest.raises(DataError, match="missing base_prompt.txt|not found"):
        load_legalbench_task(tmp_path / "nope")


# ---- CLI -----------------------------------------------------------------------------------------------------


@pytest.fixture()
def cli():
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    return app


def test_cli_check_json_and_strict_exit(cli, tmp_path, tiny_model_dir):
    r = CliRunner().invoke(cli, ["data", "check", str(SAMPLE), "-m", str(tiny_model_dir), "--json",
                                 "--report", str(tmp_path / "rep.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert (rep["total"], rep["kept"], rep["dropped_total"]) == (168, 159, 9)
    assert json.loads((tmp_path / "rep.json").read_text())["dropped"] == rep["dropped"]
    r = CliRunner().invoke(cli, ["data", "check", str(SAMPLE), "-m", str(tiny_model_dir), "--strict"])
    assert r.exit_code == 1 and f"{SAMPLE}:17: invalid_json" in " ".join(r.output.split())
    r = CliRunner().invoke(cli, ["data", "check", str(tmp_path / "nope.jsonl")])
    assert r.exit_code == 1 and f"{tmp_path / 'nope.jsonl'}: input file not found" in r.output
    r = CliRunner().invoke(cli, ["data", "check", str(SAMPLE), "--on-too-long", "cut"])
    assert r.exit_code == 2 and "on_too_long must be drop or truncate, not 'cut'" in r.output


def test_cli_sanitize_writes_and_stores(cli, tmp_path, tiny_model_dir):
    pref = sample_path("legal_pref.jsonl")
    args = ["data", "sanitize", str(pref), "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store"),
            "-m", str(tiny_model_dir), "--holdout", "0.25"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["format"] == "preference" and out["token_stats"]["rows"] == 62 - round(62 * 0.25)
    assert file_sha256(Path(out["uris"]["train"])) == out["digests"]["train"]
    for f in ("train.jsonl", "heldout.jsonl", "report.json", "lineage.json"):
        assert (tmp_path / "out" / f).is_file()
    r2 = CliRunner().invoke(cli, args[:4] + [str(tmp_path / "out2")] + args[5:])
    assert json.loads(r2.stdout)["digests"] == out["digests"]


# ---- streaming -----------------------------------------------------------------------------------------------

_RSS_SCRIPT = r"""
import json, resource, sys
from lexforge.data import sanitize_file
res = sanitize_file(sys.argv[1], sys.argv[2])
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "kept": res.report["kept"],
                  "dropped": res.report["dropped_total"]}))
"""


def _make_big(path: Path, target_bytes: int) -> int:
    filler = "The claimant relies on section 2 of the Limitation Act 1980 and the documents in the bundle. " * 40
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < target_bytes:
            f.write(json.dumps(chat(f"Question {n}: when does time run?", f"Answer {n}. {filler}")) + "\n")
            if n % 100 == 0:
                f.write('{"messages": [broken\n')
            n += 1
    return n


def test_streaming_memory_stays_flat(tmp_path):
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    _make_big(small, 5_000_000)
    rows = _make_big(big, 100_000_000)

    def run(src: Path) -> dict:
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(src), str(tmp_path / f"{src.stem}.out")],
                             capture_output=True, text=True, check=True, env=dict(os.environ))
        return json.loads(out.stdout.strip().splitlines()[-1])

    a, b = run(small), run(big)
    assert b["kept"] == rows and b["dropped"] == (rows + 99) // 100
    growth_mb = (b["rss_kb"] - a["rss_kb"]) / 1024
    assert growth_mb < 30, f"peak RSS grew {growth_mb:.1f} MB for a 20x larger (100 MB) input"


def test_hash_index_matches_a_dict():
    import random

    from lexforge.data.hashindex import HashIndex

    rng = random.Random(1)
    idx, ref = HashIndex(capacity=4), {}
    keys = [rng.getrandbits(64) for _ in range(20_000)] + [0, 1]  # 0 is stored as 1 (empty-slot marker)
    keys += keys[:5000]  # repeats
    for line, k in enumerate(keys, 1):
        got = idx.setdefault(k, line)
        want = ref.get(k or 1)
        ref.setdefault(k or 1, line)
        assert got == want
    assert len(idx) == len(ref) and all(idx.get(k) == v for k, v in ref.items())
    assert idx.get(12345) is None and idx.nbytes < 40 * len(ref)


_ROWS_SCRIPT = r"""
import json, resource, sys
from lexforge.data import sanitize_file
res = sanitize_file(sys.argv[1], sys.argv[2])
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "kept": res.report["kept"]}))
"""


def test_per_row_memory_is_small(tmp_path):
    """Many short distinct rows: what stays in memory per row (dedupe tables, split hashes) is tens of bytes."""
    def make(path: Path, n: int) -> None:
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps(chat(f"q{i}", f"a{i}")) + "\n")

    def run(n: int) -> dict:
        src = tmp_path / f"rows{n}.jsonl"
        make(src, n)
        out = subprocess.run([sys.executable, "-c", _ROWS_SCRIPT, str(src), str(tmp_path / f"o{n}.jsonl")],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    a, b = run(1000), run(150_000)
    assert b["kept"] == 150_000
    per_row = (b["rss_kb"] - a["rss_kb"]) * 1024 / (150_000 - 1000)
    assert per_row < 150, f"{per_row:.0f} bytes of peak RSS per distinct row"


def test_containers_that_are_not_utf8_jsonl(tmp_path):
    import gzip

    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "u16.jsonl").write_bytes(json.dumps(chat("q?", "a.")).encode("utf-16"))
    (tmp_path / "gz.jsonl").write_bytes(gzip.compress(json.dumps(chat("q?", "a.")).encode()))
    for name, msg in (("empty", "is empty"), ("u16", "UTF-16; re-export"), ("gz", "gzip-compressed")):
        with pytest.raises(DataError, match=msg):
            sanitize_file(tmp_path / f"{name}.jsonl", tmp_path / "o.jsonl", SanitizeOptions(format="chat"))


def test_cli_prepare_from_spec(cli, tmp_path, tiny_model_dir):
    (tmp_path / "job.yaml").write_text(
        f"name: cli-prep\nstage: dpo\nmodel: {{base: {tiny_model_dir}}}\n"
        f"data: {{train: {sample_path('legal_pref.jsonl')}, holdout_fraction: 0.2}}\nstorage: {{root: store}}\n")
    r = CliRunner().invoke(cli, ["data", "prepare", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "w"),
                                 "--set", "data.seed=3"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["format"] == "preference" and out["token_stats"]["rows"] == 62 - round(62 * 0.2)
    assert out["uris"]["train"].startswith(str(tmp_path / "store" / "datasets" / "sha256"))
    r = CliRunner().invoke(cli, ["data", "prepare", str(tmp_path / "job.yaml"), "--set", "stage=sft"])
    assert r.exit_code == 1 and "holds preference data but stage=sft needs chat" in " ".join(r.output.split())


def test_duplicate_flood_counts_exact_lines_capped(tmp_path):
    row = chat("What is the limitation period for tort?", "Six years.")
    variants = [chat("what is the limitation period for tort", "Six years"),
                chat("What is the limitation  period for tort ?", "Six years.")]
    lines = [row] + [row] * 3000 + variants * 10
    src = write_lines(tmp_path / "flood.jsonl", lines)
    res = sanitize_file(src, tmp_path / "o.jsonl", SanitizeOptions(format="chat"))
    rep = res.report
    dup, near = rep["dropped"]["duplicate"], rep["dropped"]["near_duplicate"]
    assert rep["kept"] == 1 and dup["count"] == 3000 + 18 and near["count"] == 2
    assert len(dup["lines"]) == 1000 and dup["lines_truncated"] and dup["lines"][:2] == [2, 3]
    assert near["lines"] == [3002, 3003] and not near["lines_truncated"]
    log = [json.loads(x) for x in Path(rep["row_log"]).read_text().splitlines()]
    assert len([x for x in log if x["action"] == "dropped"]) == 3020  # the row log is never capped
    assert read_rows(res.path) == [row]
