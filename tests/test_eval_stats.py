"""The gate's statistics on item vectors whose answer is known, the paired comparison of reports, the pure
promotion policy and the tables people read. Pure functions: no servers, no models (run without the lock)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from lexforge.config import PromotionSpec
from lexforge.evaluate import compare, scoring, stats
from lexforge.registry.policy import PromotionDecision, evaluate_policy
from lexforge.registry.views import comparison_rows, decision_markdown

sys.path.insert(0, str(Path(__file__).parent))
from eval_helpers import closed_outputs, report_from_outputs, right_first, yes_no_mcq_report  # noqa: E402

IDS = [str(i) for i in range(40)]
GOLD = ["Yes", "No"] * 20


def _closed(correct):
    return stats.closed_items(IDS, correct, GOLD)


# ---- stats ----------------------------------------------------------------------------------------------------


def test_point_score_is_the_scorers_balanced_accuracy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        correct = rng.random(40) < rng.random()
        pred = [g if c else ("No" if g == "Yes" else "Yes") for g, c in zip(GOLD, correct)]
        assert stats.point(_closed(correct)) == pytest.approx(scoring.balanced_accuracy(GOLD, pred))
    assert stats.point(stats.open_items(["a", "b"], [0.2, 0.6])) == pytest.approx(0.4)


def test_identical_models_are_not_distinguishable():
    a = _closed([i % 3 != 0 for i in range(40)])
    d = stats.paired_delta_samples(a, a, 2000, 0, "s")
    lo, hi = stats.percentile_interval(d, 0.9)
    assert (lo, hi) == (0.0, 0.0) and stats.verdict(lo, hi) == stats.TIED
    assert stats.mcnemar_exact(a.values, a.values)["p_value"] == 1.0


def test_a_clearly_better_model_is_better_and_a_clearly_worse_one_worse():
    good = _closed([True] * 32 + [False] * 8)
    bad = _closed([True] * 12 + [False] * 28)
    lo, hi = stats.percentile_interval(stats.paired_delta_samples(good, bad, 2000, 0, "s"), 0.9)
    assert lo > 0.2 and stats.verdict(lo, hi) == stats.BETTER
    lo, hi = stats.percentile_interval(stats.paired_delta_samples(bad, good, 2000, 0, "s"), 0.9)
    assert stats.verdict(lo, hi) == stats.WORSE


def test_a_one_item_gain_on_a_small_set_is_not_a_win():
    old = [True] * 20 + [False] * 20
    new = list(old)
    new[25] = True  # one more right answer out of 40
    lo, hi = stats.percentile_interval(stats.paired_delta_samples(_closed(new), _closed(old), 2000, 0, "s"), 0.9)
    assert lo <= 0 < hi and stats.verdict(lo, hi) == stats.TIED
    assert stats.mcnemar_exact(new, old) == {"only_new_right": 1, "only_old_right": 0, "p_value": 1.0}


def test_pairing_sees_what_two_separate_intervals_cannot():
    # the new model fixes 6 items and breaks none: separately the intervals overlap, paired it is a clear win
    old = [True] * 22 + [False] * 18
    new = [True] * 28 + [False] * 12
    lo_o, hi_o = stats.interval(_closed(old), 0.9, name="s")
    lo_n, hi_n = stats.interval(_closed(new), 0.9, name="s")
    assert lo_n < hi_o  # unpaired: looks like noise
    lo, hi = stats.percentile_interval(stats.paired_delta_samples(_closed(new), _closed(old), 2000, 0, "s"), 0.9)
    assert lo > 0  # paired: distinguishably better
    assert stats.mcnemar_exact(new, old)["p_value"] == pytest.approx(2 / 2 ** 6)


def test_mcnemar_is_the_exact_binomial_test():
    from scipy.stats import binomtest  # independent reference (scipy is in the dev environment)

    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.random(50) < 0.6, rng.random(50) < 0.5
        m = stats.mcnemar_exact(a, b)
        n = m["only_new_right"] + m["only_old_right"]
        ref = binomtest(m["only_new_right"], n, 0.5).pvalue if n else 1.0
        assert m["p_value"] == pytest.approx(ref)


def test_bootstrap_interval_covers_the_true_score_about_as_often_as_it_says():
    rng = np.random.default_rng(7)
    hits, trials = 0, 300
    for _ in range(trials):
        items = stats.open_items([str(i) for i in range(60)], (rng.random(60) < 0.7).astype(float))
        lo, hi = stats.interval(items, 0.9, samples=1000, seed=int(rng.integers(1 << 30)))
        hits += lo <= 0.7 <= hi
    assert 0.82 <= hits / trials <= 0.96  # nominal 0.90 (percentile bootstrap runs slightly narrow at n=60)


def test_intervals_are_reproducible_and_items_are_paired_by_id():
    a = _closed([i % 2 == 0 or i < 10 for i in range(40)])
    assert stats.interval(a, 0.9, name="s") == stats.interval(a, 0.9, name="s")
    perm = np.random.default_rng(0).permutation(40)
    shuffled = stats.SuiteItems("closed", tuple(IDS[i] for i in perm), a.values[perm], a.classes[perm])
    d = stats.paired_delta_samples(a, shuffled, 500, 0, "s")
    assert np.all(d == 0)  # the same model, items in another order: aligned by id, difference exactly 0
    with pytest.raises(ValueError, match="different items"):
        stats.aligned(a, stats.closed_items([f"x{i}" for i in range(40)], a.values, GOLD))


def test_correlation_matches_scipy():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(5)
    x = rng.integers(0, 30, 40).astype(float)  # word counts, with ties
    y = np.round(rng.random(40) * 3) / 3
    c = stats.correlation(x, y)
    assert c["pearson"] == pytest.approx(pearsonr(x, y)[0]) and c["spearman"] == pytest.approx(spearmanr(x, y)[0])
    assert stats.correlation([1, 1, 1], [0, 1, 0])["spearman"] is None


# ---- reports: intervals and the paired comparison ------------------------------------------------------------


def test_report_intervals_contain_the_scores():
    r = yes_no_mcq_report("m", 40, 6)
    for name, s in r.suites.items():
        lo, hi = s["ci"]
        assert lo <= s["score"] <= hi and hi - lo > 0
    assert r.blended_ci[0] <= r.blended <= r.blended_ci[1] and r.confidence == 0.9


def test_compare_reports_item_by_item():
    base = yes_no_mcq_report("base", 20, 3)
    tuned = yes_no_mcq_report("candidate", 50, 8)
    c = compare.compare(tuned, base, 0.9)
    assert not c["problems"] and set(c["suites"]) == {"yes_no", "mcq"}
    assert c["suites"]["yes_no"]["delta"] == pytest.approx(tuned.suites["yes_no"]["score"] - base.suites["yes_no"]["score"])
    assert c["suites"]["yes_no"]["verdict"] == stats.BETTER and c["suites"]["yes_no"]["mcnemar"]["p_value"] < 1e-6
    assert c["blended"]["delta"] == pytest.approx(tuned.blended - base.blended)
    assert c["blended"]["verdict"] == stats.BETTER
    same = compare.compare(base, base, 0.9)
    assert same["blended"]["ci"] == [0.0, 0.0] and same["blended"]["verdict"] == stats.TIED
    # different suite files / items: not comparable, and it says why
    other = yes_no_mcq_report("other", 20, 3).to_dict()
    other["suites"]["mcq"]["digest"] = "0" * 64
    other["suites"]["yes_no"]["items"] = other["suites"]["yes_no"]["items"][:-1]
    probs = compare.compare(other, base, 0.9)["problems"]
    assert any("mcq" in p and "suite files changed" in p for p in probs)
    assert any("yes_no" in p and "different items" in p for p in probs)


# ---- the policy ------------------------------------------------------------------------------------------------


def test_no_champion_base_model_is_the_baseline_and_noise_is_not_a_win():
    pol = PromotionSpec()
    base = yes_no_mcq_report("base", 25, 4)
    # one more right answer on each suite: a few points up, on a few dozen items
    noise = yes_no_mcq_report("candidate", 26, 5)
    assert noise.blended > base.blended
    ok, why, comp = evaluate_policy(pol, noise, base, baseline_kind="base")
    assert not ok and comp["blended"]["verdict"] == stats.TIED
    head = next(r for r in why if "blended" in r)
    assert head.startswith("FAIL blended") and "the base model" in head and "not distinguishable at 90%" in head
    assert "interval [" in head and "68 items" in head  # the numbers are in the reason
    # the same challenger, with ties allowed explicitly
    ok, why, _ = evaluate_policy(PromotionSpec(allow_ties=True), noise, base, baseline_kind="base")
    assert ok and any("allow_ties" in r for r in why)
    # a real improvement promotes; a regression does not
    ok, why, _ = evaluate_policy(pol, yes_no_mcq_report("candidate", 50, 9), base, baseline_kind="base")
    assert ok, why
    ok, why, comp = evaluate_policy(PromotionSpec(allow_ties=True), yes_no_mcq_report("c", 5, 1), base,
                                    baseline_kind="base")
    assert not ok and comp["blended"]["verdict"] == stats.WORSE
    # without a base report there is nothing to decide on
    ok, why, _ = evaluate_policy(pol, noise, None, baseline_kind="base")
    assert not ok and "no report of the base model" in why[0]


def test_policy_suite_regression_margin_cost_and_comparability():
    base = yes_no_mcq_report("champ", 25, 8, cost=4.0)
    # much better on yes/no but mcq drops 8 -> 5 right (of 10): beyond max_suite_regression
    ok, why, _ = evaluate_policy(PromotionSpec(max_suite_regression=0.05), yes_no_mcq_report("c", 58, 5, cost=4.0),
                                 base)
    assert not ok and any(r.startswith("FAIL suite mcq") and "McNemar" in r for r in why)
    better = yes_no_mcq_report("c", 55, 8, cost=4.0)
    ok, why, comp = evaluate_policy(PromotionSpec(), better, base)
    assert ok, why
    ok, why, _ = evaluate_policy(PromotionSpec(min_improvement=comp["blended"]["delta"] + 0.01), better, base)
    assert not ok and any("less than min_improvement" in r for r in why)
    ok, why, _ = evaluate_policy(PromotionSpec(require_not_costlier=True), yes_no_mcq_report("c", 55, 8, cost=8.5),
                                 base)
    assert not ok and any(r.startswith("FAIL cost") for r in why)
    ok, why, _ = evaluate_policy(PromotionSpec(), yes_no_mcq_report("c", 55, 8, engine="vllm"), base)
    assert not ok and any("different engines" in r for r in why)
    only_yes_no = report_from_outputs("c", {"yes_no": closed_outputs(
        base.suites["yes_no"]["path"], right_first(base.suites["yes_no"]["path"], 58))})
    ok, why, _ = evaluate_policy(PromotionSpec(), only_yes_no, base)
    assert not ok and any("suite mcq" in r and "not evaluated" in r for r in why)
    ok, why, _ = evaluate_policy(PromotionSpec(), {"blended": None}, base)
    assert not ok and "no blended eval score" in why[0]


def test_comparison_rows_show_base_champion_candidate_with_intervals_and_the_decision():
    pol = PromotionSpec()
    base, champ, cand = yes_no_mcq_report("base", 10, 2, cost=2.0), yes_no_mcq_report("champion", 25, 5, cost=2.0), \
        yes_no_mcq_report("candidate", 50, 9, cost=2.0)
    ok, reasons, comp = evaluate_policy(pol, cand, champ)
    d = PromotionDecision(name="m", challenger="3", champion="2", promote=ok, reasons=reasons, policy=pol.model_dump(),
                          baseline="champion", verdict=comp["blended"]["verdict"], comparison=comp,
                          scores={k: compare.summary(r, 0.9) for k, r in
                                  (("base", base), ("champion", champ), ("candidate", cand))})
    rows = comparison_rows(d)
    assert list(rows[0]) == ["suite", "base model", "champion", "candidate", "candidate - champion (90% interval)",
                             "verdict"]
    by = {r["suite"]: r for r in rows}
    assert set(by) == {"yes_no (closed)", "mcq (closed)", "blended", "$/hour (planner)", "blended per $/hour",
                       "decision"}
    lo, hi = cand.suites["yes_no"]["ci"]
    assert by["yes_no (closed)"]["candidate"] == f"{cand.suites['yes_no']['score']:.3f} [{lo:.3f}, {hi:.3f}]"
    assert by["blended"]["verdict"] == "better" and by["decision"]["verdict"] == "PROMOTE v3"
    assert by["$/hour (planner)"]["base model"] == "2.00"
    assert by["blended per $/hour"]["candidate"] == f"{cand.blended / 2.0:.4f}"
    md = decision_markdown(d)
    assert "compared with champion v2" in md and "| blended |" in md and "interval" in md
    # the same rows from the decision's JSON form (what the demo gets from the flow result)
    assert comparison_rows(d.to_dict()) == rows


# ---- registry tags ---------------------------------------------------------------------------------------------


def test_eval_tags_round_trip_and_dataset_digest_has_one_meaning():
    from lexforge.config import spec_from_dict
    from lexforge.registry.tags import decode_eval_tags, eval_tags, lineage_tags
    from lexforge.storage.records import Lineage

    r = yes_no_mcq_report("candidate", 40, 6, cost=3.0)
    e = decode_eval_tags(eval_tags(r))
    assert e["blended"] == pytest.approx(r.blended, abs=1e-6) and e["blended_ci"] == pytest.approx(r.blended_ci)
    assert e["suites"]["mcq"]["ci"] == pytest.approx(r.suites["mcq"]["ci"]) and e["cost_usd_per_hour"] == 3.0
    assert e["report_artifact"] == "eval/candidate.json" and e["engine"] == "transformers"
    spec = spec_from_dict({"name": "t", "data": {"train": "x.jsonl"}})

    class Trained:
        base_model, is_adapter, mlflow_run_id, output_uri, steps = "/m", True, None, "", 3

    t = Trained()
    t.lineage = {"dataset": "a" * 64, "digests": {"train": "b" * 64}}  # no dataset_digest: nothing is guessed
    assert lineage_tags(spec, t)["dataset_digest"] == ""
    t.lineage = Lineage(run_name="t", spec_hash="h", dataset_digest="c" * 64, base_model="/m", method="lora",
                        stage="sft", strategy="ddp")
    assert lineage_tags(spec, t)["dataset_digest"] == "c" * 64
