"""Canonical rows through the base model's chat template: the one renderer the token counter (lexforge.data) and
the SFT tokenizer (lexforge.train.data) share, and the check that a rendering is faithful.

HF chat templates take messages with tool-call ``arguments`` as a mapping (they ``tojson`` it) and no ``null``
content; canonical rows keep OpenAI's shape (``arguments`` a JSON string). :func:`template_messages` converts,
:func:`render` renders (``tools=`` passed to ``apply_chat_template`` when the row has tools) and
:func:`unrendered` says what of a row the rendered text lost: every message's text and every tool call's name
and arguments must appear in it, in order, and every tool's name; else the row is dropped as
``template_cannot_render`` instead of training on a mis-rendered conversation.
"""

from __future__ import annotations

import json
from typing import Any

from lexforge.data.reasons import short

PLAIN_KEYS = frozenset(("role", "content"))


def template_messages(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical messages -> what ``apply_chat_template`` takes (``weight`` is ours and left out)."""
    if all(m.keys() == PLAIN_KEYS and m["content"] is not None for m in msgs):
        return msgs
    out = []
    for m in msgs:
        t: dict[str, Any] = {"role": m["role"]}
        if m.get("content") is not None:
            t["content"] = m["content"]
        if "name" in m:
            t["name"] = m["name"]
        if "tool_calls" in m:
            t["tool_calls"] = [
                {**({"id": c["id"]} if "id" in c else {}), "type": "function",
                 "function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in m["tool_calls"]]
        if "tool_call_id" in m:
            t["tool_call_id"] = m["tool_call_id"]
        out.append(t)
    return out


def render(tokenizer: Any, msgs: list[dict[str, Any]], tools: list[dict] | None = None,
           add_generation_prompt: bool = False) -> str:
    """``apply_chat_template(tokenize=False)`` of messages already in template shape."""
    kw = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt, **kw)


def plain_render(msgs: list[dict[str, Any]]) -> str:
    """Fallback for tokenizers without a chat template (tool calls cannot be rendered this way)."""
    return "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in msgs)


def unrendered(text: str, msgs: list[dict[str, Any]], tools: list[dict] | None = None) -> tuple[str | None, set[str]]:
    """``(problem or None, notes)`` for canonical ``msgs`` rendered as ``text``.

    Pieces are searched left to right (greedy earliest match, so a faithful rendering is never refused); the
    pieces of one message may come in any order. A ``name`` the template leaves out is a note
    (``name_ignored_by_template``), not a drop: most templates (SmolLM2, Llama, Qwen) ignore names.
    """
    notes: set[str] = set()
    cursor = 0
    for i, m in enumerate(msgs):
        pieces = [("content", m["content"])] if m.get("content") else []
        for j, c in enumerate(m.get("tool_calls") or ()):
            pieces += [(f"tool_calls[{j}] name", c["function"]["name"]),
                       (f"tool_calls[{j}] arguments", c["function"]["arguments"])]
        ends = []
        for label, piece in pieces:
            pos = text.find(piece, cursor)
            if pos < 0:
                return (f"turn {i} ({m['role']}) {label} {short(piece, 50)} is missing from what the chat template "
                        "rendered"), notes
            ends.append(pos + len(piece))
        if ends:
            cursor = min(ends)
        if m.get("name") and m["name"] not in text:
            notes.add("name_ignored_by_template")
    for j, t in enumerate(tools or ()):
        name = t["function"]["name"]
        if name not in text:
            return f"tools[{j}] {short(name)} is missing from what the chat template rendered (no tools support)", notes
    return None, notes
