"""Messages in OpenAI's chat fine-tuning format (and the common variants) -> canonical messages.

A canonical message is ``{"role", "content"[, "name"][, "tool_calls"][, "tool_call_id"][, "weight"]}``:

- ``content``: one normalised string. OpenAI's list of text parts is joined with no separator (as the serving
  API joins them, so training and serving see the same text); image/audio/file parts are refused. ``None`` only
  on an assistant turn that makes tool calls and says nothing else.
- ``tool_calls`` (assistant): ``[{"id"?, "type": "function", "function": {"name", "arguments"}}]`` with
  ``arguments`` a JSON object written as ``json.dumps(obj, ensure_ascii=False)``: exactly the text a chat
  template's ``tojson`` renders, so what the model learns to emit is what the row says.
- ``tool_call_id`` (tool): the call this result answers.
- ``weight`` (assistant, 0 or 1, as given): 0 = the turn is context, not a training target.

Tool calls, tool messages and weights exist in chat (SFT) rows only (``chat=False`` refuses them).
"""

from __future__ import annotations

import json
from typing import Any

from lexforge.data.normalize import normalize_text
from lexforge.data.parse import JsonParser, check_plain_json
from lexforge.data.reasons import RowDrop, short

ROLE_ALIASES = {
    "user": "user", "human": "user", "customer": "user", "client": "user",
    "assistant": "assistant", "bot": "assistant", "gpt": "assistant", "model": "assistant", "ai": "assistant",
    "system": "system", "developer": "system",
    "tool": "tool",
}
#: content part types that carry something other than text
NON_TEXT_PARTS = {"image_url": "an image", "input_image": "an image", "image": "an image", "input_audio": "audio",
                  "audio": "audio", "file": "a file", "input_file": "a file"}


def text(value: Any, where: str, repairs: set[str]) -> str:
    """A non-empty normalised string (``empty_content`` / ``wrong_type`` otherwise)."""
    if not isinstance(value, str):
        raise RowDrop("wrong_type", f"{where} is {type(value).__name__}, expected a string")
    out, r = normalize_text(value)
    repairs |= r
    if not out:
        raise RowDrop("empty_content", f"{where} is empty")
    return out


def _parts(value: list, where: str, repairs: set[str]) -> str:
    texts = []
    for j, p in enumerate(value):
        w = f"{where}[{j}]"
        if not isinstance(p, dict):
            raise RowDrop("wrong_type", f"{w} is {type(p).__name__}, expected a content part "
                                        "{\"type\": \"text\", \"text\": ...}")
        kind = p.get("type")
        if kind in NON_TEXT_PARTS:
            raise RowDrop("unsupported_content", f"{w} is {NON_TEXT_PARTS[kind]} ({kind!r} part); lexforge "
                                                 "fine-tunes text-only models: remove the part or the row")
        if kind != "text":
            raise RowDrop("wrong_type", f"{w} has type {short(kind)}, expected a 'text' part")
        if not isinstance(p.get("text"), str):
            raise RowDrop("wrong_type", f"{w}.text is {type(p.get('text')).__name__}, expected a string")
        texts.append(p["text"])
    repairs.add("content_parts_joined")
    return "".join(texts)


def content(value: Any, where: str, repairs: set[str], optional: bool = False) -> str | None:
    """A string or a list of text parts -> normalised text; ``optional``: None/empty gives None."""
    if isinstance(value, list):
        value = _parts(value, where, repairs)
    if optional and (value is None or (isinstance(value, str) and not normalize_text(value)[0])):
        return None
    return text(value, where, repairs)


def role(raw: Any, where: str, repairs: set[str]) -> str:
    if not isinstance(raw, str):
        raise RowDrop("wrong_type", f"{where}.role is {type(raw).__name__}, expected a string")
    out = ROLE_ALIASES.get(raw.strip().lower())
    if out is None:
        if raw.strip().lower() == "function":
            raise RowDrop("unsupported_content", f"{where}.role 'function' is OpenAI's deprecated function-calling "
                                                 "format; use tool messages with tool_call_id")
        raise RowDrop("unknown_role", f"{where}.role {short(raw)} is not system/user/assistant/tool")
    if out != raw:
        repairs.add("role_alias")
    return out


def _arguments(raw: Any, where: str, repairs: set[str]) -> str:
    if isinstance(raw, str):
        parsed, r = JsonParser().parse(raw, where)
        repairs |= r
    elif isinstance(raw, dict):
        parsed = raw
    else:
        raise RowDrop("invalid_tool_call", f"{where} is {type(raw).__name__}, expected a JSON object (as a string)")
    if not isinstance(parsed, dict):
        raise RowDrop("invalid_tool_call", f"{where} is a JSON {type(parsed).__name__}, expected an object")
    check_plain_json(parsed, where, "invalid_tool_call")
    out = json.dumps(parsed, ensure_ascii=False)
    if out != raw:
        repairs.add("tool_arguments_normalized")
    return out


def tool_calls(value: Any, where: str, repairs: set[str]) -> list[dict]:
    if not isinstance(value, list):
        raise RowDrop("invalid_tool_call", f"{where} is {type(value).__name__}, expected a list of tool calls")
    out = []
    for j, c in enumerate(value):
        w = f"{where}[{j}]"
        if not isinstance(c, dict):
            raise RowDrop("invalid_tool_call", f"{w} is {type(c).__name__}, expected an object")
        kind = c.get("type", "function")
        if kind != "function":
            raise RowDrop("unsupported_content", f"{w}.type is {short(kind)}; only function tool calls are supported")
        fn = c.get("function")
        if not isinstance(fn, dict):
            raise RowDrop("invalid_tool_call", f"{w}.function is {type(fn).__name__}, expected {{name, arguments}}")
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RowDrop("invalid_tool_call", f"{w}.function.name must be a non-empty string")
        if "arguments" not in fn:
            raise RowDrop("invalid_tool_call", f"{w}.function has no 'arguments' (use \"{{}}\" for none)")
        call: dict[str, Any] = {}
        if c.get("id") is not None:
            if not isinstance(c["id"], str) or not c["id"]:
                raise RowDrop("invalid_tool_call", f"{w}.id must be a non-empty string")
            call["id"] = c["id"]
        call["type"] = "function"
        call["function"] = {"name": name, "arguments": _arguments(fn["arguments"], f"{w}.function.arguments", repairs)}
        out.append(call)
    return out


def _weight(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw not in (0, 1):
        raise RowDrop("invalid_weight", f"{where}.weight is {short(raw)}; use 0 (context only) or 1 (train on it)")
    return int(raw)


def message(m: Any, where: str, repairs: set[str], chat: bool) -> dict[str, Any]:
    """One input message -> a canonical message (``chat``: tool calls, tool messages and weights allowed)."""
    if type(m) is dict and len(m) == 2 and type(m.get("content")) is str and "role" in m:  # the common case
        r = role(m["role"], where, repairs)
        if r == "tool" and not chat:
            raise RowDrop("unsupported_content", f"{where} is a tool message; tool use is supported in chat (SFT) "
                                                 "rows only")
        return {"role": r, "content": text(m["content"], f"{where}.content", repairs)}
    if not isinstance(m, dict):
        raise RowDrop("wrong_type", f"{where} is {type(m).__name__}, expected an object with role and content")
    if "role" not in m and "from" in m:  # ShareGPT style {"from": "human", "value": "..."}
        m = {"role": m["from"], "content": m.get("value")}
        repairs.add("sharegpt_keys")
    if "role" not in m:
        role_keys = [k for k in m if k.strip().lower() in ROLE_ALIASES]
        if len(role_keys) == 1 and len(m) == 1:  # {"user": "..."}: the role field holds the content
            k = role_keys[0]
            repairs.add("role_as_key")
            return {"role": role(k, where, repairs), "content": text(m[k], f"{where}.{k}", repairs)}
        raise RowDrop("missing_field", f"{where} has no 'role' (keys: {short(sorted(m)[:6], 120)})")
    if m.get("function_call") is not None:
        raise RowDrop("unsupported_content", f"{where}.function_call is OpenAI's deprecated function-calling "
                                             "format; use tool_calls")
    r = role(m["role"], where, repairs)
    calls = m.get("tool_calls")
    if isinstance(calls, list) and not calls:  # "tool_calls": [] means no calls
        calls = None
    if calls is not None and (not chat or r != "assistant"):
        raise RowDrop("invalid_tool_call" if chat else "unsupported_content",
                      f"{where} ({r}) has tool_calls; only assistant turns of chat (SFT) rows make tool calls")
    if r == "tool" and not chat:
        raise RowDrop("unsupported_content", f"{where} is a tool message; tool use is supported in chat (SFT) rows only")
    if "content" not in m and calls is None:
        raise RowDrop("missing_field", f"{where} has no 'content'")
    out: dict[str, Any] = {"role": r, "content": content(m.get("content"), f"{where}.content", repairs,
                                                        optional=calls is not None)}
    if m.get("name") is not None:
        out["name"] = text(m["name"], f"{where}.name", repairs)
    if calls is not None:
        out["tool_calls"] = tool_calls(calls, f"{where}.tool_calls", repairs)
    if r == "tool" and m.get("tool_call_id") is not None:
        if not isinstance(m["tool_call_id"], str) or not m["tool_call_id"]:
            raise RowDrop("invalid_tool_call", f"{where}.tool_call_id must be a non-empty string")
        out["tool_call_id"] = m["tool_call_id"]
    if m.get("weight") is not None:
        if not chat:
            raise RowDrop("unsupported_content", f"{where}.weight: weights apply to chat (SFT) rows only")
        if r != "assistant":
            raise RowDrop("invalid_weight", f"{where}.weight is set on a {r} message; only assistant turns have weights")
        out["weight"] = _weight(m["weight"], where)
    return out


def messages(value: Any, where: str, repairs: set[str], chat: bool = False) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RowDrop("wrong_type", f"{where} is {type(value).__name__}, expected a list of messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(value):
        try:
            out.append(message(m, f"{where}[{i}]", repairs, chat))
        except RowDrop as e:
            if e.reason == "empty_content" and isinstance(m, dict) and \
                    ROLE_ALIASES.get(str(m.get("role", "")).strip().lower()) == "system":
                repairs.add("empty_system_removed")
                continue
            raise
    return out


def _close_tool_block(pending: set[str], unanswered: int, where: str, at: int) -> None:
    if pending or unanswered > 0:
        ids = f" ({', '.join(map(short, sorted(pending)))})" if pending else ""
        raise RowDrop("invalid_tool_call", f"{where}[{at}] makes tool calls{ids} that no tool message answers")


def check_turns(msgs: list[dict[str, Any]], where: str, need_final: str | None) -> None:
    """Optional leading system turn, then user/assistant alternating; an assistant turn with tool calls is
    followed by one tool message per call (matched by ``tool_call_id``) and then the next turn.
    ``need_final`` = the role the conversation must end with."""
    off = 1 if msgs and msgs[0]["role"] == "system" else 0
    body = msgs[off:]
    if any(m["role"] == "system" for m in body):
        raise RowDrop("roles_out_of_order", f"{where}: a system turn may only come first")
    roles = [m["role"] for m in body]
    if "user" not in roles:
        raise RowDrop("missing_user_turn", f"{where} has no user turn")
    if need_final == "assistant" and "assistant" not in roles:
        raise RowDrop("missing_assistant_turn", f"{where} has no assistant turn")
    if roles[0] != "user":
        raise RowDrop("roles_out_of_order", f"{where} starts with {roles[0]!r}; the first turn must be the user's")
    if "tool" in roles or any("tool_calls" in m for m in body):
        _check_tool_turns(body, off, where)
    else:
        for a, b in zip(roles, roles[1:]):
            if a == b:
                raise RowDrop("roles_out_of_order", f"{where} has two {a} turns in a row")
    if need_final and roles[-1] != need_final:
        reason = "missing_assistant_turn" if need_final == "assistant" else "roles_out_of_order"
        raise RowDrop(reason, f"{where} ends with a {roles[-1]} turn; it must end with the {need_final}'s")


def _check_tool_turns(body: list[dict[str, Any]], off: int, where: str) -> None:
    """Turn order with tool use: an assistant turn's calls are answered by the tool messages right after it."""
    caller = -1  # index (in msgs) of the assistant turn whose calls are being answered
    pending: set[str] = set()
    unanswered = 0
    for k in range(1, len(body)):
        prev, m, i = body[k - 1], body[k], k + off
        if m["role"] == "tool":
            if prev["role"] == "assistant" and prev.get("tool_calls"):
                caller, calls = i - 1, prev["tool_calls"]
                pending = {c["id"] for c in calls if "id" in c}
                unanswered = len(calls)
            elif prev["role"] != "tool":
                raise RowDrop("invalid_tool_call", f"{where}[{i}] is a tool result but {where}[{i - 1}] makes no "
                                                   "tool calls")
            cid = m.get("tool_call_id")
            if pending and cid not in pending:
                why = "has no tool_call_id" if cid is None else f"answers {short(cid)}"
                raise RowDrop("invalid_tool_call", f"{where}[{i}] {why}; the open calls of {where}[{caller}] are "
                                                   f"{', '.join(map(short, sorted(pending)))}")
            pending.discard(cid)
            unanswered -= 1
            if unanswered < 0:
                raise RowDrop("invalid_tool_call", f"{where}[{i}]: more tool results than {where}[{caller}] made calls")
            continue
        if prev["role"] == "tool":
            _close_tool_block(pending, unanswered, where, caller)
        elif prev["role"] == "assistant" and prev.get("tool_calls"):
            raise RowDrop("invalid_tool_call", f"{where}[{i - 1}] makes tool calls that no tool message answers "
                                               f"({where}[{i}] is a {m['role']} turn)")
        elif prev["role"] == m["role"]:
            raise RowDrop("roles_out_of_order", f"{where} has two {m['role']} turns in a row")


def tools(value: Any, repairs: set[str]) -> list[dict[str, Any]]:
    """Row-level ``tools`` (function definitions), kept as given after checking their shape."""
    if not isinstance(value, list):
        raise RowDrop("wrong_type", f"tools is {type(value).__name__}, expected a list of function definitions")
    out, names = [], set()
    for j, t in enumerate(value):
        w = f"tools[{j}]"
        if not isinstance(t, dict):
            raise RowDrop("wrong_type", f"{w} is {type(t).__name__}, expected {{type: function, function: {{...}}}}")
        if t.get("type", "function") != "function":
            raise RowDrop("unsupported_content", f"{w}.type is {short(t.get('type'))}; only function tools are "
                                                 "supported")
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise RowDrop("wrong_type", f"{w}.function is {type(fn).__name__}, expected {{name, description, "
                                        "parameters}}")
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RowDrop("wrong_type", f"{w}.function.name must be a non-empty string")
        if name in names:
            raise RowDrop("invalid_tool_call", f"{w}: two tools are named {short(name)}")
        names.add(name)
        for key, typ in (("description", str), ("parameters", dict)):
            if fn.get(key) is not None and not isinstance(fn[key], typ):
                raise RowDrop("wrong_type", f"{w}.function.{key} is {type(fn[key]).__name__}, expected "
                                            f"{'a string' if typ is str else 'a JSON schema object'}")
        check_plain_json(fn, f"{w}.function", "wrong_type")
        if "type" not in t:
            repairs.add("tool_type_added")
        out.append({"type": "function", "function": fn})
    return out
