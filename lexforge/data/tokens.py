"""Token lengths with the real tokenizer and its chat template (batched), truncation, and length stats."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from lexforge.data.formats import conversations, with_target


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """Load a tokenizer from a model directory, a name under $LEXFORGE_HOME/models, or a hub id."""
    from transformers import AutoTokenizer

    from lexforge.models import resolve_model_path

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot load a tokenizer from {name_or_path!r} ({path}): {e}") from None


def tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


class TokenCounter:
    """Counts tokens of canonical rows exactly as training will see them (chat template applied)."""

    def __init__(self, tokenizer: Any, max_len: int, on_too_long: str = "drop"):
        self.tok = tokenizer
        self.max_len = max_len
        self.on_too_long = on_too_long
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        # No token covers more than this many characters, so len(text) / max_piece <= tokens: rows far over the
        # limit are recognised without tokenizing megabytes (a 10 MB row would take many seconds).
        self.max_piece = max((len(t) for t in vocab), default=64) or 64

    def render(self, msgs: list[dict[str, str]]) -> str:
        if self.has_template:
            return self.tok.apply_chat_template(msgs, tokenize=False)
        return "".join(f"{m['role']}: {m['content']}\n" for m in msgs)

    def _count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in enc]

    def lower_bound(self, text: str) -> int:
        return len(text) // (2 * self.max_piece)

    def measure(self, rows: Sequence[dict], fmt: str) -> list[tuple[dict | None, int, bool, str]]:
        """For each row: (row or None if it must be dropped, tokens, truncated?, detail)."""
        convs = [conversations(r, fmt) for r in rows]
        texts: list[str] = []
        owners: list[tuple[int, int]] = []
        quick: dict[tuple[int, int], int] = {}
        for i, cs in enumerate(convs):
            for j, c in enumerate(cs):
                t = self.render(c)
                lb = self.lower_bound(t)
                if lb > self.max_len:  # surely too long: skip tokenizing it (truncation works on a cut copy)
                    quick[(i, j)] = lb
                    continue
                texts.append(t)
                owners.append((i, j))
        counts = dict(zip(owners, self._count(texts)))
        counts.update(quick)
        out = []
        for i, (row, cs) in enumerate(zip(rows, convs)):
            lens = [counts[(i, j)] for j in range(len(cs))]
            n = max(lens)
            if n <= self.max_len:
                out.append((row, n, False, ""))
            elif self.on_too_long == "drop":
                approx = "at least " if any((i, j) in quick for j in range(len(cs))) else ""
                out.append((None, n, False, f"{approx}{n} tokens with the chat template > max_seq_len {self.max_len}"))
            else:
                out.append(self._truncate(row, fmt, cs, lens))
        return out

    def _truncate(self, row: dict, fmt: str, convs: list, lens: list[int]) -> tuple[dict | None, int, bool, str]:
        """Cut the target (last turn) of each over-long sequence until it fits; drop if the prompt alone does not."""
        cap = self.max_len * 2 * self.max_piece  # more characters than max_len tokens can ever cover
        for j in range(len(convs)):
            if lens[j] <= self.max_len:
                continue
            target = convs[j][-1]["content"]
            if len(target) > cap:
                row = with_target(row, fmt, j, target[:cap])
            text = self.render(conversations(row, fmt)[j])
            prompt_lb = self.lower_bound(text[: max(0, len(text) - min(len(target), cap))])
            if prompt_lb > self.max_len:
                return None, lens[j], False, (f"at least {lens[j]} tokens > max_seq_len {self.max_len} "
                                              "and the prompt alone is too long to truncate the answer")
            n = self._count([text])[0]
            ids = self.tok(conversations(row, fmt)[j][-1]["content"], add_special_tokens=False)["input_ids"]
            for _ in range(8):
                if n <= self.max_len:
                    break
                keep = len(ids) - (n - self.max_len) - 1
                if keep <= 0:
                    return None, lens[j], False, (f"{lens[j]} tokens > max_seq_len {self.max_len} and the prompt "
                                                  "alone is too long to truncate the answer")
                ids = ids[:keep]
                row = with_target(row, fmt, j, self.tok.decode(ids).rstrip())
                n = self._count([self.render(conversations(row, fmt)[j])])[0]
            if n > self.max_len:
                return None, n, False, f"still {n} tokens after truncation"
            lens[j] = n
        return row, max(lens), True, ""


def token_stats(counts: Iterable[int]) -> dict[str, int]:
    """{"rows", "total_tokens", "p50", "p95", "max"} (nearest-rank percentiles)."""
    s = sorted(counts)
    n = len(s)

    def pct(q: float) -> int:
        return s[max(0, math.ceil(q * n) - 1)] if n else 0

    return {"rows": n, "total_tokens": int(sum(s)), "p50": pct(0.5), "p95": pct(0.95), "max": s[-1] if n else 0}
