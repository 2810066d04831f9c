"""GRPO rewards: the gate's own metrics (same functions, same results), format, citation accuracy, the LLM judge
over a real OpenAI-compatible HTTP endpoint, weighted composition and failure semantics (never a silent 0)."""

from __future__ import annotations

import json
import logging
import math
import random
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from lexforge.config import SpecError, spec_from_dict
from lexforge.evaluate import scoring
from lexforge.evaluate.runner import score_closed
from lexforge.evaluate.tasks import load_task
from lexforge.samples import sample_path
from lexforge.train.rewards import (Fail, RewardFailed, build_rewards, check_reward_specs, find_citations,
                                    get_reward, register_batch_reward, register_reward)
from lexforge.train.rewards import text as text_rewards

TASKS = sample_path("legalbench", "tasks")
YES_NO, MCQ = (TASKS / t for t in ("statute_yes_no", "statute_mcq"))


def _rs(*terms):
    return build_rewards([{"name": t[0], "weight": t[1] if len(t) > 1 else 1.0,
                           "params": t[2] if len(t) > 2 else {}} for t in terms])


def _grpo_spec(rewards):
    return spec_from_dict({"name": "g", "stage": "grpo", "data": {"train": "x.jsonl"}, "grpo": {"rewards": rewards}})


def _outputs(task, seed: int) -> list[str]:
    """Answers of every shape the gate meets: right, right with reasoning, another label, option forms, junk."""
    rnd = random.Random(seed)
    labels = task.labels()
    out = []
    for r in task.test_rows:
        g = r["answer"].strip()
        other = next(lab for lab in labels if lab != g)
        out.append(rnd.choice([g, f"{g}, because the Act says so", f"{g.lower()}.\nmore", other, f"Option {g}",
                               f"({g.lower()}) it is", f"{other}. {g}", "I am not sure", "", f"Answer: {g}"]))
    return out


# ---- the gate's exact match and balanced accuracy ------------------------------------------------------------


@pytest.mark.parametrize("task_dir", [YES_NO, MCQ])
def test_exact_match_and_balanced_accuracy_are_the_gates(task_dir):
    task = load_task(task_dir)
    rs = _rs(("exact_match",), ("balanced_accuracy",))
    for seed in range(5):
        outs = _outputs(task, seed)
        gate = score_closed(task, outs)  # the gate's own scoring of these outputs
        examples = [{"reference": r["answer"], "labels": task.labels()} for r in task.test_rows]
        b = rs(outs, examples)
        assert b.per_reward["exact_match"] == [1.0 if i["correct"] else 0.0 for i in gate["items"]]
        assert sum(b.per_reward["exact_match"]) / len(outs) == gate["exact_match"]
        assert sum(b.per_reward["balanced_accuracy"]) / len(outs) == pytest.approx(gate["score"], abs=1e-12)
        gold = [r["answer"].strip() for r in task.test_rows]
        pred = [scoring.extract_label(o, task.labels()) for o in outs]
        assert sum(b.per_reward["balanced_accuracy"]) / len(outs) == pytest.approx(
            scoring.balanced_accuracy(gold, pred), abs=1e-12)
    assert text_rewards.scoring is scoring  # one implementation, imported by both


def test_balanced_accuracy_on_an_unbalanced_step():
    """3 'Yes' items all right, 1 'No' item wrong: accuracy 0.75 but balanced accuracy 0.5; the rare class weighs 2x."""
    rs = _rs(("balanced_accuracy", 1.0, {"labels": ["Yes", "No"]}))
    b = rs(["Yes", "Yes.", "yes, clearly", "Yes"], [{"reference": r} for r in ("Yes", "Yes", "Yes", "No")])
    assert b.per_reward["balanced_accuracy"] == pytest.approx([2 / 3] * 3 + [0.0])
    assert sum(b.per_reward["balanced_accuracy"]) / 4 == pytest.approx(
        scoring.balanced_accuracy(["Yes"] * 3 + ["No"], ["Yes"] * 4)) == pytest.approx(0.5)
    b = rs(["Yes", "No", "No", "No"], [{"reference": r} for r in ("Yes", "Yes", "Yes", "No")])
    assert sum(b.per_reward["balanced_accuracy"]) / 4 == pytest.approx(0.5 * (1 / 3) + 0.5 * 1.0)


@pytest.mark.parametrize("completion,reference,expected", [
    ("Six years.", "six years", 1.0),
    ("Six years from accrual", "Six years", 1.0),  # the answer leads with the reference on a token boundary
    ("Sixty years", "Six", 0.0),
    ("The answer:\nSix years", "Six years", 0.0),  # the gate reads the first non-empty line only
    ("\n\n  Six   years!!", "six years", 1.0),
    ("C", "C", 1.0), ("(c) because", "C", 1.0), ("Option C", "C", 1.0), ("B", "C", 0.0),
    ("", "Yes", 0.0),
])
def test_free_form_exact_match_table(completion, reference, expected):
    assert get_reward("exact_match")(completion, reference) == expected
    assert scoring.closed_item(completion, reference, [reference])[1] == bool(expected)


def test_exact_match_without_a_reference_fails_loudly():
    with pytest.raises(RewardFailed, match="exact_match.*no reference"):
        _rs(("exact_match",))(["Yes"], [{"reference": ""}])


# ---- format ----------------------------------------------------------------------------------------------------


def test_format_reward_checks_what_the_gate_can_extract():
    rs = _rs(("format", 1.0, {"labels": ["Yes", "No"]}))
    assert rs(["Yes, because", "Perhaps", "no"], [{"reference": "Yes"}] * 3).per_reward["format"] == [1.0, 0.0, 1.0]
    rs = _rs(("format", 1.0, {"answer_prefix": "Answer:", "required_sections": ["Issue", "Rule"],
                              "pattern": r"s\.\s*\d+"}))
    good = "## Issue\nTime bar.\n**Rule**: s.2 applies.\nAnswer: out of time"
    vals = rs([good, "Issue: x\nAnswer:", "nothing"], [{"reference": "x"}] * 3).per_reward["format"]
    assert vals == [1.0, 0.25, 0.0]
    rs = _rs(("format", 1.0, {"answer_prefix": "Answer:", "pattern": "zzz", "all_or_nothing": True}))
    assert rs(["Answer: yes"], [{"reference": "x"}]).per_reward["format"] == [0.0]
    with pytest.raises(RewardFailed, match="no format check applies"):
        _rs(("format",))(["Yes"], [{"reference": "Yes"}])
    # the row's own label set is used when the spec gives none
    assert _rs(("format",))(["B."], [{"reference": "A", "labels": ["A", "B"]}]).per_reward["format"] == [1.0]


# ---- citations -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,cites", [
    ("s. 2", ["s 2"]), ("section 2", ["s 2"]), ("s.2(1)", ["s 2(1)"]), ("S 2 (1) (a)", ["s 2(1)(a)"]),
    ("Limitation Act 1980, ss.2 and 5", ["limitation act 1980, s 2", "limitation act 1980, s 5"]),
    ("section 11(4) of the Limitation Act 1980", ["limitation act 1980, s 11(4)"]),
    ("ss 2-4", ["s 2", "s 3", "s 4"]), ("reg. 3 and art 8", ["reg 3", "art 8"]), ("Sch. 1, para 4", ["sch 1", "para 4"]),
    ("Donoghue v Stevenson [1932] AC 562; [2019] UKSC 5", ["[1932] ac 562", "[2019] uksc 5"]),
    ("six years, it's settled", []), ("Yes", []),
])
def test_citation_forms_are_normalised(text, cites):
    assert [str(c) for c in find_citations(text)] == cites


def test_citation_accuracy_scores_supported_share_and_catches_invented_ones():
    ctx = "Limitation Act 1980, s.2: An action founded on tort shall not be brought after six years. See also s.5(1)."
    ex = {"reference": "Six years", "prompt_text": "What is the limit?", "context": ctx}
    answers = [
        "Six years under section 2 of the Limitation Act 1980.",  # supported (act and section)
        "Six years (s.2(1)).",  # a subsection of a provision the context holds whole
        "Six years: s.2 and s.9.",  # s.9 invented -> half
        "Section 2 of the Theft Act 1968.",  # the right number of the wrong Act is invented
        "s.5(2)",  # a subsection the context does not hold
        "Six years.",  # no citation
    ]
    b = _rs(("citation_accuracy",))(answers, [ex] * len(answers))
    assert b.per_reward["citation_accuracy"] == [1.0, 1.0, 0.5, 0.0, 0.0, 0.0]
    b = _rs(("citation_accuracy", 1.0, {"invented": "zero", "no_citation": "one"}))(answers, [ex] * len(answers))
    assert b.per_reward["citation_accuracy"] == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    b = _rs(("citation_accuracy", 1.0, {"no_citation": "skip"}))(answers, [ex] * len(answers))
    assert b.per_reward["citation_accuracy"][-1] is None and b.skipped == {"citation_accuracy": 1}
    assert b.failures["citation_accuracy"] == [] and b.total[-1] == 0.0
    assert b.metrics()["reward/citation_accuracy/skipped"] == 1.0


def test_citation_index_file(tmp_path):
    idx = tmp_path / "cites.txt"
    idx.write_text("# allowed\nLimitation Act 1980, s.2\n[2019] UKSC 5\n")
    jl = tmp_path / "cites.jsonl"
    jl.write_text(json.dumps({"citation": "Equality Act 2010, s.4"}) + "\n" + json.dumps("reg 3") + "\n")
    answers = ["s 2 of the Limitation Act 1980 and [2019] UKSC 5", "Equality Act 2010, s.4 and reg. 3", "s.7"]
    for path, expected in ((idx, [1.0, 0.0, 0.0]), (jl, [0.0, 1.0, 0.0])):
        rs = _rs(("citation_accuracy", 1.0, {"index": str(path), "use_context": False}))
        assert rs(answers, [{"reference": "x"}] * 3).per_reward["citation_accuracy"] == expected
    bad = tmp_path / "bad.txt"
    bad.write_text("Limitation Act 1980, s.2\nnot a citation\n")
    with pytest.raises(ValueError, match=r"grpo.rewards\[0\].*bad.txt, line 2: no citation recognised"):
        _rs(("citation_accuracy", 1.0, {"index": str(bad)}))
    with pytest.raises(ValueError, match="citation index .* not found"):
        _rs(("citation_accuracy", 1.0, {"index": str(tmp_path / "missing.txt")}))
    with pytest.raises(RewardFailed, match="no context to check citations against"):
        _rs(("citation_accuracy",))(["s.2"], [{"reference": "x"}])


def test_rubric_and_overlap_still_work():
    assert get_reward("reference_overlap")("six years", "six years") == 1.0
    assert get_reward("rubric")("six years, s.2", "six years", {"must_include": ["six"], "cite": True}) == 1.0
    assert get_reward("rubric")("six years", "six years", "Score 0-3 a rubric text") == 0.5


# ---- composition and failure semantics --------------------------------------------------------------------------


def _flaky(params, context):
    def run(completions, examples):
        return [Fail("it said boom") if "boom" in c else float(len(c) % 2) for c in completions]

    run.where = "a flaky test reward"
    return run


register_batch_reward("flaky_test", _flaky)


def test_weighted_total_failures_are_reported_and_nan_never_zero(caplog):
    rs = _rs(("exact_match", 2.0), ("flaky_test", -0.5))
    ex = [{"reference": "Yes"}] * 3
    with caplog.at_level(logging.WARNING, logger="lexforge.train.rewards"):
        b = rs(["Yes", "No!", "Yes boom"], ex)
    assert b.per_reward == {"exact_match": [1.0, 0.0, 1.0], "flaky_test": [1.0, 1.0, None]}
    assert b.total == [2.0 - 0.5, -0.5, 2.0]  # the failed term adds nothing; the item is still scored by the other
    assert b.failures["flaky_test"] == ["item 2: it said boom"] and b.failures["exact_match"] == []
    assert "failed on 1 of 3" in caplog.text
    m = b.metrics()
    assert m["reward/flaky_test/failures"] == 1.0 and m["reward/flaky_test/mean"] == 1.0
    assert m["reward/total/mean"] == pytest.approx((1.5 - 0.5 + 2.0) / 3) and m["reward/total/failed_items"] == 0
    # an item every reward failed on has no total (NaN), never 0
    b = _rs(("flaky_test",))(["ok", "boom"], ex[:2])
    assert b.total[0] == 0.0 and math.isnan(b.total[1]) and b.metrics()["reward/total/failed_items"] == 1.0
    with pytest.raises(RewardFailed, match=r"'flaky_test' \(grpo.rewards\[0\], a flaky test reward\) failed on every "
                                           r"one of the 2 completions.*item 0: it said boom"):
        _rs(("flaky_test",))(["boom", "boom!"], ex[:2])
    with pytest.raises(ValueError, match="one example per completion"):
        rs(["a"], ex)


def test_a_reward_that_raises_or_returns_nan_is_a_failure_not_a_value():
    register_reward("raises_on_no", lambda c, r, rub=None: 1.0 if c == "yes" else 1 / 0)
    register_batch_reward("nan_test", lambda p, c: lambda comps, exs: [float("nan")] * (len(comps) - 1) + [0.25])
    b = _rs(("raises_on_no",), ("nan_test",))(["yes", "no"], [{"reference": "x"}] * 2)
    assert b.per_reward["raises_on_no"] == [1.0, None] and "ZeroDivisionError" in b.failures["raises_on_no"][0]
    assert b.per_reward["nan_test"] == [None, 0.25] and "not a finite number" in b.failures["nan_test"][0]
    assert math.isnan(b.total[0]) is False and b.total == [1.0, 0.25]


def test_duplicate_reward_names_get_distinct_labels():
    rs = _rs(("format", 1.0, {"pattern": "a"}), ("format", 1.0, {"pattern": "b"}))
    assert rs.labels == ["format_0", "format_1"]
    assert rs(["ab"], [{"reference": "x"}]).total == [2.0]


@pytest.mark.parametrize("reward,message", [
    ({"name": "nope"}, r"grpo.rewards\[0\].name='nope' is not a known reward"),
    ({"name": "llm_judge", "params": {"timeout": 3}}, r"grpo.rewards\[0\].params.timeout: .*accepted: .*timeout_s"),
    ({"name": "llm_judge", "params": {"timeout_s": "fast"}}, r"grpo.rewards\[0\].params.timeout_s='fast': must be a number"),
    ({"name": "llm_judge", "params": {"base_url": "http://x/v1"}}, r"params.model: is required with params.base_url"),
    ({"name": "llm_judge", "params": {"template": "{answer}"}}, r"params.template: lacks \{question\}"),
    ({"name": "llm_judge", "params": {"concurrency": 0}}, r"params.concurrency=0: must be an integer in \[1"),
    ({"name": "format", "params": {"pattern": "("}}, r"params.pattern='\(': is not a valid regular expression"),
    ({"name": "exact_match", "params": {"labels": "Yes"}}, r"params.labels='Yes': must be a non-empty list"),
    ({"name": "citation_accuracy", "params": {"no_citation": "half"}}, r"params.no_citation='half': must be one of"),
    ({"name": "citation_accuracy", "params": {"use_context": False}}, r"params.use_context: false needs params.index"),
    ({"name": "rubric", "params": {"x": 1}}, r"params.x: reward 'rubric' has no param 'x' \(accepted: none"),
])
def test_bad_reward_params_fail_when_the_spec_loads(reward, message):
    with pytest.raises(SpecError, match=message):
        _grpo_spec([reward])


def test_good_reward_specs_load():
    spec = _grpo_spec([{"name": "exact_match", "weight": 2, "params": {"labels": ["Yes", "No"]}},
                       {"name": "citation_accuracy", "weight": 0.5, "params": {"no_citation": "skip"}},
                       {"name": "llm_judge", "weight": 1, "params": {"timeout_s": 5, "max_retries": 0}}])
    check_reward_specs(spec.grpo.rewards)
    assert [r.name for r in spec.grpo.rewards] == ["exact_match", "citation_accuracy", "llm_judge"]


# ---- llm_judge: endpoint, timeouts (fast: a real socket that never answers) --------------------------------------


def test_judge_defaults_to_the_platform_server_and_a_timeout_is_a_reported_failure(monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers: every request times out
    port = silent.getsockname()[1]
    try:
        monkeypatch.setenv("LEXFORGE_SERVE_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("LEXFORGE_SERVE_API_KEY", "secret-serve-key-987")
        rs = build_rewards([{"name": "llm_judge", "params": {"timeout_s": 0.3, "max_retries": 0}}],
                           served_name="my-champion")
        fn = rs.terms[0].fn
        assert fn.where == f"judge 'my-champion' at http://127.0.0.1:{port}/v1"
        with pytest.raises(RewardFailed, match=rf"judge 'my-champion' at http://127.0.0.1:{port}/v1.*"
                                               r"item 0: the judge did not answer: APITimeoutError") as e:
            rs(["Six years", "Three years"], [{"reference": "Six years", "prompt_text": "Limit?"}] * 2)
        assert "secret-serve-key-987" not in str(e.value)
        assert fn.stats() == {"cache_hits": 0, "requests": 2}  # failures are not cached
    finally:
        silent.close()


# ---- data: the example keeps what the rewards read ---------------------------------------------------------------


def test_grpo_rows_keep_context_and_labels(tiny_model_dir):
    from transformers import AutoTokenizer

    from lexforge.data.formats import RowDrop, canonicalize
    from lexforge.train.data import tokenize_grpo

    row, _ = canonicalize({"prompt": "Is it in time?", "answer": "Yes", "context": "Limitation Act 1980, s.2 ...",
                           "labels": ["Yes", "No"]}, "grpo")
    assert row["context"].startswith("Limitation Act") and row["labels"] == ["Yes", "No"]
    with pytest.raises(RowDrop, match="labels must be"):
        canonicalize({"prompt": "q", "reference": "Yes", "labels": "Yes"}, "grpo")
    ex = tokenize_grpo(row, AutoTokenizer.from_pretrained(tiny_model_dir), 512)
    assert ex["prompt_text"] == "Is it in time?" and ex["context"] == row["context"] and ex["labels"] == ["Yes", "No"]
    b = _rs(("exact_match",), ("citation_accuracy",))(["Yes: s.2 applies"], [ex])
    assert b.total == [2.0]


# ---- llm_judge over a real OpenAI-compatible server (heavy) -------------------------------------------------------


def _health_calls(url: str) -> int:
    with urllib.request.urlopen(url[: -len("/v1")] + "/health", timeout=10) as r:
        return json.load(r)["calls"]


@pytest.mark.slow
def test_llm_judge_reward_over_a_real_server_caches_and_reports_failures(tiny_model_dir, tmp_path, monkeypatch):
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from eval_helpers import teach_fixed_reply
    from lexforge.evaluate.judge import JUDGE_SYSTEM
    from test_eval import serve_judge

    torch.set_num_threads(1)
    rubric = "Score 0-3: does the answer state the six-year limit?"
    ex = {"reference": "Six years (Limitation Act 1980, s.2).", "prompt_text": "What is the limit in tort?",
          "rubric": rubric}
    answers = ["Six years.", "Six years from accrual.", "Three years.", "No idea."]
    params = {"base_url": "http://127.0.0.1:1/v1", "model": "tiny-judge", "api_key_env": "REWARD_JUDGE_KEY",
              "timeout_s": 30, "max_retries": 0, "concurrency": 2, "max_tokens": 16, "cache_dir": str(tmp_path / "c")}
    probe = build_rewards([{"name": "llm_judge", "params": params}]).terms[0].fn
    prompts = [probe.prompt(a, ex)[0] for a in answers + ["FAILME"]]
    judge_dir = teach_fixed_reply(tiny_model_dir, tmp_path / "judge", prompts, "SCORE: 2", lora=False, steps=40,
                                  lr=3e-3, system=JUDGE_SYSTEM)
    key = "reward-judge-secret-42"
    monkeypatch.setenv("REWARD_JUDGE_KEY", key)
    with serve_judge(judge_dir, tmp_path / "judge.log", key, env={"TINY_SERVER_FAIL_IF_CONTAINS": "FAILME"}) as url:
        spec = [{"name": "llm_judge", "params": {**params, "base_url": url}}]
        rs = build_rewards(spec)
        comps = answers + ["FAILME please"]
        b = rs(comps, [ex] * len(comps))
        vals, fails = b.per_reward["llm_judge"], b.failures["llm_judge"]
        assert vals[-1] is None and math.isnan(b.total[-1])
        assert any(f.startswith("item 4: the judge did not answer") and "500" in f for f in fails)
        parsed = [v for v in vals[:-1] if v is not None]
        assert parsed and all(v == pytest.approx(2 / 3) for v in parsed)  # "SCORE: 2" on the rubric's 0-3 scale
        assert len(fails) == 1 + sum(v is None for v in vals[:-1])  # unparsable verdicts are failures too
        assert all("unparsable verdict" in f for f in fails if not f.startswith("item 4"))
        m = b.metrics()
        assert m["reward/llm_judge/requests"] == 5 and m["reward/llm_judge/failures"] == len(fails)
        calls = _health_calls(url)
        # same inputs again: answered verdicts come from the cache, only the failed item is asked again
        b2 = rs(comps, [ex] * len(comps))
        assert b2.per_reward == b.per_reward and _health_calls(url) == calls + 1
        assert b2.metrics()["reward/llm_judge/cache_hits"] == 4
        # a new worker with the same cache_dir: no request for the answered items either
        b3 = build_rewards(spec)(answers, [ex] * len(answers))
        assert b3.per_reward["llm_judge"] == vals[:-1] and _health_calls(url) == calls + 1
        with pytest.raises(RewardFailed, match=rf"judge 'tiny-judge' at {url}.*item 0: .*500") as e:
            rs(["FAILME 1", "FAILME 2"], [ex] * 2)
        assert key not in str(e.value)
