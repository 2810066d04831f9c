"""``run_eval``: generate on held-out test rows, score closed and open suites, blend, add the cost view,
and save the report to the store (``runs/<spec.name>/eval/<label>.json``)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from pathlib import Path
from typing import Callable

from lexforge.evaluate import scoring
from lexforge.evaluate.cost import serving_cost, with_score_per_dollar
from lexforge.evaluate.generate import generate
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
    items = [{"index": r.get("index", str(i)), "answer": g, "output": o, "prediction": p}
             for i, (r, g, o, p) in enumerate(zip(task.test_rows, gold, outputs, pred))]
    return {"kind": "closed", "metric": "balanced_accuracy", "score": scoring.balanced_accuracy(gold, pred),
            "exact_match": scoring.exact_match(gold, pred), "n": len(gold),
            "invalid": sum(p is None for p in pred), "labels": labels, "items": items}


def score_open_overlap(task: EvalTask, outputs: list[str]) -> dict:
    refs = [r["answer"] for r in task.test_rows]
    f1 = [scoring.token_f1(o, ref) for o, ref in zip(outputs, refs)]
    rl = [scoring.rouge_l(o, ref) for o, ref in zip(outputs, refs)]
    items = [{"index": r.get("index", str(i)), "reference": ref, "output": o, "token_f1": a, "rouge_l": b}
             for i, (r, ref, o, a, b) in enumerate(zip(task.test_rows, refs, outputs, f1, rl))]
    return {"kind": "open", "metric": "reference_overlap_token_f1", "score": sum(f1) / len(f1),
            "rouge_l": sum(rl) / len(rl), "n": len(f1), "items": items}


def score_open_judge(task: EvalTask, prompts: list[str], outputs: list[str], judge: Judge) -> dict:
    batch = [{"question": _question(task, r, p), "reference": r["answer"], "rubric": r.get("rubric", ""),
              "answer": o} for r, p, o in zip(task.test_rows, prompts, outputs)]
    verdicts = judge.grade(batch)
    items = [{"index": r.get("index", str(i)), "reference": r["answer"], "rubric": r.get("rubric", ""), "output": o,
              "verdict": verdict_dict(v)} for i, (r, o, v) in enumerate(zip(task.test_rows, outputs, verdicts))]
    return {"kind": "open", "metric": "judge_rubric", "score": sum(v.normalised for v in verdicts) / len(verdicts),
            "n": len(verdicts), "unparsed_verdicts": sum(not v.parsed for v in verdicts), "items": items}


def run_eval(spec, base_model: str, adapter: str | None = None, label: str = "candidate", *,
             cost_per_hour: float | None = None, gpu: str | None = None, save: bool = True,
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Evaluate ``base_model`` (+ optional PEFT ``adapter``) on ``spec.eval.suites`` (test rows only)."""
    from lexforge.models import AdapterMismatch, check_adapter_fits_base, resolve_model_path

    if not _LABEL.match(label):
        raise EvalError(f"label {label!r}: use letters, digits, '.', '_' or '-' (it becomes a file name)")
    ev = spec.eval
    if not ev.suites:
        raise EvalError("eval.suites is empty: add at least one LegalBench task directory to the job spec")
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise EvalError(f"adapter {adapter}: no adapter_config.json (expected a PEFT adapter directory)")
    base_path = resolve_model_path(base_model)
    if adapter:
        try:
            check_adapter_fits_base(adapter, base_path)
        except AdapterMismatch as e:
            raise EvalError(str(e)) from None
    tasks = [(s, load_task(s.path, s.name)) for s in ev.suites]

    prompts: list[str] = []
    spans: list[tuple[int, int]] = []
    for _, t in tasks:
        start = len(prompts)
        prompts += [t.render(r) for r in t.test_rows]
        spans.append((start, len(prompts)))
    log.info("eval %s: %d prompts over %d suites", label, len(prompts), len(tasks))
    gens = generate(ev.engine, base_path, adapter, prompts, max_new_tokens=ev.max_new_tokens,
                    batch_size=ev.batch_size, dtype=spec.model.dtype, max_model_len=spec.serve.max_model_len,
                    trust_remote_code=spec.model.trust_remote_code, progress=progress)

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
        suites[s.name] = res

    closed = scoring.weighted_mean([(r["score"], r["weight"]) for r in suites.values() if r["kind"] == "closed"])
    open_ = scoring.weighted_mean([(r["score"], r["weight"]) for r in suites.values() if r["kind"] == "open"])
    has_open = any(r["kind"] == "open" for r in suites.values())
    blended = scoring.blend(closed, open_, ev.closed_weight)
    cost = with_score_per_dollar(serving_cost(base_path, spec, cost_per_hour, gpu), blended)
    report = EvalReport(
        label=label, suites=suites, closed=closed, open=open_, blended=blended,
        open_metric=("judge" if judge else "reference_overlap") if has_open else None,
        judge=judge.describe() if judge else None, closed_weight=ev.closed_weight, base_model=base_path,
        adapter=str(adapter) if adapter else None, engine=gens.engine, engine_fallback_reason=gens.fallback_reason,
        chat_template=_has_chat_template(base_path, adapter), spec_hash=spec.spec_hash(), spec_name=spec.name,
        cost=cost, created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if save:
        save_report(spec, report)
    return report


def _has_chat_template(base: str, adapter: str | None) -> bool:
    for d in filter(None, (adapter, base)):
        cfg = Path(d) / "tokenizer_config.json"
        if cfg.is_file() and "chat_template" in json.loads(cfg.read_text()) or (Path(d) / "chat_template.jinja").is_file():
            return True
    return False


def report_key(spec, label: str) -> str:
    return f"runs/{spec.name}/eval/{label}.json"


def save_report(spec, report: EvalReport) -> str:
    from lexforge.storage import store_for_spec

    return store_for_spec(spec).put_bytes(report_key(spec, report.label), report.to_json().encode())


def load_report(spec, label: str) -> EvalReport:
    from lexforge.storage import store_for_spec

    return EvalReport.from_dict(json.loads(store_for_spec(spec).get_bytes(report_key(spec, label))))
