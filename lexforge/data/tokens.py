"""Token lengths with the real tokenizer and its chat template (batched), truncation, and length stats."""

from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple, Sequence

from lexforge.data.formats import conversations, with_target
from lexforge.data.render import plain_render, render, template_messages, unrendered


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


class Measured(NamedTuple):
    row: dict | None   # None: drop it (``reason``, ``detail``)
    tokens: int
    truncated: bool
    reason: str = ""
    detail: str = ""
    notes: frozenset = frozenset()  # repairs-style notes on a kept row (e.g. name_ignored_by_template)


class TokenCounter:
    """Counts tokens of canonical rows exactly as training will see them (chat template applied, via
    :mod:`lexforge.data.render`, the renderer :func:`lexforge.train.data.tokenize_chat` uses), and drops rows
    the template cannot render faithfully (``template_cannot_render``)."""

    def __init__(self, tokenizer: Any, max_len: int, on_too_long: str = "drop"):
        self.tok = tokenizer
        self.max_len = max_len
        self.on_too_long = on_too_long
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        # No token covers more than this many characters, so len(text) / max_piece <= tokens: rows far over the
        # limit are recognised without tokenizing megabytes (a 10 MB row would take many seconds).
        self.max_piece = max((len(t) for t in vocab), default=64) or 64

    def render(self, msgs: list[dict[str, Any]], tools: list[dict] | None = None) -> str:
        if self.has_template:
            return render(self.tok, template_messages(msgs), tools)
        return plain_render(msgs)

    def _render_checked(self, msgs: list[dict[str, Any]], tools: list[dict] | None) -> tuple[str | None, str, set]:
        """(text or None, problem, notes): the rendering, or why it cannot be used."""
        try:
            text = self.render(msgs, tools)
        except Exception as e:  # noqa: BLE001 - a template is model-provided code; any failure is about the row
            return None, f"the chat template failed on this row: {type(e).__name__}: {str(e)[:160]}", set()
        problem, notes = unrendered(text, msgs, tools)
        if problem and not self.has_template:
            problem = f"{problem} (the tokenizer has no chat template)"
        return (None, problem, notes) if problem else (text, "", notes)

    def _count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in enc]

    def lower_bound(self, text: str) -> int:
        return len(text) // (2 * self.max_piece)

    def measure(self, rows: Sequence[dict], fmt: str) -> list[Measured]:
        """For each row: a :class:`Measured` (the row, possibly truncated, or None with the drop reason)."""
        convs = [conversations(r, fmt) for r in rows]
        texts: list[str] = []
        owners: list[tuple[int, int]] = []
        quick: dict[tuple[int, int], int] = {}
        failed: dict[int, str] = {}
        notes: dict[int, set] = {}
        for i, cs in enumerate(convs):
            tools = rows[i].get("tools") if fmt == "chat" else None
            for j, c in enumerate(cs):
                t, problem, n = self._render_checked(c, tools)
                notes.setdefault(i, set()).update(n)
                if t is None:
                    failed[i] = problem
                    break
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
            if i in failed:
                out.append(Measured(None, 0, False, "template_cannot_render", failed[i]))
                continue
            lens = [counts[(i, j)] for j in range(len(cs))]
            n = max(lens)
            if n <= self.max_len:
                out.append(Measured(row, n, False, notes=frozenset(notes[i])))
            elif self.on_too_long == "drop":
                approx = "at least " if any((i, j) in quick for j in range(len(cs))) else ""
                out.append(Measured(None, n, False, "too_long",
                                    f"{approx}{n} tokens with the chat template > max_seq_len {self.max_len}"))
            else:
                m = self._truncate(row, fmt, cs, lens)
                out.append(m._replace(notes=frozenset(notes[i])) if m.row is not None else m)
        return out

    def _too_long(self, n: int, why: str) -> Measured:
        return Measured(None, n, False, "too_long", f"{n} tokens > max_seq_len {self.max_len} {why}")

    def _truncate(self, row: dict, fmt: str, convs: list, lens: list[int]) -> Measured:
        """Cut the target (last turn) of each over-long sequence until it fits; drop if the prompt alone does not."""
        cap = self.max_len * 2 * self.max_piece  # more characters than max_len tokens can ever cover
        tools = row.get("tools") if fmt == "chat" else None
        for j in range(len(convs)):
            if lens[j] <= self.max_len:
                continue
            target = convs[j][-1].get("content")
            if not target or convs[j][-1].get("tool_calls"):
                return self._too_long(lens[j], "and the last turn makes tool calls, which cannot be cut")
            if len(target) > cap:
                row = with_target(row, fmt, j, target[:cap])
            text = self.render(conversations(row, fmt)[j], tools)
            prompt_lb = self.lower_bound(text[: max(0, len(text) - min(len(target), cap))])
            if prompt_lb > self.max_len:
                return Measured(None, lens[j], False, "too_long",
                                f"at least {lens[j]} tokens > max_seq_len {self.max_len} "
                                "and the prompt alone is too long to truncate the answer")
            n = self._count([text])[0]
            ids = self.tok(conversations(row, fmt)[j][-1]["content"], add_special_tokens=False)["input_ids"]
            for _ in range(8):
                if n <= self.max_len:
                    break
                keep = len(ids) - (n - self.max_len) - 1
                if keep <= 0:
                    return self._too_long(lens[j], "and the prompt alone is too long to truncate the answer")
                ids = ids[:keep]
                cut = self.tok.decode(ids).rstrip()
                if not cut:
                    return self._too_long(lens[j], "and the prompt alone is too long to truncate the answer")
                row = with_target(row, fmt, j, cut)
                n = self._count([self.render(conversations(row, fmt)[j], tools)])[0]
            if n > self.max_len:
                return Measured(None, n, False, "too_long", f"still {n} tokens after truncation")
            lens[j] = n
        return Measured(row, max(lens), True)


def token_stats(counts: Iterable[int]) -> dict[str, int]:
    """{"rows", "total_tokens", "p50", "p95", "max"} (nearest-rank percentiles)."""
    s = sorted(counts)
    n = len(s)

    def pct(q: float) -> int:
        return s[max(0, math.ceil(q * n) - 1)] if n else 0

    return {"rows": n, "total_tokens": int(sum(s)), "p50": pct(0.5), "p95": pct(0.95), "max": s[-1] if n else 0}
