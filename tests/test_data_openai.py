"""OpenAI's fine-tuning formats end to end: chat rows with text parts, names, weights and tool calls; DPO rows;
rows the chat template cannot render; the SFT loss mask on real token labels; the API upload path; and one file
through check, the API checker, prepare_dataset (planner input) and the SFT tokenizer."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lexforge.config import spec_from_dict
from lexforge.data import SanitizeOptions, prepare_dataset, sanitize_file
from lexforge.train.data import IGNORE, read_clean_rows, tokenize_chat, tokenize_rows

TOOLS = [{"type": "function", "function": {
    "name": "lookup_case", "description": "Find a case by its number",
    "parameters": {"type": "object", "properties": {"case_id": {"type": "string"}}, "required": ["case_id"]}}}]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def call(cid: str | None, name: str, args) -> dict:
    c = {"type": "function", "function": {"name": name, "arguments": args}}
    return {"id": cid, **c} if cid else c


def tool_row(**extra) -> dict:
    return {"messages": [
        {"role": "system", "content": "You are a litigation clerk."},
        {"role": "user", "content": "When does time run out on case 123?"},
        {"role": "assistant", "content": None, "tool_calls": [call("call_1", "lookup_case", '{"case_id":"123"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Case 123: tort, accrued 2019-03-01."},
        {"role": "assistant", "content": "Six years from accrual: 1 March 2025 (Limitation Act 1980, s.2)."},
    ], "tools": TOOLS, **extra}


def labels_text(tok, ex: dict) -> str:
    return tok.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE])


# ---- accepted as documented ----------------------------------------------------------------------------------


def test_openai_chat_rows_are_kept_with_their_fields(tmp_path, tok):
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is "},
                                                   {"type": "text", "text": "a deed?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "A written instrument."}]}]},  # 1
        {"messages": [{"role": "developer", "content": "Answer briefly.", "name": "firm_policy"},
                      {"role": "user", "content": "Draft a clause.", "name": "associate_7"},
                      {"role": "assistant", "content": "Clause v1.", "weight": 0},
                      {"role": "user", "content": "Tighter, please."},
                      {"role": "assistant", "content": "Clause v2.", "weight": 1}]},  # 2
        tool_row(parallel_tool_calls=False),  # 3
        {"messages": [{"role": "user", "content": "Look up 7 and 8."},  # 4: parallel calls, HF-style dict arguments
                      {"role": "assistant", "content": "Checking both.", "tool_calls": [
                          call("a", "lookup_case", {"case_id": "7"}), call("b", "lookup_case", {"case_id": "8"})]},
                      {"role": "tool", "tool_call_id": "b", "content": "8: contract"},
                      {"role": "tool", "tool_call_id": "a", "content": "7: tort"},
                      {"role": "assistant", "content": "7 is tort, 8 is contract."}],
         "tools": TOOLS, "parallel_tool_calls": True},
        {"messages": [{"role": "user", "content": "Find case 9."},  # 5: ends with the call (OpenAI's own example)
                      {"role": "assistant", "tool_calls": [call("c9", "lookup_case", '{"case_id": "9"}')]}],
         "tools": TOOLS},
    ]
    res = sanitize_file(write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl", SanitizeOptions(format="chat"),
                        tokenizer=tok)
    rep = res.report
    assert (rep["total"], rep["kept"], rep["dropped_total"]) == (5, 5, 0), rep["dropped"]
    repairs = {k: v["lines"] for k, v in rep["repairs"].items()}
    assert repairs == {"content_parts_joined": [1], "role_alias": [2], "tool_arguments_normalized": [3, 4]}
    assert {k: v["lines"] for k, v in rep["notes"].items()} == {"name_ignored_by_template": [2]}
    out = read_rows(res.path)
    assert out[0]["messages"][0] == {"role": "user", "content": "What is a deed?"}
    assert out[1]["messages"] == [
        {"role": "system", "content": "Answer briefly.", "name": "firm_policy"},
        {"role": "user", "content": "Draft a clause.", "name": "associate_7"},
        {"role": "assistant", "content": "Clause v1.", "weight": 0},
        {"role": "user", "content": "Tighter, please."},
        {"role": "assistant", "content": "Clause v2.", "weight": 1}]
    assert out[2]["tools"] == TOOLS and out[2]["parallel_tool_calls"] is False
    assert out[2]["messages"][2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup_case", "arguments": '{"case_id": "123"}'}}]}
    assert out[2]["messages"][3] == {"role": "tool", "content": "Case 123: tort, accrued 2019-03-01.",
                                     "tool_call_id": "call_1"}
    assert out[3]["parallel_tool_calls"] is True
    assert [c["function"]["arguments"] for c in out[3]["messages"][1]["tool_calls"]] == ['{"case_id": "7"}',
                                                                                          '{"case_id": "8"}']
    # token counts are the SFT tokenizer's sequence lengths of the same canonical rows
    want = sorted(len(tokenize_chat(r, tok, 10_000)["input_ids"]) for r in out)
    assert rep["token_stats"]["total_tokens"] == sum(want) and rep["token_stats"]["max"] == want[-1]


def test_weight_zero_turn_is_context_not_target(tok):
    msgs = [{"role": "user", "content": "Draft a clause."}, {"role": "assistant", "content": "Clause v1."},
            {"role": "user", "content": "Tighter, please."}, {"role": "assistant", "content": "Clause v2."}]
    both = tokenize_chat({"messages": msgs}, tok, 512)
    assert labels_text(tok, both) == "Clause v1.<|im_end|>\nClause v2.<|im_end|>\n"
    weighted = [dict(msgs[0]), dict(msgs[1], weight=0), dict(msgs[2]), dict(msgs[3], weight=1)]
    ex = tokenize_chat({"messages": weighted}, tok, 512)
    assert ex["input_ids"] == both["input_ids"]  # same sequence: the weight-0 turn stays in as context
    assert labels_text(tok, ex) == "Clause v2.<|im_end|>\n"
    first = tok.apply_chat_template(msgs[:2], tokenize=False)
    n_first = len(tok(first, add_special_tokens=False)["input_ids"])
    assert all(lab == IGNORE for lab in ex["labels"][:n_first])
    assert ex["labels"][n_first:] != [IGNORE] * (len(ex["labels"]) - n_first)
    last_only = tokenize_chat({"messages": [dict(msgs[0]), dict(msgs[1], weight=0)]}, tok, 512)
    assert last_only is None  # nothing to learn (the sanitizer drops such rows as no_trainable_turn)


def test_tool_calls_are_trained_and_tool_results_are_not(tmp_path, tok):
    res = sanitize_file(write(tmp_path / "t.jsonl", [tool_row()]), tmp_path / "o.jsonl", SanitizeOptions(format="chat"),
                        tokenizer=tok)
    row = read_rows(res.path)[0]
    ex = tokenize_chat(row, tok, 1024)
    text = tok.apply_chat_template(row["messages"][:1], tools=TOOLS, tokenize=False)
    assert text.startswith("<|im_start|>tools\n")  # the template received the tools
    trained = labels_text(tok, ex)
    assert trained == ('<tool_call>{"name": "lookup_case", "arguments": {"case_id": "123"}}</tool_call><|im_end|>\n'
                       "Six years from accrual: 1 March 2025 (Limitation Act 1980, s.2).<|im_end|>\n")
    full = tok.decode(ex["input_ids"])
    assert "Case 123: tort, accrued 2019-03-01." in full and "Case 123" not in trained
    assert '"description": "Find a case by its number"' in full and "description" not in trained


# ---- refused with a reason -----------------------------------------------------------------------------------


def test_unusable_openai_rows_are_dropped_with_reasons(tmp_path):
    u = {"role": "user", "content": "q"}
    a = {"role": "assistant", "content": "a"}
    big_int = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": ' \
        + b"1" * 5000 + b"}]}"
    lines = [
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                      a]},  # 1
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, a]},  # 2
        {"messages": [u, {"role": "assistant", "content": None,
                          "function_call": {"name": "f", "arguments": "{}"}}]},  # 3 deprecated
        {"messages": [u, a], "functions": [{"name": "f"}]},  # 4 deprecated
        {"messages": [u, dict(a, weight=2)]},  # 5
        {"messages": [dict(u, weight=1), a]},  # 6 weight on a user turn
        {"messages": [u, dict(a, weight=0)]},  # 7 nothing to train
        {"messages": [u, a, {"role": "tool", "tool_call_id": "x", "content": "r"}, a]},  # 8 result without a call
        {"messages": [u, {"role": "assistant", "tool_calls": [call("c1", "lookup_case", "{}")]},
                      {"role": "tool", "tool_call_id": "c2", "content": "r"}, a], "tools": TOOLS},  # 9 wrong id
        {"messages": [u, {"role": "assistant", "tool_calls": [call("c1", "lookup_case", "{}")]}, u, a],
         "tools": TOOLS},  # 10 call never answered
        {"messages": [u, {"role": "assistant", "tool_calls": [call("c1", "delete_all", "{}")]}], "tools": TOOLS},  # 11
        {"messages": [u, {"role": "assistant", "tool_calls": [call("c1", "lookup_case", "{}"),
                                                              call("c2", "lookup_case", "{}")]}],
         "tools": TOOLS, "parallel_tool_calls": False},  # 12
        {"messages": [u, {"role": "assistant", "tool_calls": [call("c1", "lookup_case", "{case_id: 1}")]}]},  # 13
        {"messages": [u, {"role": "assistant", "tool_calls": [call("c1", "lookup_case", "[1, 2]")]}]},  # 14
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "content": "b"}]}',
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "content": "a"}]}',
        b'{"messages": [{"role": "user", "content": "broken \\ud83d emoji"}, {"role": "assistant", "content": "a"}]}',
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": NaN}]}',
        big_int,  # 19
        {"messages": [u, {"role": "assistant", "tool_calls": [
            call("c1", "lookup_case", '{"case_id": "\\udc00"}')]}]},  # 20 surrogate inside the arguments string
        {"messages": [u, {"role": "assistant", "tool_calls": [{"type": "code_interpreter"}]}]},  # 21
        {"messages": [{"role": "user", "content": "fine \ud83d\ude00 pair"}, a]},  # 22 a valid pair: kept
    ]
    res = sanitize_file(write(tmp_path / "bad.jsonl", lines), tmp_path / "o.jsonl", SanitizeOptions(format="chat"))
    rep = res.report
    dropped = {r: d["lines"] for r, d in rep["dropped"].items()}
    assert dropped == {
        "unsupported_content": [1, 2, 3, 4, 21], "invalid_weight": [5, 6], "no_trainable_turn": [7],
        "invalid_tool_call": [8, 9, 10, 11, 12, 14], "invalid_json": [13, 18, 19], "duplicate_key": [15],
        "invalid_unicode": [17, 20],
    }
    assert rep["kept"] == 2 and rep["total"] == rep["kept"] + rep["dropped_total"] == 22
    assert rep["repairs"]["duplicate_key_removed"]["lines"] == [16]
    log = [json.loads(x) for x in Path(rep["row_log"]).read_text().splitlines()]
    details = {e["line"]: e["detail"] for e in log if e["action"] == "dropped"}  # the row log has every detail
    assert "image" in details[1] and "text-only" in details[1]
    assert "messages[0].content holds \\ud83d at character 8" in details[17]
    assert "key 'content' appears twice with different values ('a' and 'b')" in details[15]
    assert "which is not in the row's tools" in details[11]
    assert "NaN is not valid JSON" in details[18]
    assert "messages[2] answers 'c2'; the open calls of messages[1] are 'c1'" in details[9]
    assert "no tool message answers" in details[10]
    assert read_rows(res.path)[1]["messages"][0]["content"] == "fine \U0001f600 pair"


def test_rows_the_template_cannot_render_are_dropped(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    plain = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q?"},
                           {"role": "assistant", "content": "a."}]}]
    src = write(tmp_path / "r.jsonl", plain + [tool_row()])

    def run(template: str) -> dict:
        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        tok.chat_template = template
        return sanitize_file(src, tmp_path / "o.jsonl", SanitizeOptions(format="chat"), tokenizer=tok).report

    chatml = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
              "{% endfor %}")  # no tools: fails on the tool-call turn (content missing)
    lenient = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] or '') + "
               "'<|im_end|>\n' }}{% endfor %}")  # renders, but silently loses the calls and the tools
    no_system = ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] + ': ' + (m['content'] or '') "
                 "+ '\n' }}{% endif %}{% endfor %}")  # drops system turns
    for template, lines, needle in ((chatml, [2], "template failed"), (lenient, [2], "tool_calls[0] name"),
                                    (no_system, [1, 2], "turn 0 (system) content")):
        rep = run(template)
        d = rep["dropped"]["template_cannot_render"]
        assert d["lines"] == lines and needle in d["examples"][-1]["detail"], d
        assert rep["kept"] + rep["dropped_total"] == rep["total"] == 2


# ---- DPO -----------------------------------------------------------------------------------------------------


def openai_dpo(i: int) -> dict:
    return {"input": {"messages": [{"role": "system", "content": "You are a careful lawyer."},
                                   {"role": "user", "content": f"Is an oral contract for land valid? ({i})"}],
                      "tools": [], "parallel_tool_calls": True},
            "preferred_output": [{"role": "assistant", "content": f"No: it must be in writing (s.2 LP(MP)A 1989). {i}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"Yes, always. {i}"}]}


def test_openai_dpo_rows_next_to_trl_rows(tmp_path, tok):
    rows = [openai_dpo(0),
            {"prompt": "Limit for tort?", "chosen": "Six years.", "rejected": "Two years."},
            {"input": {"messages": [{"role": "user", "content": "q"}], "tools": TOOLS},
             "preferred_output": [{"role": "assistant", "content": "a"}],
             "non_preferred_output": [{"role": "assistant", "content": "b"}]},  # 3 tools in DPO: refused
            {"input": {"messages": [{"role": "user", "content": "q"}]},
             "preferred_output": [{"role": "assistant", "content": "a"}]},  # 4 no non_preferred_output
            {"input": {"messages": [{"role": "user", "content": "q"}]},
             "preferred_output": [{"role": "user", "content": "a"}],
             "non_preferred_output": [{"role": "assistant", "content": "b"}]}]  # 5 preferred output not assistant
    res = sanitize_file(write(tmp_path / "p.jsonl", rows), tmp_path / "o.jsonl", tokenizer=tok)
    rep = res.report
    assert rep["format"] == "preference" and rep["format_detected"]
    assert {r: d["lines"] for r, d in rep["dropped"].items()} == {
        "unsupported_content": [3], "missing_field": [4], "roles_out_of_order": [5]}
    assert rep["repairs"]["openai_dpo_keys"]["lines"] == [1]
    first = read_rows(res.path)[0]
    assert first == {"prompt": openai_dpo(0)["input"]["messages"], "chosen": openai_dpo(0)["preferred_output"],
                     "rejected": openai_dpo(0)["non_preferred_output"]}
    ex = tokenize_rows(read_rows(res.path), "preference", tok, 512)
    assert len(ex) == 2 and all(e["chosen"]["labels"] != e["rejected"]["labels"] for e in ex)


def test_api_upload_checks_openai_files_and_dpo_jobs_take_them(tmp_path, lexforge_home, tiny_model_dir, tok):
    """The API's upload check (service level, no servers) on the issue's messy export, on OpenAI chat files with
    tools, and an OpenAI DPO file through a method=dpo job's validation, spec and data step."""
    from api.errors import ApiError
    from api.jobs import JobCreate, build_spec
    from api.service import FineTuningService
    from api.settings import ApiSettings

    svc = FineTuningService(ApiSettings(api_keys=("k",), store_root=str(tmp_path / "store"),
                                        db_path=tmp_path / "api.db", prefect_api_url="http://127.0.0.1:9"))
    try:
        def upload(rows: list, name: str) -> dict:
            data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
            return svc.upload_file(io.BytesIO(data), name, "fine-tune")

        chat = upload([tool_row(), tool_row(parallel_tool_calls=True) | {"messages": tool_row()["messages"][1:]}],
                      "tools.jsonl")
        assert chat["status"] == "processed" and "2 usable, format chat" in chat["status_details"]
        with pytest.raises(ApiError) as e:  # one lone surrogate: a 400 naming the line, not a crash
            upload([tool_row(), b'{"messages": [{"role": "user", "content": "\\ud800"}, '
                                b'{"role": "assistant", "content": "a"}]}'], "messy.jsonl")
        assert e.value.status == 400 and "line 2: invalid_unicode" in e.value.message
        dpo = upload([openai_dpo(i) for i in range(4)], "dpo.jsonl")
        assert "format preference" in dpo["status_details"]
        req = JobCreate(model="tiny-llama", training_file=dpo["id"], method={"type": "dpo"})
        with pytest.raises(ApiError, match="holds preference rows but this job needs chat rows"):
            svc._job_file(dpo["id"], "training_file", "chat")  # what create_job checks for a supervised job
        row = svc._job_file(dpo["id"], "training_file", "preference")
        spec = build_spec("ftjob-" + "0" * 24, req, base_model_path=str(tiny_model_dir),
                          train_uri=svc.store.url(row["store_key"]), validation_uri=None, data_format="preference",
                          seed=1, store_root=svc.store.uri, s3_endpoint_url=None)
        assert spec.stage == "dpo" and spec.data.format == "preference"
        prepared = prepare_dataset(spec, tokenizer=tok, work_dir=tmp_path / "w")
        rows = read_clean_rows(prepared.train_path) + read_clean_rows(prepared.heldout_path)
        assert sorted(r["chosen"][0]["content"] for r in rows) == sorted(
            openai_dpo(i)["preferred_output"][0]["content"] for i in range(4))
    finally:
        svc.close()


# ---- one file, one set of canonical rows ---------------------------------------------------------------------


@pytest.fixture()
def cli():
    from lexforge.data.cli import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    return app


def test_token_stats_planner_inputs_and_upload_report_agree(cli, tmp_path, tiny_model_dir, tok):
    from api.checks import check_file
    from lexforge.plan import plan_training

    rows = [tool_row(), tool_row(parallel_tool_calls=False) | {"messages": tool_row()["messages"][1:]},
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Deed?"}]},
                          {"role": "assistant", "content": "A written instrument.", "weight": 1},
                          {"role": "user", "content": "And a contract?"},
                          {"role": "assistant", "content": "An agreement.", "weight": 0},
                          {"role": "user", "content": "Thanks."}, {"role": "assistant", "content": "Welcome."}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
            b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}',
            tool_row()]  # exact duplicate of line 1
    src = write(tmp_path / "one.jsonl", rows)
    r = CliRunner().invoke(cli, ["data", "check", str(src), "-m", str(tiny_model_dir), "--json"])
    assert r.exit_code == 0, r.output
    checked = json.loads(r.stdout)
    upload = check_file(src).report
    for key in ("total", "kept", "repaired", "dropped_total", "dropped", "repairs", "sanitized_sha256", "format"):
        assert checked[key] == upload[key], key
    assert (checked["total"], checked["kept"]) == (6, 3)
    assert [p["line"] for p in upload["problems"]] == [4, 5]  # the duplicate is a removal, not an error

    spec = spec_from_dict({"name": "t-one", "stage": "sft", "model": {"base": str(tiny_model_dir)},
                           "data": {"train": str(src), "holdout_fraction": 0.0},
                           "storage": {"root": str(tmp_path / "store")}})
    prepared = prepare_dataset(spec, tokenizer=tok, work_dir=tmp_path / "w")
    assert prepared.digests["sanitized"] == checked["sanitized_sha256"]
    assert prepared.token_stats == checked["token_stats"]
    lengths = [len(ex["input_ids"]) for ex in tokenize_rows(read_clean_rows(prepared.train_path), "chat", tok, 10_000)]
    assert sum(lengths) == prepared.token_stats["total_tokens"] and max(lengths) == prepared.token_stats["max"]
    plan = plan_training(spec, token_stats=prepared.token_stats)
    assert plan.tokens == sum(lengths) * spec.hyperparams.epochs and plan.seq_len == max(lengths)


# ---- SmolLM2's own template (the real default base model) ----------------------------------------------------


@pytest.mark.slow
def test_smollm2_template_renders_plain_and_weighted_rows_and_refuses_tool_rows(tmp_path, smollm2_dir):
    """SmolLM2-135M-Instruct's template has no tools support: tool rows are dropped as template_cannot_render
    rather than mis-rendered; weights and names work; the masking is exact on its template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    weighted = {"messages": [{"role": "user", "content": "Draft a clause.", "name": "associate_7"},
                             {"role": "assistant", "content": "Clause v1.", "weight": 0},
                             {"role": "user", "content": "Tighter."}, {"role": "assistant", "content": "Clause v2."}]}
    text_answer_with_tools = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                              "tools": TOOLS}
    res = sanitize_file(write(tmp_path / "s.jsonl", [weighted, tool_row(), text_answer_with_tools]),
                        tmp_path / "o.jsonl", SanitizeOptions(format="chat"), tokenizer=tok)
    rep = res.report
    d = rep["dropped"]["template_cannot_render"]
    assert d["lines"] == [2, 3] and rep["kept"] == 1
    assert "no tools support" in d["examples"][1]["detail"]
    assert rep["notes"]["name_ignored_by_template"]["lines"] == [1] and rep["repaired"] == 0
    ex = tokenize_chat(read_rows(res.path)[0], tok, 512)
    assert labels_text(tok, ex) == "Clause v2.<|im_end|>\n"
    assert rep["token_stats"]["total_tokens"] == len(ex["input_ids"])
