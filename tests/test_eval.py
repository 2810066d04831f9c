"""Eval gate on real engines: a tiny Llama (transformers and vLLM), a LoRA adapter taught one reply, and an
LLM judge served over a real OpenAI-compatible HTTP endpoint by a real (tiny, taught) model."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lexforge.storage.layout import RunLayout

from lexforge.config import spec_from_dict
from lexforge.evaluate import EvalError, run_eval, scoring
from lexforge.evaluate.judge import build_judge_prompt, parse_verdict, rubric_scale
from lexforge.evaluate.tasks import load_task
from lexforge.procs import spawn, stop_group, wait_http
from lexforge.samples import sample_path
from lexforge.testing import build_tiny_llama, free_port

# 2 shared CPU cores: one intra-op thread avoids OpenMP spin contention (20x slower steps under load otherwise)
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
from eval_helpers import teach_fixed_reply  # noqa: E402

TASKS = sample_path("legalbench", "tasks")
YES_NO, MCQ, EXPLAIN = (str(TASKS / t) for t in ("statute_yes_no", "statute_mcq", "statute_explain"))


def _spec(tmp_path, suites, model=None, **eval_kw):
    ev = {"engine": "transformers", "max_new_tokens": 6, "batch_size": 16, "suites": suites, **eval_kw}
    return spec_from_dict({"name": "evaltest", "data": {"train": "unused.jsonl"}, "eval": ev,
                           "storage": {"root": str(tmp_path / "store")}, **({"model": model} if model else {})})


def _sk_balanced_accuracy(gold, pred):
    from sklearn.metrics import balanced_accuracy_score
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return balanced_accuracy_score([g.lower() for g in gold], [(p or "<invalid>").lower() for p in pred])


# ---- scoring rules (LegalBench) -----------------------------------------------------------------------------


def test_closed_scoring_follows_legalbench():
    assert scoring.normalize("  Yes.  ") == "yes"
    assert scoring.extract_label("Yes, because s.4 lists it", ["Yes", "No"]) == "Yes"
    assert scoring.extract_label("no\nmore text", ["Yes", "No"]) == "No"
    assert scoring.extract_label("Not sure", ["Yes", "No"]) is None
    assert scoring.extract_label("Nobody knows", ["Yes", "No"]) is None  # token boundary, not prefix
    letters = list("ABCD")
    for g in ("C", "C.", "(c)", "c) Six years", "Option C", "Answer: C"):
        assert scoring.extract_label(g, letters) == "C", g
    assert scoring.extract_label("Six years", letters) is None
    gold = ["Yes", "Yes", "Yes", "No"]
    pred = ["Yes", "Yes", "Yes", "Yes"]  # constant predictor: balanced accuracy 1/k, accuracy = majority share
    assert scoring.balanced_accuracy(gold, pred) == pytest.approx(0.5)
    assert scoring.exact_match(gold, pred) == pytest.approx(0.75)
    pred2 = ["Yes", None, "No", "No"]
    assert scoring.balanced_accuracy(gold, pred2) == pytest.approx(_sk_balanced_accuracy(gold, pred2))


def test_open_overlap_and_blend():
    assert scoring.token_f1("six years from accrual", "Six years from the date of accrual.") == pytest.approx(
        2 * (4 / 4) * (4 / 7) / (4 / 4 + 4 / 7))
    assert scoring.rouge_l("a b c d", "a x c d") == pytest.approx(0.75)
    assert scoring.token_f1("", "x") == 0.0
    assert scoring.blend(0.8, 0.4, 0.25) == pytest.approx(0.5)
    assert scoring.blend(0.8, None, 0.25) == 0.8 and scoring.blend(None, 0.4, 0.25) == 0.4


def test_judge_verdict_parsing_and_scale():
    assert rubric_scale("Award 1 point each ... Score 0-3.") == (0, 3)
    assert rubric_scale("no scale given") == (0, 10)
    v = parse_verdict("Cites the section.\nSCORE: 2", 0, 3)
    assert v.parsed and v.score == 2 and v.normalised == pytest.approx(2 / 3)
    assert parse_verdict("score: 9", 0, 3).score == 3  # clipped to the rubric's scale
    assert parse_verdict('{"score": 1, "reason": "x"}', 0, 3).normalised == pytest.approx(1 / 3)
    bad = parse_verdict("looks fine to me", 0, 3)
    assert not bad.parsed and bad.normalised == 0.0
    p = build_judge_prompt("Q?", "Ref.", "Score 0-3.", "Ans.")
    assert "SCORE: <integer from 0 to 3>" in p and "Ref." in p and "Ans." in p


def test_task_loader_errors_name_the_file(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "base_prompt.txt").write_text("Q: {{text}} {{missing_col}}\nA:")
    (d / "test.tsv").write_text("index\ttext\tanswer\n0\tIs it?\tYes\n")
    with pytest.raises(ValueError, match="missing_col"):
        load_task(d)


# ---- transformers engine + LoRA adapter ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def yes_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model that answers the yes/no prompts with "Yes"."""
    task = load_task(YES_NO)
    prompts = [task.render(r) for r in task.train_rows]
    # lr 1e-2: on the 64-wide tiny Llama a LoRA at 3e-2 oscillates and never learns the reply
    return teach_fixed_reply(tiny_model_dir, tmp_path_factory.mktemp("yes") / "adapter", prompts, "Yes",
                             lora=True, steps=100, lr=1e-2)


def test_run_eval_transformers_adapter_closed_open_blend_cost(tmp_path, tiny_model_dir, yes_adapter):
    suites = [{"name": "yes_no", "path": YES_NO}, {"name": "mcq", "path": MCQ, "weight": 0.5},
              {"name": "explain", "path": EXPLAIN, "kind": "open"}]
    spec = _spec(tmp_path, suites, closed_weight=0.7)
    base = run_eval(spec, str(tiny_model_dir), label="base", cost_per_hour=2.0)
    tuned = run_eval(spec, str(tiny_model_dir), adapter=str(yes_adapter), label="tuned", cost_per_hour=2.0)

    # held-out rows only: every test row, nothing else
    n_test = {name: len(load_task(p).test_rows) for name, p in (("yes_no", YES_NO), ("mcq", MCQ), ("explain", EXPLAIN))}
    for r in (base, tuned):
        assert {k: v["n"] for k, v in r.suites.items()} == n_test
        assert r.engine == "transformers"
        # every score carries its bootstrap interval at promotion.confidence
        assert r.confidence == 0.9 and r.blended_ci[0] <= r.blended <= r.blended_ci[1]
        for s in r.suites.values():
            assert s["ci"][0] <= s["score"] <= s["ci"][1] and len(s["digest"]) == 64
        assert r.settings["engine"] == {"requested": "transformers", "dtype": "auto", "max_model_len": 1024,
                                        "max_lora_rank": 64}  # the serving settings (context capped at the model's)
    # the adapter really is applied: it changes what the model says, towards "Yes"
    base_out = [i["output"] for i in base.suites["yes_no"]["items"]]
    tuned_out = [i["output"] for i in tuned.suites["yes_no"]["items"]]
    assert base_out != tuned_out
    yes_share = sum(p == "Yes" for p in (i["prediction"] for i in tuned.suites["yes_no"]["items"])) / n_test["yes_no"]
    assert yes_share > 0.5
    # closed score = balanced accuracy of the stored predictions (independent reference: sklearn)
    for r in (base, tuned):
        for name in ("yes_no", "mcq"):
            items = r.suites[name]["items"]
            expect = _sk_balanced_accuracy([i["answer"] for i in items], [i["prediction"] for i in items])
            assert r.suites[name]["score"] == pytest.approx(expect)
    # a (near-)constant "Yes" model cannot beat 1/2 balanced accuracy on a two-class task
    assert tuned.suites["yes_no"]["score"] <= 0.5 + 1e-9
    # open suite without a judge: clearly labelled reference overlap, never a judge score
    assert tuned.open_metric == "reference_overlap" and tuned.judge is None
    ex = tuned.suites["explain"]
    assert ex["metric"] == "reference_overlap_token_f1"
    assert ex["score"] == pytest.approx(sum(scoring.token_f1(i["output"], i["reference"]) for i in ex["items"]) / ex["n"])
    assert "NOT a judge score" in tuned.to_markdown()
    # aggregates: weighted closed mean, then the leaderboard blend
    closed = (tuned.suites["yes_no"]["score"] * 1.0 + tuned.suites["mcq"]["score"] * 0.5) / 1.5
    assert tuned.closed == pytest.approx(closed)
    assert tuned.blended == pytest.approx(0.7 * closed + 0.3 * ex["score"])
    assert tuned.cost == {"usd_per_hour": 2.0, "source": "input", "score_per_usd_hour": pytest.approx(tuned.blended / 2)}
    # saved in the store at the agreed key, loadable
    saved = json.loads((tmp_path / "store" / RunLayout("evaltest").eval_report("tuned")).read_text())
    assert saved["blended"] == pytest.approx(tuned.blended) and saved["label"] == "tuned"
    assert set(saved) >= {"label", "suites", "closed", "open", "blended", "judge", "open_metric"}


def test_cli_compare_shows_models_side_by_side_with_cost(tmp_path, tiny_model_dir, yes_adapter):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        f"name: cmp\ndata: {{train: unused.jsonl}}\nmodel: {{base: {tiny_model_dir}}}\n"
        f"storage: {{root: {tmp_path / 'store'}}}\n"
        f"eval:\n  engine: transformers\n  max_new_tokens: 4\n  suites:\n    - {{name: yes_no, path: {YES_NO}}}\n")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lexforge.cli", "eval", str(spec_file), *args],
                              capture_output=True, text=True, timeout=600)

    missing = cli("--label", "tuned", "--compare", "nosuch")
    assert missing.returncode == 2 and "--compare nosuch: no saved report runs/cmp/eval/nosuch.json" in missing.stderr
    base = cli("--label", "base", "--cost-per-hour", "2.0")
    assert base.returncode == 0, base.stderr[-2000:]
    tuned = cli("--label", "tuned", "--adapter", str(yes_adapter), "--cost-per-hour", "4.0", "--compare", "base")
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    board = tuned.stdout[tuned.stdout.index("## Leaderboard"):]
    rows = {line.split("|")[1].strip(): line for line in board.splitlines() if line.startswith("| base")
            or line.startswith("| tuned")}
    assert set(rows) == {"base", "tuned"} and "blended per $/hour" in board
    assert "| 2.00 |" in rows["base"] and "| 4.00 |" in rows["tuned"]


def test_eval_prompts_are_the_serving_engines_prompts(tiny_model_dir):
    """Both eval engines get the token ids the serving engine builds for the same chat request."""
    from types import SimpleNamespace

    from lexforge.evaluate.generate import load_tokenizer, prompt_token_ids
    from lexforge.serve.engine import Engine

    task = load_task(YES_NO)
    prompts = [task.render(r) for r in task.test_rows[:6]]
    tok = load_tokenizer(str(tiny_model_dir))
    served = [Engine.chat_prompt_ids(SimpleNamespace(tokenizer=tok), [{"role": "user", "content": p}]) for p in prompts]
    assert prompt_token_ids(tok, prompts) == served


def test_eval_cache_evaluates_once_and_its_key_follows_weights_suites_settings(tmp_path, tiny_model_dir):
    import shutil

    from lexforge.evaluate.cache import evaluate_cached, report_cache_key
    from lexforge.evaluate.identity import weights_digest

    suite = tmp_path / "yes_no"
    shutil.copytree(YES_NO, suite)
    spec = _spec(tmp_path, [{"name": "yes_no", "path": str(suite)}], max_new_tokens=2)
    first = evaluate_cached(spec, str(tiny_model_dir), label="base")
    again = evaluate_cached(spec, str(tiny_model_dir), label="base-again")
    assert first.extra["cache"]["hit"] is False and again.extra["cache"] == {
        "key": first.extra["cache"]["key"], "hit": True, "first_label": "base"}
    assert again.created_at == first.created_at and again.suites == first.suites  # not generated again
    saved = json.loads((tmp_path / "store" / RunLayout("evaltest").eval_report("base-again")).read_text())
    assert saved["label"] == "base-again" and (tmp_path / "store" / "eval-cache" / f"{first.extra['cache']['key']}.json").is_file()

    key = report_cache_key(spec, str(tiny_model_dir), None)
    assert key == first.extra["cache"]["key"]
    # the prompts / decoding / engine settings
    for override in ({"max_new_tokens": 3}, {"engine": "vllm"}, {"closed_weight": 0.2}):
        other = _spec(tmp_path, [{"name": "yes_no", "path": str(suite)}], **{"max_new_tokens": 2, **override})
        assert report_cache_key(other, str(tiny_model_dir), None) != key, override
    assert report_cache_key(_spec(tmp_path, [{"name": "yes_no", "path": str(suite)}], model={"dtype": "float32"},
                                  max_new_tokens=2), str(tiny_model_dir), None) != key
    # the base weights (a hidden marker file is not part of them)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    assert report_cache_key(spec, str(model), None) == key
    (model / ".lexforge_complete").write_text("downloaded")
    assert weights_digest(model) == weights_digest(tiny_model_dir)
    w = model / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    assert report_cache_key(spec, str(model), None) != key
    # a suite file
    with open(suite / "test.tsv", "a") as f:
        f.write("999\tIs this a new question?\tYes\tnone\n")
    assert report_cache_key(spec, str(tiny_model_dir), None) != key


def test_cost_from_planner(tmp_path, tiny_model_dir):
    pytest.importorskip("lexforge.plan")
    spec = _spec(tmp_path, [{"name": "mcq", "path": MCQ}])
    r = run_eval(spec, str(tiny_model_dir), label="planned", gpu="H100")
    from lexforge.plan import plan_serving

    plan = plan_serving(str(tiny_model_dir), context_len=spec.serve.max_model_len, gpu="H100")
    assert r.cost["source"] == "planner" and r.cost["usd_per_hour"] == pytest.approx(plan.cost_per_hour)
    assert r.cost["score_per_usd_hour"] == pytest.approx(r.blended / plan.cost_per_hour)


# ---- LLM judge over a real OpenAI-compatible endpoint --------------------------------------------------------


@pytest.fixture(scope="module")
def judge_model(tiny_model_dir, tmp_path_factory):
    """A tiny model taught to grade with "SCORE: 2"."""
    task = load_task(EXPLAIN)
    rows = task.train_rows + task.test_rows[:3]
    answers = ["", "The Act says so.", "six years", "An action shall not be brought after six years."]
    prompts = [build_judge_prompt(r["text"], r["answer"], r["rubric"], a) for r in rows for a in answers]
    # the judge sees the system prompt too: teach with the same message layout the Judge uses
    from lexforge.evaluate.judge import JUDGE_SYSTEM

    d = tmp_path_factory.mktemp("judge")
    return teach_fixed_reply(tiny_model_dir, d / "judge-model", prompts, "Partly right.\nSCORE: 2", lora=False,
                             steps=60, lr=3e-3, system=JUDGE_SYSTEM)


@contextlib.contextmanager
def serve_judge(model_dir: Path, log: Path, key: str, env: dict | None = None):
    """The judge model behind a real OpenAI-compatible HTTP server requiring ``key``; yields its /v1 URL."""
    port = free_port()
    proc = spawn([sys.executable, str(Path(__file__).parent / "openai_tiny_server.py"), str(model_dir), str(port), key],
                 log, env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc, log_path=log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_group(proc.pid)


@pytest.fixture(scope="module")
def judge_server(judge_model, tmp_path_factory):
    key = "judge-secret-value-123"
    with serve_judge(judge_model, tmp_path_factory.mktemp("judge-log") / "judge.log", key) as url:
        yield url, key


def test_open_suite_scored_by_llm_judge(tmp_path, tiny_model_dir, judge_server, monkeypatch):
    url, key = judge_server
    monkeypatch.setenv("LEXFORGE_JUDGE_API_KEY", key)
    spec = _spec(tmp_path, [{"name": "explain", "path": EXPLAIN, "kind": "open"}, {"name": "yes_no", "path": YES_NO}],
                 judge={"base_url": url, "model": "tiny-judge"}, closed_weight=0.5)
    r = run_eval(spec, str(tiny_model_dir), label="judged")
    assert r.open_metric == "judge"
    assert r.judge["model"] == "tiny-judge" and r.judge["base_url"] == url
    assert "SCORE:" in r.judge["prompt_template"] and r.judge["api_key_env"] == "LEXFORGE_JUDGE_API_KEY"
    ex = r.suites["explain"]
    assert ex["metric"] == "judge_rubric" and ex["n"] == len(load_task(EXPLAIN).test_rows)
    verdicts = [i["verdict"] for i in ex["items"]]
    assert all(v["raw"] for v in verdicts)  # raw verdicts stored
    # score is exactly what the stored verdicts say, on the rubric's 0-3 scale
    assert ex["score"] == pytest.approx(sum(v["normalised"] for v in verdicts) / len(verdicts))
    assert ex["unparsed_verdicts"] == sum(not v["parsed"] for v in verdicts)
    parsed = [v for v in verdicts if v["parsed"]]
    assert len(parsed) >= len(verdicts) - 1 and all(v["score"] == 2 for v in parsed)
    assert r.blended == pytest.approx(0.5 * r.closed + 0.5 * ex["score"])
    dumped = json.dumps(r.to_dict()) + (tmp_path / "store" / RunLayout("evaltest").eval_report("judged")).read_text()
    assert key not in dumped  # the secret never reaches the report


def test_judge_failing_on_an_item_counts_as_a_failure_never_a_pass(tmp_path, tiny_model_dir, judge_model,
                                                                     monkeypatch):
    """A judge that breaks down on one question (HTTP 500 after the client's retries): that item scores 0 with the
    error recorded, the rest is graded, and the suite reports the failure count and the verbosity check."""
    rows = load_task(EXPLAIN).test_rows
    marker = rows[0]["text"]
    key = "judge-secret-value-123"
    monkeypatch.setenv("LEXFORGE_JUDGE_API_KEY", key)
    with serve_judge(judge_model, tmp_path / "judge.log", key, env={"TINY_SERVER_FAIL_IF_CONTAINS": marker}) as url:
        spec = _spec(tmp_path, [{"name": "explain", "path": EXPLAIN, "kind": "open"}],
                     judge={"base_url": url, "model": "tiny-judge"}, max_new_tokens=4)
        r = run_eval(spec, str(tiny_model_dir), label="flaky-judge")
    ex = r.suites["explain"]
    failed = [i for i in ex["items"] if i["verdict"]["error"]]
    assert len(failed) == sum(marker in row["text"] for row in rows) >= 1
    assert all(i["score"] == 0.0 and i["verdict"]["normalised"] == 0.0 and not i["verdict"]["parsed"] and
               "500" in i["verdict"]["error"] for i in failed)
    assert ex["judge_failures"] == len(failed) and ex["unparsed_verdicts"] == sum(
        not i["verdict"]["parsed"] and not i["verdict"]["error"] for i in ex["items"])
    assert ex["score"] == pytest.approx(sum(i["score"] for i in ex["items"]) / ex["n"])
    assert ex["n"] == len(rows)  # the failed item is in the denominator: not skipped, not given a grade
    bias = ex["length_bias"]
    assert bias["n"] == ex["n"] and set(bias) == {"pearson", "spearman", "n"}
    assert f"{len(failed)} items the judge did not answer (scored 0)" in r.to_markdown()


def test_judge_bad_key_is_a_clear_error_without_the_key(tmp_path, tiny_model_dir, judge_server, monkeypatch):
    url, _ = judge_server
    monkeypatch.setenv("LEXFORGE_JUDGE_API_KEY", "wrong-key-456")
    spec = _spec(tmp_path, [{"name": "explain", "path": EXPLAIN, "kind": "open"}],
                 judge={"base_url": url, "model": "tiny-judge"}, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="judge 'tiny-judge' at http") as e:
        run_eval(spec, str(tiny_model_dir), label="badkey")
    assert "wrong-key-456" not in str(e.value)


def test_judge_defaults_to_the_platforms_own_served_model(tmp_path, tiny_model_dir, judge_server, monkeypatch):
    url, key = judge_server  # stands in for `lexforge serve` here: an OpenAI-compatible server on loopback
    monkeypatch.setenv("LEXFORGE_SERVE_URL", url[: -len("/v1")])
    monkeypatch.setenv("LEXFORGE_SERVE_API_KEY", key)
    monkeypatch.delenv("LEXFORGE_JUDGE_API_KEY", raising=False)
    spec = _spec(tmp_path, [{"name": "explain", "path": EXPLAIN, "kind": "open"}], judge={}, max_new_tokens=2)
    r = run_eval(spec, str(tiny_model_dir), label="ownjudge")
    assert r.open_metric == "judge" and r.judge["source"] == "platform"
    assert r.judge["base_url"] == url and r.judge["model"] == spec.serve.served_name
    assert r.judge["api_key_env"] == "LEXFORGE_SERVE_API_KEY"
    assert sum(v["verdict"]["score"] == 2 for v in r.suites["explain"]["items"]) >= r.suites["explain"]["n"] - 1
    assert "the platform's own served model" in r.to_markdown()
    # without the server's key: a clear error saying what to start / set, never the key itself
    monkeypatch.setenv("LEXFORGE_SERVE_API_KEY", "wrong-key-789")
    with pytest.raises(RuntimeError, match=r"lexforge serve.*LEXFORGE_SERVE_API_KEY") as e:
        run_eval(spec, str(tiny_model_dir), label="ownjudge-badkey")
    assert "wrong-key-789" not in str(e.value)


def test_judge_endpoint_without_model_is_a_spec_error(tmp_path):
    from lexforge.config import SpecError

    with pytest.raises((SpecError, ValueError), match="eval.judge.model is required"):
        _spec(tmp_path, [{"name": "explain", "path": EXPLAIN, "kind": "open"}], judge={"base_url": "http://x/v1"})


# ---- vLLM engine (offline, CPU) through the CLI ---------------------------------------------------------------


def test_adapter_from_another_base_is_refused_naming_both(tmp_path, tiny_model_dir, yes_adapter):
    # vLLM applies nothing and says nothing when an adapter does not fit the base: the platform checks first
    other = build_tiny_llama(tmp_path / "other", hidden_size=96)
    spec = _spec(tmp_path, [{"name": "yes_no", "path": YES_NO}])
    with pytest.raises(EvalError, match=r"adapter .*lora_A.* has shape .* but .*other.*trained on .*fine-tuned from"):
        run_eval(spec, str(other), adapter=str(yes_adapter), label="mismatch")
    assert not (tmp_path / "store" / RunLayout("evaltest").eval_report("mismatch")).exists()


@pytest.mark.slow
def test_eval_cli_vllm_engine_with_lora(tmp_path):
    pytest.importorskip("vllm")
    # vLLM's CPU attention needs head_dim in {32, 64, ...}: a tiny Llama with head_dim 32
    model = build_tiny_llama(tmp_path / "tiny32", hidden_size=128, num_heads=4, num_kv_heads=2)
    task = load_task(YES_NO)
    adapter = teach_fixed_reply(model, tmp_path / "yes32", [task.render(r) for r in task.train_rows], "Yes",
                                lora=True, steps=40)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        f"name: vllmeval\ndata: {{train: unused.jsonl}}\nmodel: {{base: {model}, dtype: float32}}\n"
        f"storage: {{root: {tmp_path / 'store'}}}\nserve: {{max_model_len: 1024}}\n"
        f"eval:\n  max_new_tokens: 4\n  suites:\n    - {{name: yes_no, path: {YES_NO}}}\n")
    # one unbound OpenMP thread: on shared cores vLLM's default core binding spins against other processes
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "lexforge.cli", "eval", str(spec_file), "--adapter", str(adapter),
                          "--label", "vllm", "--engine", "vllm", "--json", "--cost-per-hour", "1.5"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # libraries may print warnings on stdout before the report (deepspeed's accelerator notice): start at "{"
    lines = out.stdout.splitlines()
    rep = json.loads("\n".join(lines[next(i for i, l in enumerate(lines) if l.startswith("{")):]))
    assert rep == json.loads((tmp_path / "store" / RunLayout("vllmeval").eval_report("vllm")).read_text())
    assert rep["engine"] == "vllm" and rep["engine_fallback_reason"] is None
    assert rep["base_model"] == str(model) and rep["cost"]["usd_per_hour"] == 1.5
    # scored as served: the serving engine's dtype, context length and LoRA rank limit (lexforge.serve.settings)
    assert rep["settings"]["engine"] == {"requested": "vllm", "dtype": "float32", "max_model_len": 1024,
                                         "max_lora_rank": 64}
    yn = rep["suites"]["yes_no"]
    assert yn["n"] == len(task.test_rows)
    # every held-out row was generated (greedy) and scored from what vLLM actually said
    assert all(isinstance(i["output"], str) for i in yn["items"]) and len(yn["items"]) == yn["n"]
    assert yn["score"] == pytest.approx(_sk_balanced_accuracy([i["answer"] for i in yn["items"]],
                                                              [i["prediction"] for i in yn["items"]]))
    # the LoRA is really applied by vLLM: its learned answer shows, and greedy fp32 vLLM agrees with transformers
    vllm_out = [i["output"] for i in yn["items"]]
    assert sum(o.startswith("Yes") for o in vllm_out) > len(vllm_out) / 2
    spec = _spec(tmp_path / "tf", [{"name": "yes_no", "path": YES_NO}], model={"dtype": "float32"}, max_new_tokens=4)
    tf = run_eval(spec, str(model), adapter=str(adapter), label="tf")
    tf_out = [i["output"] for i in tf.suites["yes_no"]["items"]]
    assert sum(a == b for a, b in zip(vllm_out, tf_out)) >= 0.9 * len(tf_out), list(zip(vllm_out, tf_out))
