"""Row formats: classify a parsed JSON object and turn it into a canonical row, naming every repair.

Canonical rows (see docs/data.md):

- chat: ``{"messages": [...][, "tools": [...]][, "parallel_tool_calls": bool]}``: optional leading system turn,
  then user/assistant turns (assistant tool calls answered by tool messages), ending with an assistant turn;
  messages as in :mod:`lexforge.data.messages` (OpenAI's chat fine-tuning format: text parts, ``name``,
  ``weight``, ``tool_calls``, ``tool_call_id``)
- preference: ``{"prompt", "chosen", "rejected"}``, all strings or all message lists (TRL's format; OpenAI's DPO
  format ``{"input": {"messages"}, "preferred_output", "non_preferred_output"}`` is converted to it)
- grpo: ``{"prompt", "reference"[, "rubric", "context", "labels"]}`` (prompt a string or a message list)

``canonicalize(obj, fmt)`` returns ``(row, repairs)`` or raises :class:`RowDrop` with a reason from
:data:`DROP_REASONS`.
"""

from __future__ import annotations

from typing import Any

from lexforge.data import messages as msg
from lexforge.data.reasons import DROP_REASONS, RowDrop, short

__all__ = ["DROP_REASONS", "FORMATS", "RowDrop", "canonicalize", "classify", "conversations", "detect_format",
           "with_target"]

FORMATS = ("chat", "preference", "grpo")
OPENAI_DPO_KEYS = ("input", "preferred_output", "non_preferred_output")


def classify(obj: Any) -> str:
    """Which format a raw row looks like: chat | preference | grpo | completion | unknown."""
    if not isinstance(obj, dict):
        return "unknown"
    if ("chosen" in obj and "rejected" in obj) or ("preferred_output" in obj and "non_preferred_output" in obj):
        return "preference"
    if "messages" in obj or "conversations" in obj:
        return "chat"
    has_prompt = any(k in obj for k in ("prompt", "question", "query"))
    if has_prompt and any(k in obj for k in ("reference", "answer", "solution")):
        return "grpo"
    if has_prompt and "completion" in obj:
        return "completion"
    return "unknown"


def _keys(obj: dict) -> str:
    return short(sorted(obj)[:6], 120)


def _wrong_format(obj: dict, fmt: str) -> None:
    kind = classify(obj)
    if kind not in (fmt, "unknown"):
        raise RowDrop("wrong_format", f"row looks like {kind} data (keys {_keys(obj)}) but the format is {fmt}")


def canonical_chat(obj: dict) -> tuple[dict, set[str]]:
    repairs: set[str] = set()
    _wrong_format(obj, "chat")
    if "messages" in obj:
        raw = obj["messages"]
    elif "conversations" in obj:
        raw = obj["conversations"]
        repairs.add("sharegpt_keys")
    else:
        raise RowDrop("missing_field", f"no 'messages' list (keys: {_keys(obj)})")
    if obj.get("functions") is not None:
        raise RowDrop("unsupported_content", "'functions' is OpenAI's deprecated function-calling format; "
                                             "use 'tools'")
    msgs = msg.messages(raw, "messages", repairs, chat=True)
    msg.check_turns(msgs, "messages", "assistant")
    row: dict[str, Any] = {"messages": msgs}
    if obj.get("tools") is not None and obj["tools"] != []:  # [] and null: no tools
        row["tools"] = msg.tools(obj["tools"], repairs)
    ptc = obj.get("parallel_tool_calls")
    if ptc is not None:
        if not isinstance(ptc, bool):
            raise RowDrop("wrong_type", f"parallel_tool_calls is {short(ptc)}, expected true or false")
        row["parallel_tool_calls"] = ptc
    _check_tool_use(row)
    return row, repairs


def _check_tool_use(row: dict) -> None:
    """Calls name listed tools, ``parallel_tool_calls: false`` holds, and some assistant turn is trained on."""
    if len(row) == 1 and all(len(m) == 2 for m in row["messages"]):  # plain rows: the last turn is the target
        return
    known = {t["function"]["name"] for t in row.get("tools", ())}
    trainable = False
    for i, m in enumerate(row["messages"]):
        calls = m.get("tool_calls") or ()
        if len(calls) > 1 and row.get("parallel_tool_calls") is False:
            raise RowDrop("invalid_tool_call", f"messages[{i}] makes {len(calls)} tool calls but "
                                               "parallel_tool_calls is false")
        for j, c in enumerate(calls):
            if known and c["function"]["name"] not in known:
                raise RowDrop("invalid_tool_call", f"messages[{i}].tool_calls[{j}] calls "
                                                   f"{short(c['function']['name'])}, which is not in the row's tools "
                                                   f"({', '.join(sorted(known))})")
        trainable |= m["role"] == "assistant" and m.get("weight", 1) == 1
    if not trainable:
        raise RowDrop("no_trainable_turn", "every assistant turn has weight 0")


def _alias(obj: dict, names: tuple[str, ...], repairs: set[str], required: bool = True) -> Any:
    for i, n in enumerate(names):
        if n in obj:
            if i:
                repairs.add("field_alias")
            return obj[n]
    if required:
        raise RowDrop("missing_field", f"missing {names[0]!r} (keys: {_keys(obj)})")
    return None


def _prompt(value: Any, repairs: set[str], where: str = "prompt") -> str | list[dict[str, Any]]:
    if isinstance(value, list):
        msgs = msg.messages(value, where, repairs)
        msg.check_turns(msgs, where, "user")
        return msgs
    return msg.text(value, where, repairs)


def _answer(value: Any, where: str, repairs: set[str]) -> str | list[dict[str, Any]]:
    if isinstance(value, list):
        msgs = msg.messages(value, where, repairs)
        if not msgs or any(m["role"] != "assistant" for m in msgs):
            raise RowDrop("roles_out_of_order", f"{where} must hold only assistant turns")
        return msgs
    return msg.text(value, where, repairs)


def _split_implicit_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """TRL 'implicit prompt' rows: chosen/rejected are whole conversations sharing a prompt prefix."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def _openai_dpo(obj: dict, repairs: set[str]) -> tuple[Any, Any, Any]:
    """OpenAI's DPO row ``{"input": {"messages", "tools"?, "parallel_tool_calls"?}, "preferred_output": [...],
    "non_preferred_output": [...]}`` -> (prompt, chosen, rejected) as given."""
    if "chosen" in obj or "rejected" in obj:
        raise RowDrop("wrong_format", "row mixes TRL keys (chosen/rejected) and OpenAI DPO keys "
                                      "(preferred_output/non_preferred_output); use one")
    missing = [k for k in OPENAI_DPO_KEYS if k not in obj]
    if missing:
        raise RowDrop("missing_field", f"OpenAI DPO rows need {', '.join(OPENAI_DPO_KEYS)} (missing {missing})")
    inp = obj["input"]
    if not isinstance(inp, dict):
        raise RowDrop("wrong_type", f"input is {type(inp).__name__}, expected an object with 'messages'")
    if "messages" not in inp:
        raise RowDrop("missing_field", f"input has no 'messages' (keys: {_keys(inp)})")
    if inp.get("tools"):
        raise RowDrop("unsupported_content", "input.tools: tool use is supported in chat (SFT) rows, not yet in "
                                             "preference (DPO) rows")
    if inp.get("parallel_tool_calls") is not None and not isinstance(inp["parallel_tool_calls"], bool):
        raise RowDrop("wrong_type", "input.parallel_tool_calls must be true or false")
    if not isinstance(inp["messages"], list):
        raise RowDrop("wrong_type", f"input.messages is {type(inp['messages']).__name__}, expected a list")
    repairs.add("openai_dpo_keys")
    return inp["messages"], obj["preferred_output"], obj["non_preferred_output"]


def canonical_preference(obj: dict) -> tuple[dict, set[str]]:
    repairs: set[str] = set()
    _wrong_format(obj, "preference")
    if "preferred_output" in obj or "non_preferred_output" in obj:
        raw_prompt, chosen_raw, rejected_raw = _openai_dpo(obj, repairs)
        where = "input.messages"
    else:
        if "chosen" not in obj or "rejected" not in obj:
            raise RowDrop("missing_field", "preference rows need 'chosen' and 'rejected' (TRL) or 'input', "
                                           f"'preferred_output' and 'non_preferred_output' (OpenAI) (keys: {_keys(obj)})")
        raw_prompt = _alias(obj, ("prompt", "question", "messages"), repairs, required=False)
        chosen_raw, rejected_raw = obj["chosen"], obj["rejected"]
        where = "prompt"
    if raw_prompt is None:
        if not (isinstance(chosen_raw, list) and isinstance(rejected_raw, list)):
            raise RowDrop("missing_field", "missing 'prompt' (needed unless chosen/rejected are whole conversations)")
        c = msg.messages(chosen_raw, "chosen", repairs)
        r = msg.messages(rejected_raw, "rejected", repairs)
        prompt, chosen, rejected = _split_implicit_prompt(c, r)
        if not prompt:
            raise RowDrop("missing_field", "chosen and rejected share no prompt turns and no 'prompt' is given")
        msg.check_turns(prompt, "prompt", "user")
        repairs.add("implicit_prompt_extracted")
        for name, part in (("chosen", chosen), ("rejected", rejected)):
            if not part or any(m["role"] != "assistant" for m in part):
                raise RowDrop("roles_out_of_order", f"{name} must continue the shared prompt with assistant turns")
    else:
        prompt = _prompt(raw_prompt, repairs, where)
        chosen = _answer(chosen_raw, "preferred_output" if where != "prompt" else "chosen", repairs)
        rejected = _answer(rejected_raw, "non_preferred_output" if where != "prompt" else "rejected", repairs)
    shapes = {isinstance(x, list) for x in (prompt, chosen, rejected)}
    if len(shapes) > 1:  # mixed strings and message lists: unify as message lists
        repairs.add("preference_shape_unified")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        chosen = chosen if isinstance(chosen, list) else [{"role": "assistant", "content": chosen}]
        rejected = rejected if isinstance(rejected, list) else [{"role": "assistant", "content": rejected}]
    if chosen == rejected:
        raise RowDrop("identical_pair", "chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, repairs


def canonical_grpo(obj: dict) -> tuple[dict, set[str]]:
    repairs: set[str] = set()
    _wrong_format(obj, "grpo")
    prompt = _prompt(_alias(obj, ("prompt", "question", "query"), repairs), repairs)
    ref = msg.text(_alias(obj, ("reference", "answer", "solution"), repairs), "reference", repairs)
    row: dict[str, Any] = {"prompt": prompt, "reference": ref}
    if obj.get("rubric") is not None:
        row["rubric"] = msg.text(obj["rubric"], "rubric", repairs)
    if obj.get("context") is not None:  # text the answer may cite (GRPO citation_accuracy)
        row["context"] = msg.text(obj["context"], "context", repairs)
    if obj.get("labels") is not None:  # the closed label set (GRPO exact_match / balanced_accuracy / format)
        labels = obj["labels"]
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
            raise RowDrop("wrong_type", "labels must be a non-empty list of non-empty strings")
        row["labels"] = [x.strip() for x in labels]
    return row, repairs


_CANON = {"chat": canonical_chat, "preference": canonical_preference, "grpo": canonical_grpo}


def canonicalize(obj: Any, fmt: str) -> tuple[dict, set[str]]:
    if not isinstance(obj, dict):
        raise RowDrop("not_an_object", f"line holds a JSON {type(obj).__name__}, expected an object")
    return _CANON[fmt](obj)


# ---- conversations for token counting ------------------------------------------------------------------------


def _as_messages(x: str | list, role: str) -> list[dict[str, Any]]:
    return [{"role": role, "content": x}] if isinstance(x, str) else list(x)


def conversations(row: dict, fmt: str) -> list[list[dict[str, Any]]]:
    """The token sequences a row turns into at training time (the last message of each is the target; a chat
    row's ``tools`` go with its one conversation)."""
    if fmt == "chat":
        return [row["messages"]]
    prompt = _as_messages(row["prompt"], "user")
    if fmt == "preference":
        return [prompt + _as_messages(row["chosen"], "assistant"), prompt + _as_messages(row["rejected"], "assistant")]
    return [prompt + [{"role": "assistant", "content": row["reference"]}]]


def with_target(row: dict, fmt: str, index: int, text: str) -> dict:
    """A copy of ``row`` whose ``index``-th conversation target (last message) is ``text``."""
    if fmt == "chat":
        msgs = [dict(m) for m in row["messages"]]
        msgs[-1]["content"] = text
        return dict(row, messages=msgs)
    out = dict(row)
    if fmt == "grpo":
        out["reference"] = text
        return out
    key = ("chosen", "rejected")[index]
    if isinstance(out[key], str):
        out[key] = text
    else:
        msgs = [dict(m) for m in out[key]]
        msgs[-1]["content"] = text
        out[key] = msgs
    return out


def detect_format(objs: list[Any]) -> str | None:
    """Majority format among sample rows (ignoring unrecognised ones); None if none is recognised."""
    counts: dict[str, int] = {}
    for o in objs:
        k = classify(o)
        if k in FORMATS:
            counts[k] = counts.get(k, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else None
