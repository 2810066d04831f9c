"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` with a matching status.

Messages reach clients with filesystem paths and internal URIs replaced (:func:`redact_locations`); the full
message goes to the replica's log."""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse

#: URIs (s3://, http://, file:, mlflow-artifacts:/, runs:/, models:/ ...) and absolute POSIX paths; the
#: serving app's own routes (/v1/..., /admin/..., /health) are kept, they are what a client must call.
_URI = re.compile(r"\b(?:[a-zA-Z][\w+.-]*://|(?:file|runs|models|mlflow-artifacts|dbfs):/?)[^\s'\"<>`]+")
_PATH = re.compile(r"(?<![\w.:/~-])(?:~|\.{1,2})?/(?!v1/|admin/|health\b|-/)[^\s'\"<>`,;()]+")


def redact_locations(text: str | None) -> str | None:
    """``text`` with URIs replaced by ``<uri>`` and absolute paths by ``<path>/NAME`` (their last component)."""
    if not text:
        return text
    text = _URI.sub("<uri>", text)
    return _PATH.sub(lambda m: "<path>/" + m.group(0).rstrip("/.").rsplit("/", 1)[-1], text)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": redact_locations(self.message), "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def unauthorized(message: str = "missing or invalid API key: send `Authorization: Bearer <key>`") -> APIError:
    return APIError(401, message, "invalid_request_error", None, "invalid_api_key")


def model_not_found(model: str, available: list[str]) -> APIError:
    return APIError(404, f"model {model!r} does not exist; available: {', '.join(available)}",
                    "invalid_request_error", "model", "model_not_found")


def context_too_long(prompt_tokens: int, max_tokens: int, max_model_len: int) -> APIError:
    return APIError(
        400,
        f"this model's maximum context length is {max_model_len} tokens; the prompt has {prompt_tokens} tokens "
        f"and max_tokens asks for {max_tokens} more ({prompt_tokens + max_tokens}); shorten the prompt or "
        f"lower max_tokens",
        "invalid_request_error", "messages", "context_length_exceeded",
    )
