"""HTTP layer of the fine-tuning API: OpenAI routes under ``/v1``, Bearer API keys, OpenAI error shape.

Routes: ``/v1/files`` (upload, list, retrieve, delete, content), ``/v1/fine_tuning/jobs`` (create, list,
retrieve, cancel, events, checkpoints), and ``/v1/models`` + ``/v1/chat/completions`` + ``/v1/completions``
proxied to the Ray Serve app, so one ``openai`` client fine-tunes and then chats with the result.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from api.errors import ApiError, bad_request, install_handlers
from api.jobs import JobCreate, available_models
from api.service import FineTuningService
from api.settings import ApiSettings
from lexforge import auth

log = logging.getLogger("lexforge.api")

#: Multipart framing allowance on top of the file size limit when checking Content-Length up front.
MULTIPART_OVERHEAD = 64 * 1024
#: Serving-app response headers passed through to API clients (which model version answered).
FORWARDED_HEADERS = {"x-lexforge-model-version", "x-request-id"}


def _auth_dependency(settings: ApiSettings):
    allowed = auth.digests(settings.api_keys)

    def check(request: Request) -> None:
        try:
            request.state.key_fp = auth.authorize(request.headers.get("authorization"), allowed)
        except auth.KeyRejected as e:
            if e.reason == "missing":
                raise ApiError(401, "Missing API key: send 'Authorization: Bearer <key>' (keys come from "
                               "LEXFORGE_API_KEYS)", code="invalid_api_key") from None
            raise ApiError(401, "Incorrect API key provided", code="invalid_api_key") from None

    return check


def create_app(settings: ApiSettings | None = None, start_poller: bool = True) -> FastAPI:
    settings = settings or ApiSettings()
    settings.validate()
    service = FineTuningService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_poller:
            service.start_poller()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="lexforge fine-tuning API", version="1", lifespan=lifespan,
                  docs_url="/docs", openapi_url="/openapi.json")
    app.state.service = service
    install_handlers(app)
    auth = Depends(_auth_dependency(settings))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    # ---- files ----------------------------------------------------------------------------------------------
    @app.post("/v1/files", dependencies=[auth])
    async def upload_file(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_file_bytes + MULTIPART_OVERHEAD:
            raise ApiError(413, f"upload of {length} bytes exceeds the {settings.max_file_bytes} byte limit of this "
                           f"server (LEXFORGE_API_MAX_FILE_BYTES)", param="file", code="file_too_large")
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise bad_request("upload files as multipart/form-data with fields 'file' and 'purpose'", "file")
        form = await request.form(max_files=1, max_fields=8)
        try:
            upload = form.get("file")
            purpose = form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise bad_request("missing multipart field 'file'", "file", "missing_file")
            if not isinstance(purpose, str) or not purpose:
                raise bad_request("missing multipart field 'purpose' (use 'fine-tune')", "purpose", "missing_purpose")
            upload.file.seek(0)
            obj = await run_in_threadpool(service.upload_file, upload.file, upload.filename, purpose)
        finally:
            await form.close()
        return JSONResponse(obj)

    @app.get("/v1/files", dependencies=[auth])
    def list_files(purpose: str | None = None, after: str | None = None, limit: int = Query(10_000),
                   order: str = Query("desc", pattern="^(asc|desc)$")) -> dict[str, Any]:
        return service.list_files(purpose, after, limit, order)

    @app.get("/v1/files/{file_id}", dependencies=[auth])
    def retrieve_file(file_id: str) -> dict[str, Any]:
        return service.file_object(service.get_file_row(file_id))

    @app.delete("/v1/files/{file_id}", dependencies=[auth])
    def delete_file(file_id: str) -> dict[str, Any]:
        return service.delete_file(file_id)

    @app.get("/v1/files/{file_id}/content", dependencies=[auth])
    def file_content(file_id: str) -> Response:
        path, data, row = service.file_content(file_id)
        media = "text/csv" if row["filename"].endswith(".csv") else "application/jsonl"
        if path is not None:
            return FileResponse(path, media_type=media, filename=row["filename"])
        return Response(data, media_type=media)

    # ---- fine-tuning jobs -----------------------------------------------------------------------------------
    @app.post("/v1/fine_tuning/jobs", dependencies=[auth])
    def create_job(req: JobCreate) -> dict[str, Any]:
        return service.create_job(req)

    @app.get("/v1/fine_tuning/jobs", dependencies=[auth])
    def list_jobs(request: Request, after: str | None = None, limit: int = Query(20)) -> dict[str, Any]:
        metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                    if k.startswith("metadata[") and k.endswith("]")}
        return service.list_jobs(after, limit, metadata or None)

    @app.get("/v1/fine_tuning/jobs/{job_id}", dependencies=[auth])
    def retrieve_job(job_id: str) -> dict[str, Any]:
        return service.job(job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", dependencies=[auth])
    def cancel_job(job_id: str) -> dict[str, Any]:
        return service.cancel_job(job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events", dependencies=[auth])
    def list_events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=10_000)) -> dict[str, Any]:
        return service.list_events(job_id, after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", dependencies=[auth])
    def list_checkpoints(job_id: str, after: str | None = None,
                         limit: int = Query(10, ge=1, le=10_000)) -> dict[str, Any]:
        return service.list_checkpoints(job_id, after, limit)

    # ---- inference, proxied to the serving app ---------------------------------------------------------------
    def _serve():
        if service.serve is None:
            raise ApiError(503, "no serving app configured: set LEXFORGE_SERVE_URL to the lexforge serve endpoint",
                           type="server_error", code="serving_unavailable")
        return service.serve

    @app.get("/v1/models", dependencies=[auth])
    def list_models(request: Request) -> dict[str, Any]:
        if service.serve is not None:
            try:
                r = service.serve.http.get("/v1/models", timeout=30,
                                           headers=service.serve.inference_headers(request.headers.get("authorization")))
                if r.status_code < 400:
                    return r.json()
            except httpx.HTTPError as e:
                log.warning("serving app /v1/models unreachable: %s", type(e).__name__)
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "lexforge"}
            for m in available_models(settings.allowed_models)]}

    async def _forward(request: Request, path: str, body: bytes):
        serve = _serve()
        client = httpx.AsyncClient(base_url=serve.base_url, timeout=600,
                                   headers=serve.inference_headers(request.headers.get("authorization")))
        try:
            upstream = await client.send(
                client.build_request("POST", path, content=body, headers={"content-type": "application/json"}),
                stream=True)
        except httpx.HTTPError as e:
            await client.aclose()
            raise ApiError(503, f"serving app unreachable: {type(e).__name__}", type="server_error",
                           code="serving_unavailable") from None
        return client, upstream

    async def _proxy(request: Request, path: str) -> Response:
        body = await request.body()
        client, upstream = await _forward(request, path, body)
        if upstream.status_code == 404:
            # The serving app may have restarted and lost its adapter table: re-register a known model once.
            try:
                model = json.loads(body).get("model")
            except (ValueError, AttributeError):
                model = None
            if isinstance(model, str) and await run_in_threadpool(service.republish, model):
                await upstream.aclose()
                await client.aclose()
                client, upstream = await _forward(request, path, body)

        async def close() -> None:
            await upstream.aclose()
            await client.aclose()

        passed = {k: v for k, v in upstream.headers.items() if k.lower() in FORWARDED_HEADERS}
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=passed,
                                 media_type=upstream.headers.get("content-type"), background=BackgroundTask(close))

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat_completions(request: Request) -> Response:
        return await _proxy(request, "/v1/chat/completions")

    @app.post("/v1/completions", dependencies=[auth])
    async def completions(request: Request) -> Response:
        return await _proxy(request, "/v1/completions")

    return app
