"""``run_eval``: generate on held-out test rows, score closed and open suites, put a bootstrap interval on
every score, blend, add the cost view, and save the report to the store
(:meth:`lexforge.storage.layout.RunLayout.eval_report`)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from pathlib import Path
from typing import Callable

from lexforge.evaluate import compare, scoring, stats
from lexforge.evaluate.cost import serving_cost, with_score_per_dollar
from lexforge.evaluate.generate import engine_config, generate, lora_rank
from lexforge.evaluate.identity import eval_settings, suite_digest
from lexforge.evaluate.judge import Judge, verdict_dict
from lexforge.evaluate.report import EvalReport
from lexforge.evaluate.tasks import EvalTask, load_task

log = logging.getLogger(__name__)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class EvalError(ValueError):
    pass


def _question(task: EvalTask, row: dict[str, str], prompt: str) -> str:
    return row.get("text") or row.get("question") or prompt


def score_closed(task: EvalTask, outputs: list[str]) -> dict:
    labels = task.labels()
    gold = [r["answer"].strip() for r in task.test_rows]
    pred = [scoring.extract_label(o, labels) for o in outputs]
    items = [{"index": r.get("index", str(i)), "answer": g, "output": o, "prediction": p,
              "correct": p is not None and scoring.normalize(p) == scoring.normalize(g)}
             for i, (r, g, o, p) in enumerate(zip(task.test_rows, gold, outputs, pred))]
    return {"kind": "closed", "metric": "balanced_accuracy", "score": scoring.balanced_accuracy(gold, pred),
            "exact_match": scoring.exact_match(gold, pred), "n": len(gold),
            "invalid": sum(p is None for p in pred), "labels": labels, "items": items}


def score_open_overlap(task: EvalTask, outputs: list[str]) -> dict:
    refs = [r["answer"] for r in task.test_rows]
    f1 = [scoring.token_f1(o, ref) for o, ref in zip(outputs, refs)]
    rl = [scoring.rouge_l(o, ref) for o, ref in zip(outputs, refs)]
    items = [{"index": r.get("index", str(i)), "reference": ref, "output": o, "token_f1": a, "rouge_l": b, "score": a}
             for i, (r, ref, o, a, b) in enumerate(zip(task.test_rows, refs, outputs, f1, rl))]
    return {"kind": "open", "metric": "reference_overlap_token_f1", "score": sum(f1) / len(f1),
            "rouge_l": sum(rl) / len(rl), "n": len(f1), "items": items}


def score_open_judge(task: EvalTask, prompts: list[str], outputs: list[str], judge: Judge) -> dict:
    batch = [{"question": _question(task, r, p), "reference": r["answer"], "rubric": r.get("rubric", ""),
              "answer": o} for r, p, o in zip(task.test_rows, prompts, outputs)]
    verdicts = judge.grade(batch)
    items = [{"index": r.get("index", str(i)), "reference": r["answer"], "rubric": r.get("rubric", ""), "output": o,
              "verdict": verdict_dict(v), "score": v.normalised, "answer_words": len(o.split())}
             for i, (r, o, v) in enumerate(zip(task.test_rows, outputs, verdicts))]
    # verbosity check: does the judge reward long answers? (a strong positive correlation is a warning sign)
    bias = stats.correlation([it["answer_words"] for it in items], [v.normalised for v in verdicts])
    return {"kind": "open", "metric": "judge_rubric", "score": sum(v.normalised for v in verdicts) / len(verdicts),
            "n": len(verdicts), "unparsed_verdicts": sum(not v.parsed and v.error is None for v in verdicts),
            "judge_failures": sum(v.error is not None for v in verdicts), "length_bias": bias, "items": items}


def run_eval(spec, base_model: str, adapter: str | None = None, label: str = "candidate", *,
             cost_per_hour: float | None = None, gpu: str | None = None, save: bool = True,
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Evaluate ``base_model`` (+ optional PEFT ``adapter``) on ``spec.eval.suites`` (test rows only), through
    the serving engine's settings, with bootstrap intervals at ``spec.promotion.confidence``."""
    from lexforge.models import AdapterMismatch, check_adapter_fits_base, resolve_model_path

    if not _LABEL.match(label):
        raise EvalError(f"label {label!r}: use letters, digits, '.', '_' or '-' (it becomes a file name)")
    ev = spec.eval
    if not ev.suites:
        raise EvalError("eval.suites is empty: add at least one LegalBench task directory to the job spec")
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise EvalError(f"adapter {adapter}: no adapter_config.json (expected a PEFT adapter directory)")
    base_path = resolve_model_path(base_model)
    cfg = engine_config(spec, base_path)
    if adapter:
        try:
            check_adapter_fits_base(adapter, base_path)
        except AdapterMismatch as e:
            raise EvalError(str(e)) from None
        if lora_rank(adapter) > cfg.max_lora_rank:
            raise EvalError(f"adapter {adapter}: LoRA rank r={lora_rank(adapter)} exceeds serve.max_lora_rank="
                            f"{cfg.max_lora_rank}, so it could not be served; raise serve.max_lora_rank")
    tasks = [(s, load_task(s.path, s.name)) for s in ev.suites]

    prompts: list[str] = []
    spans: list[tuple[int, int]] = []
    for _, t in tasks:
        start = len(prompts)
        prompts += [t.render(r) for r in t.test_rows]
        spans.append((start, len(prompts)))
    log.info("eval %s: %d prompts over %d suites", label, len(prompts), len(tasks))
    gens = generate(cfg, base_path, adapter, prompts, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                    progress=progress)

    judge = Judge(ev.judge, served_name=spec.serve.served_name) if ev.judge else None
    suites: dict[str, dict] = {}
    for (s, t), (a, b) in zip(tasks, spans):
        outs, ps = gens.texts[a:b], prompts[a:b]
        if s.kind == "closed":
            res = score_closed(t, outs)
        elif judge is not None:
            res = score_open_judge(t, ps, outs, judge)
        else:
            res = score_open_overlap(t, outs)
        res["weight"] = s.weight
        res["path"] = str(s.path)
        res["digest"] = suite_digest(s.path)
        suites[s.name] = res

    closed, open_, blended = aggregate(suites, ev.closed_weight)
    has_open = any(r["kind"] == "open" for r in suites.values())
    cost = with_score_per_dollar(serving_cost(base_path, spec, cost_per_hour, gpu), blended)
    judge_desc = judge.describe() if judge else None
    report = EvalReport(
        label=label, suites=suites, closed=closed, open=open_, blended=blended,
        open_metric=("judge" if judge else "reference_overlap") if has_open else None,
        judge=judge_desc, closed_weight=ev.closed_weight, base_model=base_path,
        adapter=str(adapter) if adapter else None, engine=gens.engine, engine_fallback_reason=gens.fallback_reason,
        chat_template=_has_chat_template(base_path, None), spec_hash=spec.spec_hash(), spec_name=spec.name,
        cost=cost, created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        settings=eval_settings(spec, cfg.to_dict(), judge_desc),
    )
    add_intervals(report, spec.promotion.confidence, spec.promotion.bootstrap_samples)
    if save:
        save_report(spec, report)
    return report


def aggregate(suites: dict[str, dict], closed_weight: float) -> tuple[float | None, float | None, float | None]:
    """(closed, open, blended): weighted means of the closed and of the open suite scores, then the blend."""
    closed = scoring.weighted_mean([(r["score"], r["weight"]) for r in suites.values() if r["kind"] == "closed"])
    open_ = scoring.weighted_mean([(r["score"], r["weight"]) for r in suites.values() if r["kind"] == "open"])
    return closed, open_, scoring.blend(closed, open_, closed_weight)


def add_intervals(report: EvalReport, confidence: float, samples: int) -> EvalReport:
    """Put a bootstrap interval on every suite score (``suite["ci"]``) and on the blended score."""
    ci = compare.intervals(report, confidence, samples)
    for name, s in report.suites.items():
        s["ci"] = ci["suites"].get(name)
    report.blended_ci = ci["blended"]
    report.confidence = confidence
    return report


def _has_chat_template(base: str, adapter: str | None) -> bool:
    for d in filter(None, (adapter, base)):
        cfg = Path(d) / "tokenizer_config.json"
        if cfg.is_file() and "chat_template" in json.loads(cfg.read_text()) or (Path(d) / "chat_template.jinja").is_file():
            return True
    return False


def save_report(spec, report: EvalReport) -> str:
    from lexforge.storage import store_for_spec
    from lexforge.storage.records import RunRecords

    return RunRecords(store_for_spec(spec), spec.name).write_eval_report(report.label, report.to_json().encode())


def load_report(spec, label: str) -> EvalReport:
    """The saved report ``label`` of this run; FileNotFoundError when there is none."""
    from lexforge.storage import store_for_spec
    from lexforge.storage.records import RunRecords

    d = RunRecords(store_for_spec(spec), spec.name).read_eval_report(label)
    if d is None:
        raise FileNotFoundError(f"no eval report {label!r} for run {spec.name}")
    return EvalReport.from_dict(d)
