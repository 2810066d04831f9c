"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``.

The ``openai`` SDK turns these into ``BadRequestError``/``NotFoundError``/... with ``e.body`` = the inner
object, so clients handle lexforge exactly as they handle a managed provider.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        err = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        err.update(self.extra)
        return {"error": err}


def bad_request(message: str, param: str | None = None, code: str | None = None, **extra: Any) -> ApiError:
    return ApiError(400, message, param=param, code=code, extra=extra or None)


def not_found(kind: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {kind}: {ident}", param=param, code=f"{kind}_not_found".replace(" ", "_"))


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):  # noqa: ARG001
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):  # noqa: ARG001
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
        param = ".".join(loc) or None
        msg = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('body', 'query', 'path', 'form')) or 'body'}: "
            f"{e.get('msg')}" for e in errs)
        return error_response(ApiError(400, f"Invalid request: {msg}", param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):  # noqa: ARG001
        typ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(ApiError(exc.status_code, str(exc.detail), type=typ, code=code))
