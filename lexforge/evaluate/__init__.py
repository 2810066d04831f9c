"""Evaluation gate: LegalBench-layout suites, closed (balanced accuracy) + open (LLM judge or labelled
reference overlap) scores with bootstrap intervals, blended like a leaderboard, with a serving-cost view; the
paired comparison of two models (``compare``, ``stats``), the eval cache (``cache``, ``identity``) and the
checkpoint choice (``checkpoints``). Never imports prefect."""

from lexforge.evaluate.cache import evaluate_cached
from lexforge.evaluate.report import EvalReport, leaderboard_markdown
from lexforge.evaluate.runner import EvalError, load_report, run_eval, save_report

__all__ = ["EvalReport", "EvalError", "run_eval", "evaluate_cached", "save_report", "load_report",
           "leaderboard_markdown"]
