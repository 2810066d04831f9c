"""OpenAI request bodies (the subset lexforge serves) and the legal routes' bodies. Validation errors become
OpenAI-shaped 400s naming the offending ``param``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator, field_validator


class _Req(BaseModel):
    # Unknown fields are ignored (clients send many optional ones); unsupported *features* are rejected below.
    model_config = ConfigDict(extra="allow")


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(_Req):
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def unsupported(self) -> tuple[str, str] | None:
        """(param, reason) of the first feature this server does not implement, else None."""
        extra = self.model_extra or {}
        for k in ("tools", "functions", "tool_choice", "function_call"):
            if extra.get(k):
                return k, "tool/function calling is not supported by this server"
        if extra.get("logprobs") or extra.get("top_logprobs"):
            return "logprobs", "logprobs are not supported by this server"
        rf = extra.get("response_format")
        if rf and isinstance(rf, dict) and rf.get("type") not in (None, "text"):
            return "response_format", "only response_format type 'text' is supported"
        if extra.get("echo"):
            return "echo", "echo is not supported by this server"
        if extra.get("best_of") not in (None, 1):
            return "best_of", "best_of is not supported by this server"
        return None


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("prompt list is empty")
        return v


class LegalChatRequest(SamplingFields):
    model: str | None = Field(None, description="Default: the stable served name (the champion).")
    messages: list[Message] = Field(..., min_length=1)
    system_prompt: str | None = Field(None, description="Overrides the server's default legal system prompt.")


class LegalAnalyzeRequest(SamplingFields):
    model: str | None = None
    text: str = Field(..., min_length=1, description="The document / clause / statutory text to analyse.")
    question: str | None = Field(None, description="What to analyse; default: key obligations, risks, ambiguity.")
    jurisdiction: str = "England and Wales"
    system_prompt: str | None = None


class AdapterRegistration(BaseModel):
    """Serve an adapter under ``name``: a registry version (``model_uri``, e.g. ``models:/lexforge-legal/3``,
    which the app resolves itself) or a PEFT directory on the serving host (``path``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    model_uri: str | None = Field(None, pattern=r"^models:/[A-Za-z0-9][A-Za-z0-9._-]{0,127}/[0-9]+$")
    path: str | None = None
    version: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "AdapterRegistration":
        if (self.model_uri is None) == (self.path is None):
            raise ValueError("give exactly one of model_uri (a registry version: models:/NAME/VERSION) or path")
        return self


class ReloadChampionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter_path: str | None = Field(None, description="Serve this adapter as champion instead of asking the source.")
    version: str | None = None


def error_param(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"
