"""LLM-as-judge for open tasks through any OpenAI-compatible endpoint (vLLM, Ray Serve, a hosted API).

The judge sees the question, the reference answer, the task's rubric and the candidate answer, and must end
its reply with ``SCORE: <n>``. Scores are normalised to 0..1 by the rubric's scale (``Score 0-3`` in the
rubric text; 0-10 when the rubric names none). A verdict without a parseable score counts as 0 and is
flagged (``parsed: false``), and an item the judge did not answer at all (an error after retries) counts as 0
and is flagged (``error``), so a broken judge can never silently pass a model. A judge that answers no item
at all is an error, not a score.

The API key is read from the env var named by ``judge.api_key_env`` at call time; only the variable's
*name* ever reaches reports, logs or MLflow.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

JUDGE_SYSTEM = (
    "You are a strict, impartial grader of answers to legal questions about the law of England and Wales. "
    "Grade only against the rubric and the reference answer; do not reward length or confidence."
)
JUDGE_TEMPLATE = (
    "Question:\n{question}\n\n"
    "Reference answer:\n{reference}\n\n"
    "Rubric:\n{rubric}\n\n"
    "Candidate answer:\n{answer}\n\n"
    "Grade the candidate answer. Give one sentence of reasoning, then end with a final line exactly of the form\n"
    "SCORE: <integer from {lo} to {hi}>"
)
DEFAULT_RUBRIC = "Judge whether the candidate states the same legal rule as the reference, accurately and completely."
_SCALE = re.compile(r"score\s*(?:of\s*)?(\d+)\s*(?:-|–|to)\s*(\d+)", re.IGNORECASE)
_VERDICT = re.compile(r"SCORE\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_JSON_SCORE = re.compile(r'"score"\s*:\s*(-?\d+(?:\.\d+)?)')


@dataclass
class Verdict:
    raw: str
    score: float | None  # on the rubric's scale; None = unparseable
    normalised: float  # 0..1 (0 when unparseable)
    parsed: bool
    error: str | None = None  # the judge did not answer this item (after retries): counted as 0


def rubric_scale(rubric: str) -> tuple[int, int]:
    m = _SCALE.search(rubric or "")
    if m and int(m.group(2)) > int(m.group(1)):
        return int(m.group(1)), int(m.group(2))
    return 0, 10


def parse_verdict(raw: str, lo: int, hi: int) -> Verdict:
    """Take the LAST ``SCORE: n`` (or a JSON ``"score": n``) in the reply; clip to the scale."""
    matches = _VERDICT.findall(raw or "") or _JSON_SCORE.findall(raw or "")
    if not matches:
        return Verdict(raw=raw, score=None, normalised=0.0, parsed=False)
    score = min(max(float(matches[-1]), lo), hi)
    return Verdict(raw=raw, score=score, normalised=(score - lo) / (hi - lo), parsed=True)


def build_judge_prompt(question: str, reference: str, rubric: str, answer: str, template: str = JUDGE_TEMPLATE) -> str:
    """The judge's user message; ``template`` takes {question} {reference} {rubric} {answer} {lo} {hi}."""
    lo, hi = rubric_scale(rubric)
    return template.format(question=question.strip(), reference=reference.strip(),
                                 rubric=(rubric or DEFAULT_RUBRIC).strip(), answer=answer.strip(), lo=lo, hi=hi)


@dataclass(frozen=True)
class JudgeEndpoint:
    base_url: str
    model: str
    api_key_env: str
    source: str  # "configured" | "platform" (the platform's own served model)


def resolve_judge(judge_spec, served_name: str) -> JudgeEndpoint:
    """Where the judge lives: the configured endpoint, or by default the platform's own server (lexforge serve)."""
    if judge_spec.base_url:
        return JudgeEndpoint(judge_spec.base_url, judge_spec.model,
                             judge_spec.api_key_env or "LEXFORGE_JUDGE_API_KEY", "configured")
    url = os.environ.get("LEXFORGE_SERVE_URL") or f"http://127.0.0.1:{os.environ.get('LEXFORGE_SERVE_PORT', '8000')}"
    url = url.rstrip("/")
    return JudgeEndpoint(url if url.endswith("/v1") else url + "/v1", judge_spec.model or served_name,
                         judge_spec.api_key_env or "LEXFORGE_SERVE_API_KEY", "platform")


class Judge:
    """Calls the judge model; deterministic settings (temperature 0)."""

    def __init__(self, judge_spec, served_name: str = "legal-champion", max_tokens: int = 256, concurrency: int = 4,
                 timeout: float = 120.0, max_retries: int = 2):
        from openai import OpenAI

        self.spec = resolve_judge(judge_spec, served_name)
        key = os.environ.get(self.spec.api_key_env) or "EMPTY"  # local servers accept any key
        self.client = OpenAI(base_url=self.spec.base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self.max_tokens = max_tokens
        self.concurrency = concurrency

    def describe(self) -> dict:
        """What the report stores about the judge: never the key, only the env var's name."""
        return {"base_url": self.spec.base_url, "model": self.spec.model, "api_key_env": self.spec.api_key_env,
                "source": self.spec.source,
                "system_prompt": JUDGE_SYSTEM, "prompt_template": JUDGE_TEMPLATE, "temperature": 0.0,
                "max_tokens": self.max_tokens}

    def _one(self, prompt: str) -> str:
        resp = self.client.chat.completions.create(
            model=self.spec.model, temperature=0.0, max_tokens=self.max_tokens,
            messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}],
        )
        return resp.choices[0].message.content or ""

    def grade(self, items: list[dict]) -> list[Verdict]:
        """``items``: dicts with question, reference, rubric, answer. Returns one verdict per item, in order."""
        prompts = [build_judge_prompt(i["question"], i["reference"], i.get("rubric", ""), i["answer"]) for i in items]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            answers = list(pool.map(self.ask, prompts))
        errors = [err for _, err in answers if err is not None]
        if items and len(errors) == len(items):  # connection / auth / model errors: say which endpoint, never the key
            hint = ("; start it with `lexforge serve` (or set eval.judge.base_url/model to another judge) and put "
                    "its key in $" + self.spec.api_key_env) if self.spec.source == "platform" else ""
            raise RuntimeError(f"judge {self.spec.model!r} at {self.spec.base_url} failed on every item: "
                               f"{errors[0]}{hint}")
        out = []
        for item, (raw, err) in zip(items, answers):
            if err is not None:
                out.append(Verdict(raw="", score=None, normalised=0.0, parsed=False, error=err))
                continue
            lo, hi = rubric_scale(item.get("rubric", ""))
            out.append(parse_verdict(raw, lo, hi))
        return out

    def ask(self, prompt: str) -> tuple[str, str | None]:
        """(reply, None), or ("", what went wrong) when the judge did not answer this item."""
        try:
            return self._one(prompt), None
        except Exception as e:  # noqa: BLE001 - recorded on the item and counted as a failure
            return "", f"{type(e).__name__}: {str(e)[:300]}"


def verdict_dict(v: Verdict) -> dict:
    return json.loads(json.dumps({"raw": v.raw, "score": v.score, "normalised": v.normalised, "parsed": v.parsed,
                                  "error": v.error}))
