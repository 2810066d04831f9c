"""Why a row is dropped: every reason with what the user should do about it, and the exception that carries one.

Reasons are report keys (``report["dropped"][reason]``) read by the API checker, the CLI and the docs: add new
ones here, never rename existing ones.
"""

from __future__ import annotations

#: reason -> what the user should do about it (used in strict-mode errors and the report).
DROP_REASONS: dict[str, str] = {
    "invalid_json": "fix the JSON on that line (a truncated export often leaves a half-written last row)",
    "non_utf8": "re-export the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
    "invalid_unicode": "the text holds a lone UTF-16 surrogate escape such as \\ud800 (half of an emoji or other "
                       "character, cut by the exporter); fix or remove that character and re-export",
    "duplicate_key": "the same key appears twice in one object with different values; keep the one you mean",
    "not_an_object": "each line must be one JSON object",
    "wrong_format": "this row belongs to another data format; split the file or convert the row",
    "missing_field": "add the missing field",
    "wrong_type": "use a string (or a list of {type: text, text} parts) for every content/prompt/answer field and "
                  "a list of {role, content} objects for messages",
    "unsupported_content": "lexforge fine-tunes text-only models: remove image/audio/file parts, and convert the "
                           "deprecated functions/function_call fields to tools/tool_calls",
    "unknown_role": "use roles system, user, assistant or tool (aliases human/bot/gpt/model/developer are repaired)",
    "missing_user_turn": "add a user turn before the assistant answer",
    "missing_assistant_turn": "add the assistant answer the model should learn (the row must end with it)",
    "roles_out_of_order": "put the system turn first and alternate user/assistant turns (tool results follow the "
                          "assistant turn that called the tools)",
    "invalid_tool_call": "give each tool call {id, type: function, function: {name, arguments}} with arguments a "
                         "JSON object, name only tools listed in the row's tools, and answer every call id with one "
                         "tool message",
    "invalid_weight": "weight is 0 or 1 and only on assistant messages",
    "no_trainable_turn": "every assistant turn has weight 0, so there is nothing to learn; set weight 1 on the "
                         "turns to train on",
    "empty_content": "fill in the empty turn or remove the row",
    "identical_pair": "chosen and rejected must differ for preference training",
    "template_cannot_render": "the base model's chat template cannot render this row faithfully (e.g. it has no "
                              "tool support); choose a base model whose template supports it, or drop such rows",
    "too_long": "shorten the row, raise data.max_seq_len, or set data.on_too_long=truncate",
    "duplicate": "remove the repeated row (or set data.dedupe=false)",
    "near_duplicate": "remove the near-identical row (or set data.near_dedupe=false)",
    "overlaps_train": "validation rows must not repeat training rows",
}


class RowDrop(Exception):
    """A row cannot be used: ``reason`` (a key of :data:`DROP_REASONS`) and a ``detail`` naming the field."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def short(value: object, limit: int = 60) -> str:
    """A bounded ``repr`` of user data for a drop detail (always encodable: repr escapes surrogates)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."
