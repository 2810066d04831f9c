"""Evaluation gate: LegalBench-layout suites, closed (balanced accuracy) + open (LLM judge or labelled
reference overlap) scores, blended like a leaderboard, with a serving-cost view. Never imports prefect."""

from lexforge.evaluate.report import EvalReport, leaderboard_markdown
from lexforge.evaluate.runner import EvalError, load_report, run_eval, save_report

__all__ = ["EvalReport", "EvalError", "run_eval", "save_report", "load_report", "leaderboard_markdown"]
