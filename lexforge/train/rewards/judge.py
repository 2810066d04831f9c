"""llm_judge: the eval gate's LLM judge (:mod:`lexforge.evaluate.judge`: same prompt, same verdict parsing,
same endpoint resolution) as a GRPO reward, through any OpenAI-compatible endpoint (by default the platform's
own served model). Temperature 0, and every answered verdict is cached (in memory, and on disk with
``params.cache_dir``) under sha256(model, system prompt, judge prompt, max_tokens), so the same completion is
never judged twice. A timeout, an HTTP error or a verdict without a parseable score is a failure of that item
(reported), never a pass and never a silent 0."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lexforge.train.rewards.core import Fail, is_number, is_str, register_batch_reward

_PARAMS = {"base_url": is_str, "model": is_str, "api_key_env": is_str, "rubric": is_str, "template": is_str,
           "timeout_s": is_number(0.1, 3600), "max_retries": is_number(0, 10, integer=True),
           "concurrency": is_number(1, 64, integer=True), "max_tokens": is_number(1, 4096, integer=True),
           "cache_dir": is_str}
_PLACEHOLDERS = ("{question}", "{reference}", "{rubric}", "{answer}")


def _check(params: dict):
    if params.get("base_url") and not params.get("model"):
        return "model", ("is required with params.base_url (the judge's model name at that endpoint); leave both "
                         "empty to judge with the platform's own served model")
    t = params.get("template")
    if t:
        missing = [p for p in _PLACEHOLDERS if p not in t]
        if missing:
            return "template", f"lacks {', '.join(missing)} (it takes {{question}} {{reference}} {{rubric}} " \
                               f"{{answer}} {{lo}} {{hi}})"
        try:
            t.format(question="", reference="", rubric="", answer="", lo=0, hi=10)
        except (KeyError, IndexError, ValueError) as e:
            return "template", f"is not a valid format string ({type(e).__name__}: {e})"
    return None


class JudgeReward:
    """One judge client + its verdict cache; ``__call__(completions, examples)`` as every built reward."""

    def __init__(self, params: dict, context: dict):
        from lexforge.config import JudgeSpec
        from lexforge.evaluate.judge import JUDGE_SYSTEM, JUDGE_TEMPLATE, Judge

        spec = JudgeSpec(base_url=params.get("base_url"), model=params.get("model"),
                         api_key_env=params.get("api_key_env"))
        self.judge = Judge(spec, served_name=context.get("served_name", "legal-champion"),
                           max_tokens=int(params.get("max_tokens", 256)),
                           concurrency=int(params.get("concurrency", 4)),
                           timeout=float(params.get("timeout_s", 60.0)), max_retries=int(params.get("max_retries", 2)))
        self.system, self.template = JUDGE_SYSTEM, params.get("template") or JUDGE_TEMPLATE
        self.rubric = params.get("rubric")
        self.cache_dir = Path(params["cache_dir"]) if params.get("cache_dir") else None
        self._mem: dict[str, str] = {}
        self._lock = threading.Lock()
        self._counts = {"cache_hits": 0, "requests": 0}
        self.where = f"judge {self.judge.spec.model!r} at {self.judge.spec.base_url}"

    def key(self, prompt: str) -> str:
        blob = json.dumps([self.judge.spec.model, self.system, prompt, self.judge.max_tokens], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cached(self, key: str) -> str | None:
        if key in self._mem:
            return self._mem[key]
        if self.cache_dir is not None:
            f = self.cache_dir / key[:2] / f"{key}.json"
            if f.is_file():
                raw = json.loads(f.read_text(encoding="utf-8"))["raw"]
                self._mem[key] = raw
                return raw
        return None

    def _store(self, key: str, raw: str) -> None:
        self._mem[key] = raw
        if self.cache_dir is not None:
            f = self.cache_dir / key[:2] / f"{key}.json"
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"model": self.judge.spec.model, "raw": raw}), encoding="utf-8")
            os.replace(tmp, f)  # atomic: workers sharing a cache dir never read half a verdict

    def _verdict(self, prompt: str) -> tuple[str | None, str | None]:
        """(raw reply, None) or (None, error); answered replies are cached, errors are not (retried next step)."""
        k = self.key(prompt)
        with self._lock:
            raw = self._cached(k)
            if raw is not None:
                self._counts["cache_hits"] += 1
                return raw, None
            self._counts["requests"] += 1
        raw, err = self.judge.ask(prompt)
        if err is not None:
            return None, err
        with self._lock:
            self._store(k, raw)
        return raw, None

    def prompt(self, completion: str, example: dict) -> tuple[str, str]:
        from lexforge.evaluate.judge import DEFAULT_RUBRIC, build_judge_prompt

        rubric = example.get("rubric")
        rubric = rubric if isinstance(rubric, str) and rubric.strip() else self.rubric or DEFAULT_RUBRIC
        question = example.get("question") or example.get("prompt_text") or ""
        return build_judge_prompt(str(question), str(example.get("reference", "")), rubric, completion,
                                  self.template), rubric

    def __call__(self, completions: list[str], examples: list[dict]) -> list:
        from lexforge.evaluate.judge import parse_verdict, rubric_scale

        prompts = [self.prompt(c, ex) for c, ex in zip(completions, examples)]
        with ThreadPoolExecutor(max_workers=self.judge.concurrency) as pool:
            answers = list(pool.map(lambda pr: self._verdict(pr[0]), prompts))
        out = []
        for (_, rubric), (raw, err) in zip(prompts, answers):
            if err is not None:
                out.append(Fail(f"the judge did not answer: {err}"))
                continue
            v = parse_verdict(raw, *rubric_scale(rubric))
            out.append(v.normalised if v.parsed else Fail(f"unparsable verdict (no 'SCORE: n'): {raw[:200]!r}"))
        return out

    def stats(self) -> dict[str, float]:
        """Counters since the last call: cache hits and HTTP requests made."""
        with self._lock:
            out = dict(self._counts)
            self._counts = {"cache_hits": 0, "requests": 0}
        return out


register_batch_reward("llm_judge", JudgeReward, _PARAMS, check=_check,
                      doc="The eval gate's LLM judge (0..1 by the rubric's scale), cached, temperature 0.")
