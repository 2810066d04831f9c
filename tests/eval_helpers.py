"""Test helpers for the eval/registry tests: teach a tiny random model one fixed reply (so scores are
predictable from first principles), and a minimal OpenAI-compatible chat server that serves a real model's
greedy outputs (used as the LLM judge)."""

from __future__ import annotations

import random
from pathlib import Path


def _chat_texts(tok, prompts: list[str], reply: str, system: str | None) -> list[tuple[str, str]]:
    out = []
    for p in prompts:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        prefix = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        out.append((prefix, reply + tok.eos_token))
    return out


def teach_fixed_reply(base_dir: Path, out_dir: Path, prompts: list[str], reply: str, *, lora: bool,
                      steps: int = 60, lr: float = 3e-2, seed: int = 0, system: str | None = None) -> Path:
    """Fine-tune ``base_dir`` so that any of ``prompts`` (chat-templated) is answered with ``reply``.

    lora=True saves a PEFT adapter, else full weights (+ tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rnd = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    pairs = _chat_texts(tok, prompts, reply, system)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        batch = rnd.sample(pairs, min(4, len(pairs)))
        loss = 0.0
        for prefix, target in batch:
            p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
            t_ids = tok(target, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p_ids + t_ids])
            labels = torch.tensor([[-100] * len(p_ids) + t_ids])
            loss = loss + model(input_ids=ids, labels=labels).loss
        (loss / len(batch)).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if not lora:
        tok.save_pretrained(out_dir)
    return out_dir


# ---- eval reports with known per-item results, made by the real scorers -------------------------------------

def _tasks():
    from lexforge.samples import sample_path

    root = sample_path("legalbench", "tasks")
    return {"yes_no": ("closed", root / "statute_yes_no"), "mcq": ("closed", root / "statute_mcq"),
            "explain": ("open", root / "statute_explain")}


def closed_outputs(task_dir, right: list[bool]) -> list[str]:
    """Model outputs for a closed task: the gold answer where ``right`` says so, another label elsewhere."""
    from lexforge.evaluate.tasks import load_task

    t = load_task(task_dir)
    labels = t.labels()
    gold = [r["answer"].strip() for r in t.test_rows]
    return [g if ok else next(lab for lab in labels if lab != g) for g, ok in zip(gold, right)]


def right_first(task_dir, k: int) -> list[bool]:
    """Correct on the first ``k`` test items, wrong on the rest."""
    from lexforge.evaluate.tasks import load_task

    n = len(load_task(task_dir).test_rows)
    return [i < k for i in range(n)]


def report_from_outputs(label: str, outputs: dict[str, list[str]], *, closed_weight: float = 0.5,
                        cost: float | None = None, engine: str = "transformers", confidence: float = 0.9,
                        samples: int = 2000):
    """An EvalReport as ``run_eval`` would write it for a model that said ``outputs`` (suite name -> one output
    per test row of the shipped sample suite ``yes_no`` / ``mcq`` / ``explain``), scored by the real scorers
    (balanced accuracy; reference overlap for ``explain``), with the real intervals."""
    from lexforge.evaluate.identity import suite_digest
    from lexforge.evaluate.report import EvalReport
    from lexforge.evaluate.runner import add_intervals, aggregate, score_closed, score_open_overlap
    from lexforge.evaluate.tasks import load_task

    suites = {}
    for name, outs in outputs.items():
        kind, path = _tasks()[name]
        t = load_task(path)
        res = score_closed(t, outs) if kind == "closed" else score_open_overlap(t, outs)
        res.update(weight=1.0, path=str(path), digest=suite_digest(path))
        suites[name] = res
    closed, open_, blended = aggregate(suites, closed_weight)
    has_open = any(s["kind"] == "open" for s in suites.values())
    r = EvalReport(label=label, suites=suites, closed=closed, open=open_, blended=blended,
                   open_metric="reference_overlap" if has_open else None, closed_weight=closed_weight, engine=engine,
                   cost=None if cost is None else {"usd_per_hour": cost, "source": "input",
                                                   "score_per_usd_hour": blended / cost})
    return add_intervals(r, confidence, samples)


def yes_no_mcq_report(label: str, yes_no_right: int, mcq_right: int, **kw):
    tasks = _tasks()
    return report_from_outputs(label, {
        "yes_no": closed_outputs(tasks["yes_no"][1], right_first(tasks["yes_no"][1], yes_no_right)),
        "mcq": closed_outputs(tasks["mcq"][1], right_first(tasks["mcq"][1], mcq_right))}, **kw)
