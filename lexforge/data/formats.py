"""Row formats: classify a parsed JSON object and turn it into a canonical row, naming every repair.

Canonical rows (see docs/dev/store-layout.md):

- chat: ``{"messages": [{"role", "content"}, ...]}`` (optional leading system turn, then user/assistant
  turns, ending with an assistant turn)
- preference: ``{"prompt", "chosen", "rejected"}``, all strings or all message lists
- grpo: ``{"prompt", "reference"[, "rubric"]}`` (prompt a string or a message list)

``canonicalize(obj, fmt)`` returns ``(row, repairs)`` or raises :class:`RowDrop` with a reason from
:data:`DROP_REASONS`.
"""

from __future__ import annotations

from typing import Any

from lexforge.data.normalize import normalize_text

FORMATS = ("chat", "preference", "grpo")

#: reason -> what the user should do about it (used in strict-mode errors and the report).
DROP_REASONS: dict[str, str] = {
    "invalid_json": "fix the JSON on that line (a truncated export often leaves a half-written last row)",
    "non_utf8": "re-export the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
    "not_an_object": "each line must be one JSON object",
    "wrong_format": "this row belongs to another data format; split the file or convert the row",
    "missing_field": "add the missing field",
    "wrong_type": "use a string for every content/prompt/answer field and a list of {role, content} for messages",
    "unknown_role": "use roles system, user or assistant (aliases human/bot/gpt/model are repaired)",
    "missing_user_turn": "add a user turn before the assistant answer",
    "missing_assistant_turn": "add the assistant answer the model should learn (the row must end with it)",
    "roles_out_of_order": "put the system turn first and alternate user/assistant turns",
    "empty_content": "fill in the empty turn or remove the row",
    "identical_pair": "chosen and rejected must differ for preference training",
    "too_long": "shorten the row, raise data.max_seq_len, or set data.on_too_long=truncate",
    "duplicate": "remove the repeated row (or set data.dedupe=false)",
    "near_duplicate": "remove the near-identical row (or set data.near_dedupe=false)",
    "overlaps_train": "validation rows must not repeat training rows",
}

ROLE_ALIASES = {
    "user": "user", "human": "user", "customer": "user", "client": "user",
    "assistant": "assistant", "bot": "assistant", "gpt": "assistant", "model": "assistant", "ai": "assistant",
    "system": "system",
}


class RowDrop(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def classify(obj: Any) -> str:
    """Which format a raw row looks like: chat | preference | grpo | completion | unknown."""
    if not isinstance(obj, dict):
        return "unknown"
    if "chosen" in obj and "rejected" in obj:
        return "preference"
    if "messages" in obj or "conversations" in obj:
        return "chat"
    has_prompt = any(k in obj for k in ("prompt", "question", "query"))
    if has_prompt and any(k in obj for k in ("reference", "answer", "solution")):
        return "grpo"
    if has_prompt and "completion" in obj:
        return "completion"
    return "unknown"


def _text(value: Any, where: str, repairs: set[str]) -> str:
    if not isinstance(value, str):
        raise RowDrop("wrong_type", f"{where} is {type(value).__name__}, expected a string")
    out, r = normalize_text(value)
    repairs |= r
    if not out:
        raise RowDrop("empty_content", f"{where} is empty")
    return out


def _role(raw: Any, where: str, repairs: set[str]) -> str:
    if not isinstance(raw, str):
        raise RowDrop("wrong_type", f"{where}.role is {type(raw).__name__}, expected a string")
    key = raw.strip().lower()
    role = ROLE_ALIASES.get(key)
    if role is None:
        raise RowDrop("unknown_role", f"{where}.role {raw!r} is not system/user/assistant")
    if role != raw:
        repairs.add("role_alias")
    return role


def _message(m: Any, where: str, repairs: set[str]) -> dict[str, str]:
    if not isinstance(m, dict):
        raise RowDrop("wrong_type", f"{where} is {type(m).__name__}, expected an object with role and content")
    if "role" not in m and "from" in m:  # ShareGPT style {"from": "human", "value": "..."}
        m = {"role": m["from"], "content": m.get("value")}
        repairs.add("sharegpt_keys")
    if "role" not in m:
        role_keys = [k for k in m if isinstance(k, str) and k.strip().lower() in ROLE_ALIASES]
        if len(role_keys) == 1 and len(m) == 1:  # {"user": "..."}: the role field holds the content
            k = role_keys[0]
            repairs.add("role_as_key")
            return {"role": _role(k, where, repairs), "content": _text(m[k], f"{where}.{k}", repairs)}
        raise RowDrop("missing_field", f"{where} has no 'role' (keys: {sorted(map(str, m))[:6]})")
    if "content" not in m:
        raise RowDrop("missing_field", f"{where} has no 'content'")
    role = _role(m["role"], where, repairs)
    return {"role": role, "content": _text(m["content"], f"{where}.content", repairs)}


def _messages(value: Any, where: str, repairs: set[str]) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise RowDrop("wrong_type", f"{where} is {type(value).__name__}, expected a list of messages")
    out: list[dict[str, str]] = []
    for i, m in enumerate(value):
        try:
            out.append(_message(m, f"{where}[{i}]", repairs))
        except RowDrop as e:
            if e.reason == "empty_content" and isinstance(m, dict) and str(m.get("role", "")).lower() == "system":
                repairs.add("empty_system_removed")
                continue
            raise
    return out


def _check_turns(msgs: list[dict[str, str]], where: str, need_final: str | None) -> None:
    """Optional leading system turn, then alternating user/assistant; ``need_final`` = required last role."""
    body = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if any(m["role"] == "system" for m in body):
        raise RowDrop("roles_out_of_order", f"{where}: a system turn may only come first")
    roles = [m["role"] for m in body]
    if "user" not in roles:
        raise RowDrop("missing_user_turn", f"{where} has no user turn")
    if need_final == "assistant" and "assistant" not in roles:
        raise RowDrop("missing_assistant_turn", f"{where} has no assistant turn")
    if roles[0] != "user":
        raise RowDrop("roles_out_of_order", f"{where} starts with {roles[0]!r}; the first turn must be the user's")
    for a, b in zip(roles, roles[1:]):
        if a == b:
            raise RowDrop("roles_out_of_order", f"{where} has two {a} turns in a row")
    if need_final and roles[-1] != need_final:
        reason = "missing_assistant_turn" if need_final == "assistant" else "roles_out_of_order"
        raise RowDrop(reason, f"{where} ends with a {roles[-1]} turn; it must end with the {need_final}'s")


def _wrong_format(obj: dict, fmt: str) -> None:
    kind = classify(obj)
    if kind not in (fmt, "unknown"):
        raise RowDrop("wrong_format", f"row looks like {kind} data (keys {sorted(obj)[:6]}) but the format is {fmt}")


def canonical_chat(obj: dict) -> tuple[dict, set[str]]:
    repairs: set[str] = set()
    _wrong_format(obj, "chat")
    if "messages" in obj:
        raw = obj["messages"]
    elif "conversations" in obj:
        raw = obj["conversations"]
        repairs.add("sharegpt_keys")
    else:
        raise RowDrop("missing_field", f"no 'messages' list (keys: {sorted(obj)[:6]})")
    msgs = _messages(raw, "messages", repairs)
    _check_turns(msgs, "messages", "assistant")
    return {"messages": msgs}, repairs


def _alias(obj: dict, names: tuple[str, ...], repairs: set[str], required: bool = True) -> Any:
    for i, n in enumerate(names):
        if n in obj:
            if i:
                repairs.add("field_alias")
            return obj[n]
    if required:
        raise RowDrop("missing_field", f"missing {names[0]!r} (keys: {sorted(obj)[:6]})")
    return None


def _prompt(value: Any, repairs: set[str]) -> str | list[dict[str, str]]:
    if isinstance(value, list):
        msgs = _messages(value, "prompt", repairs)
        _check_turns(msgs, "prompt", "user")
        return msgs
    return _text(value, "prompt", repairs)


def _answer(value: Any, where: str, repairs: set[str]) -> str | list[dict[str, str]]:
    if isinstance(value, list):
        msgs = _messages(value, where, repairs)
        if not msgs or any(m["role"] != "assistant" for m in msgs):
            raise RowDrop("roles_out_of_order", f"{where} must hold only assistant turns")
        return msgs
    return _text(value, where, repairs)


def _split_implicit_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """TRL 'implicit prompt' rows: chosen/rejected are whole conversations sharing a prompt prefix."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def canonical_preference(obj: dict) -> tuple[dict, set[str]]:
    repairs: set[str] = set()
    _wrong_format(obj, "preference")
    if "chosen" not in obj or "rejected" not in obj:
        raise RowDrop("missing_field", f"preference rows need 'chosen' and 'rejected' (keys: {sorted(obj)[:6]})")
    raw_prompt = _alias(obj, ("prompt", "question", "messages"), repairs, required=False)
    chosen_raw, rejected_raw = obj["chosen"], obj["rejected"]
    if raw_prompt is None:
        if not (isinstance(chosen_raw, list) and isinstance(rejected_raw, list)):
            raise RowDrop("missing_field", "missing 'prompt' (needed unless chosen/rejected are whole conversations)")
        c = _messages(chosen_raw, "chosen", repairs)
        r = _messages(rejected_raw, "rejected", repairs)
        prompt, chosen, rejected = _split_implicit_prompt(c, r)
        if not prompt:
            raise RowDrop("missing_field", "chosen and rejected share no prompt turns and no 'prompt' is given")
        _check_turns(prompt, "prompt", "user")
        repairs.add("implicit_prompt_extracted")
        for name, part in (("chosen", chosen), ("rejected", rejected)):
            if not part or any(m["role"] != "assistant" for m in part):
                raise RowDrop("roles_out_of_order", f"{name} must continue the shared prompt with assistant turns")
    else:
        prompt = _prompt(raw_prompt, repairs)
        chosen = _answer(chosen_raw, "chosen", repairs)
        rejected = _answer(rejected_raw, "rejected", repairs)
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
    ref = _text(_alias(obj, ("reference", "answer", "solution"), repairs), "reference", repairs)
    row: dict[str, Any] = {"prompt": prompt, "reference": ref}
    if obj.get("rubric") is not None:
        row["rubric"] = _text(obj["rubric"], "rubric", repairs)
    return row, repairs


_CANON = {"chat": canonical_chat, "preference": canonical_preference, "grpo": canonical_grpo}


def canonicalize(obj: Any, fmt: str) -> tuple[dict, set[str]]:
    if not isinstance(obj, dict):
        raise RowDrop("not_an_object", f"line holds a JSON {type(obj).__name__}, expected an object")
    return _CANON[fmt](obj)


# ---- conversations for token counting ------------------------------------------------------------------------


def _as_messages(x: str | list, role: str) -> list[dict[str, str]]:
    return [{"role": role, "content": x}] if isinstance(x, str) else list(x)


def conversations(row: dict, fmt: str) -> list[list[dict[str, str]]]:
    """The token sequences a row turns into at training time (the last message of each is the target)."""
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
        return {"messages": msgs}
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
