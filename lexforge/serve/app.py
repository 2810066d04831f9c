"""The Ray Serve application: FastAPI routes (OpenAI-compatible + legal + admin) over one vLLM engine.

Routes (all need ``Authorization: Bearer <key>`` except ``/health`` and Ray's ``/-/healthz``):

- ``GET /v1/models``, ``POST /v1/chat/completions`` (SSE streaming), ``POST /v1/completions``
- ``POST /v1/legal/chat``, ``POST /v1/legal/analyze`` (default legal system prompt from ``spec.serve``)
- ``POST /admin/reload-champion``, ``POST /admin/adapters``, ``GET /admin/adapters`` (admin keys)
- ``GET /metrics`` (Prometheus), ``GET /health``

Every generation response carries ``X-Lexforge-Model-Version`` (the adapter version that produced it).

Note: Ray pickles the deployment class by value when it is decorated, so every module-level helper the class
uses must be defined *above* it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from lexforge.serve import auth
try:
    from vllm.exceptions import VLLMClientError
except ImportError:  # pragma: no cover - vllm builds without the error hierarchy
    VLLMClientError = ValueError  # type: ignore[misc,assignment]
from lexforge.serve.adapters import (AdapterError, AdapterRef, AdapterTable, Champion, check_adapter_dir,
                                     make_champion_source)
from lexforge.serve.errors import (APIError, bad_request, context_too_long, model_not_found, redact_locations,
                                   unauthorized)
from lexforge.serve.metrics import CONTENT_TYPE, ServeMetrics
from lexforge.serve.protocol import (AdapterRegistration, ChatCompletionRequest, CompletionRequest,
                                     LegalAnalyzeRequest, LegalChatRequest, ReloadChampionRequest, SamplingFields,
                                     error_param)
from lexforge.serve.settings import ServeSettings

log = logging.getLogger("lexforge.serve")
VERSION_HEADER = "X-Lexforge-Model-Version"
REPLICA_HEADER = "X-Lexforge-Replica"
PUBLIC_PATHS = {"/health", "/-/healthz"}

api = FastAPI(title="lexforge serve", description="OpenAI-compatible legal LLM serving (Ray Serve + vLLM)")


@api.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    first = errs[0] if errs else {"loc": ("body",), "msg": "invalid request"}
    param = error_param(tuple(first.get("loc", ())))
    msg = "; ".join(f"{error_param(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errs[:5])
    return bad_request(f"invalid request body: {msg}", param=param).response()


@api.middleware("http")
async def _require_api_key(request: Request, call_next):
    """Every route except the health checks needs a key -- checked before the body is even parsed."""
    if request.url.path not in PUBLIC_PATHS:
        try:
            request.state.key_fp = auth.check_key(request.headers.get("authorization"),
                                                  admin=request.url.path.startswith("/admin/"))
        except APIError as e:
            return e.response()
    return await call_next(request)


def _route_label(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def _now() -> int:
    return int(time.time())


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def legal_analyze_messages(req: LegalAnalyzeRequest, system_prompt: str) -> list[dict]:
    question = req.question or ("Identify the key obligations, rights, deadlines and risks in this text, "
                                "and point out anything ambiguous.")
    user = (f"Jurisdiction: {req.jurisdiction}\n\nText:\n\"\"\"\n{req.text}\n\"\"\"\n\nTask: {question}")
    return [{"role": "system", "content": req.system_prompt or system_prompt}, {"role": "user", "content": user}]


def with_system_prompt(messages: list[dict], system_prompt: str) -> list[dict]:
    if messages and messages[0]["role"] in ("system", "developer"):
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


def _guess_param(message: str) -> str | None:
    for p in ("n", "temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty"):
        if message.startswith(p + " ") or f"`{p}`" in message:
            return p
    return None


def setup_replica_logging() -> None:
    """lexforge.serve INFO logs to the replica's stderr (Ray keeps it in the session's worker logs)."""
    lg = logging.getLogger("lexforge.serve")
    if not lg.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)
        lg.propagate = False


def model_card(ref: AdapterRef, base_name: str, created: int) -> dict:
    """What clients see of a served model: its id, version and parent (never a path or a registry URI)."""
    return {"id": ref.name, "object": "model", "created": created, "owned_by": "lexforge",
            "parent": None if ref.name == base_name else base_name, "version": ref.version,
            "kind": "base" if ref.path is None else "lora"}


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/").split("/")[-1] == b.rstrip("/").split("/")[-1]


#: How often replicas poll the shared table (seconds); a reload waits until every live replica applied it.
SYNC_POLL_S = 0.5
SYNC_TIMEOUT_S = 60.0
REPLICA_STALE_S = 10.0


@serve.deployment(name="lexforge-adapter-state", num_replicas=1, ray_actor_options={"num_cpus": 0})
class AdapterState:
    """The app-wide name table (champion + admin-registered adapters), so every engine replica serves the same
    version. Replicas poll it; a reload publishes here and waits for all live replicas to apply it."""

    def __init__(self) -> None:
        self.gen = 0
        self.entries: dict[str, dict] = {}  # name -> {"path", "version", "source"}
        self.seen: dict[str, tuple[int, float]] = {}  # replica id -> (applied generation, last poll)

    def publish(self, entries: dict[str, dict]) -> int:
        self.entries.update(entries)
        self.gen += 1
        return self.gen

    def snapshot(self) -> dict:
        return {"gen": self.gen, "entries": dict(self.entries)}

    def poll(self, replica: str, applied: int) -> dict:
        self.seen[replica] = (applied, time.monotonic())
        return self.snapshot() if applied < self.gen else {"gen": self.gen}

    def lagging(self, gen: int) -> list[str]:
        now = time.monotonic()
        return sorted(r for r, (g, t) in self.seen.items() if now - t < REPLICA_STALE_S and g < gen)


@serve.deployment(name="lexforge-llm", health_check_period_s=10, health_check_timeout_s=30,
                  graceful_shutdown_timeout_s=30)
@serve.ingress(api)
class LexforgeServer:
    """One replica = one vLLM engine (base model once, LoRA adapters by name) + the name table."""

    async def __init__(self, settings: ServeSettings | dict, state=None):
        from lexforge.serve.engine import Engine

        setup_replica_logging()
        self.s = ServeSettings.model_validate(settings)
        auth.set_replica_keys(self.s.api_key_digests, self.s.admin_key_digests)
        self.metrics = ServeMetrics()
        self.table = AdapterTable(self.s.base_name)
        self.champion_source = make_champion_source(self.s.champion)
        self.champion_error: str | None = None
        self._reload_lock = asyncio.Lock()
        self._created = _now()
        self.state, self.gen = state, 0
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:
            self.replica_id = uuid.uuid4().hex[:8]
        self.engine = Engine(self.s)
        for name, path in self.s.adapters.items():
            check_adapter_dir(path, self.s.max_lora_rank, self.s.base_model)
            ref = self.table.build(name, path, version=name)
            await self.engine.load_adapter(ref)
            self.table.put(ref)
        snap = await self.state.snapshot.remote() if self.state is not None else {"gen": 0, "entries": {}}
        shared_champion = self.s.served_name in snap["entries"]
        await self._apply(snap["entries"])  # follow what other replicas already agreed on
        self.gen = snap["gen"]
        if self.table.get(self.s.served_name) is None:
            try:
                ref = await self._install_champion(await asyncio.to_thread(self.champion_source.resolve))
                if not shared_champion:
                    await self._publish(ref)
            except Exception as e:  # no champion yet: the stable name serves the base model until a reload
                self.champion_error = f"{type(e).__name__}: {e}"
                log.warning("champion not loaded (%s); %s serves the base model", self.champion_error,
                            self.s.served_name)
                self.table.put(self.table.build(self.s.served_name, None, "base", source="champion"))
                self.metrics.set_champion(self.s.served_name, "base")
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop()) if self.state else None

    # ---- replica sync -----------------------------------------------------------------------------------
    async def _apply(self, entries: dict[str, dict]) -> None:
        """Make the local table match the shared one (loading adapters before swapping names)."""
        for name, e in entries.items():
            cur = self.table.get(name)
            path = str(Path(e["path"]).resolve()) if e.get("path") else None
            if cur is not None and cur.path == path and cur.version == e["version"]:
                continue
            if path and not Path(path).is_dir():
                log.error("adapter %s v%s: %s is not on this node; keeping %s", name, e["version"], path,
                          cur.version if cur else None)
                continue
            ref = self.table.build(name, path, e["version"], source=e.get("source", "champion"))
            await self.engine.load_adapter(ref)
            self.table.put(ref)
            if name == self.s.served_name:
                self.metrics.set_champion(name, ref.version)
                self.champion_error = None
            log.info("synced %s -> version %s", name, ref.version)

    async def _publish(self, *refs: AdapterRef) -> int:
        if self.state is None:
            return self.gen
        gen = await self.state.publish.remote(
            {r.name: {"path": r.path, "version": r.version, "source": r.source} for r in refs})
        if gen == self.gen + 1:  # nothing published in between: our table is exactly generation `gen`
            self.gen = gen       # (otherwise the sync loop fetches the full snapshot, ours included)
        return gen

    async def _wait_all_replicas(self, gen: int) -> list[str]:
        """Replica ids that have not applied ``gen`` yet after SYNC_TIMEOUT_S (empty = all in sync)."""
        if self.state is None:
            return []
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while True:
            lagging = [r for r in await self.state.lagging.remote(gen) if r != self.replica_id]
            if not lagging or time.monotonic() > deadline:
                return lagging
            await asyncio.sleep(SYNC_POLL_S / 2)

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_POLL_S)
            try:
                r = await self.state.poll.remote(self.replica_id, self.gen)
                if r["gen"] > self.gen and "entries" in r:
                    async with self._reload_lock:
                        await self._apply(r["entries"])
                        self.gen = max(self.gen, r["gen"])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("adapter table sync failed: %s: %s", type(e).__name__, e)

    # ---- plumbing ---------------------------------------------------------------------------------------
    def _authorize(self, request: Request, admin: bool = False) -> str:
        """The caller's key fingerprint (the auth middleware already rejected requests without a valid key)."""
        fp = getattr(request.state, "key_fp", None)
        if fp is None:  # only reachable if a route is wrongly listed as public
            raise unauthorized()
        return fp

    def _resolve(self, model: str | None) -> AdapterRef:
        name = model or self.s.served_name
        ref = self.table.get(name)
        if ref is None:
            raise model_not_found(name, self.table.names())
        return ref

    def _check_supported(self, req: SamplingFields) -> None:
        bad = req.unsupported()
        if bad:
            raise bad_request(bad[1], param=bad[0], code="unsupported_parameter")

    def _params(self, req: SamplingFields, prompt_len: int, max_tokens: int | None):
        remaining = self.s.max_model_len - prompt_len
        if max_tokens is None:
            if remaining < 1:
                raise context_too_long(prompt_len, 1, self.s.max_model_len)
            max_tokens = remaining
        if prompt_len + max_tokens > self.s.max_model_len:
            raise context_too_long(prompt_len, max_tokens, self.s.max_model_len)
        try:
            return self.engine.sampling_params(max_tokens, req.temperature, req.top_p, req.n, req.stop, req.seed,
                                               req.presence_penalty, req.frequency_penalty)
        except (ValueError, VLLMClientError) as e:  # vLLM's own request validation
            raise bad_request(str(e), param=getattr(e, "parameter", None) or _guess_param(str(e)))

    async def _observe(self, request: Request, fn):
        start = time.perf_counter()
        route = _route_label(request)
        status = 500
        self.metrics.inflight.inc()
        try:
            resp = await fn()
            status = resp.status_code
            return resp
        except APIError as e:
            status = e.status
            raise
        finally:
            self.metrics.inflight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    # ---- generation -------------------------------------------------------------------------------------
    async def _complete(self, ref: AdapterRef, model: str, prompt_ids: list[int], params) -> tuple[list, int, int]:
        latest: dict[int, Any] = {}  # with n > 1 vLLM may report each sample in a different RequestOutput
        async for out in self.engine.generate(prompt_ids, params, ref):
            for o in out.outputs:
                latest[o.index] = o
        outs = [latest[i] for i in sorted(latest)]
        completion = sum(len(o.token_ids) for o in outs)
        self.metrics.count_tokens(model, ref.version, len(prompt_ids), completion)
        return outs, len(prompt_ids), completion

    async def _chat(self, request: Request, req: ChatCompletionRequest | LegalChatRequest,
                    messages: list[dict], model: str | None) -> Response:
        fp = self._authorize(request)
        self._check_supported(req)
        ref = self._resolve(model)
        name = model or self.s.served_name
        prompt_ids = self.engine.chat_prompt_ids(messages)
        max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
        params = self._params(req, len(prompt_ids), max_tokens)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        headers = {VERSION_HEADER: ref.version, "X-Request-Id": rid, REPLICA_HEADER: self.replica_id}
        log.info("chat model=%s version=%s key=%s prompt_tokens=%d stream=%s", name, ref.version, fp,
                 len(prompt_ids), req.stream)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._chat_stream(rid, name, ref, prompt_ids, params, req.n, include_usage),
                                     media_type="text/event-stream", headers=headers)
        outs, p, c = await self._complete(ref, name, prompt_ids, params)
        body = {
            "id": rid, "object": "chat.completion", "created": _now(), "model": name,
            "system_fingerprint": f"lexforge-{ref.version}",
            "choices": [{"index": o.index, "message": {"role": "assistant", "content": o.text},
                         "finish_reason": o.finish_reason or "stop", "logprobs": None} for o in outs],
            "usage": _usage(p, c),
        }
        return JSONResponse(body, headers=headers)

    async def _chat_stream(self, rid: str, name: str, ref: AdapterRef, prompt_ids: list[int], params, n: int,
                           include_usage: bool):
        base = {"id": rid, "object": "chat.completion.chunk", "created": _now(), "model": name,
                "system_fingerprint": f"lexforge-{ref.version}"}
        for i in range(n):
            yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]})
        async for event in self._sse_events(rid, name, ref, prompt_ids, params, include_usage, base,
                                            lambda o, delta: {"index": o.index,
                                                              "delta": {"content": delta} if delta else {},
                                                              "finish_reason": o.finish_reason}):
            yield event

    async def _sse_events(self, rid, name, ref, prompt_ids, params, include_usage: bool, base: dict, choice):
        """The engine's incremental output as SSE chunks (``choice(o, delta)`` shapes one choice), then usage
        and ``[DONE]``. Headers are already sent, so a failure is reported in-band, OpenAI style."""
        start, first = time.perf_counter(), True
        sent: dict[int, int] = {}
        ntok: dict[int, int] = {}
        try:
            async for out in self.engine.generate(prompt_ids, params, ref):
                for o in out.outputs:
                    ntok[o.index] = len(o.token_ids)
                    delta = o.text[sent.get(o.index, 0):]
                    if delta or o.finish_reason:
                        if first and delta:
                            self.metrics.ttft.labels(name).observe(time.perf_counter() - start)
                            first = False
                        sent[o.index] = len(o.text)
                        yield _sse({**base, "choices": [choice(o, delta)]})
            completion = sum(ntok.values())
            self.metrics.count_tokens(name, ref.version, len(prompt_ids), completion)
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(len(prompt_ids), completion)})
        except Exception as e:
            log.exception("stream %s failed", rid)
            yield _sse(APIError(500, f"generation failed: {type(e).__name__}: {e}", "server_error").body())
        yield "data: [DONE]\n\n"

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request, req: ChatCompletionRequest) -> Response:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        return await self._observe(request, lambda: self._chat(request, req, messages, req.model))

    @api.post("/v1/completions")
    async def completions(self, request: Request, req: CompletionRequest) -> Response:
        async def run() -> Response:
            fp = self._authorize(request)
            self._check_supported(req)
            if req.stream and isinstance(req.prompt, list) and len(req.prompt) > 1:
                raise bad_request("streaming supports a single prompt", param="prompt")
            ref = self._resolve(req.model)
            prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            ids = [self.engine.text_prompt_ids(p) for p in prompts]
            params = [self._params(req, len(x), req.max_tokens) for x in ids]
            rid = f"cmpl-{uuid.uuid4().hex}"
            headers = {VERSION_HEADER: ref.version, "X-Request-Id": rid, REPLICA_HEADER: self.replica_id}
            log.info("completion model=%s version=%s key=%s prompts=%d", req.model, ref.version, fp, len(ids))
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                return StreamingResponse(self._completion_stream(rid, req.model, ref, ids[0], params[0],
                                                                 include_usage),
                                         media_type="text/event-stream", headers=headers)
            results = await asyncio.gather(*[self._complete(ref, req.model, x, p) for x, p in zip(ids, params)])
            choices, pt, ct = [], 0, 0
            for pi, (outs, p, c) in enumerate(results):
                pt, ct = pt + p, ct + c
                choices += [{"index": pi * req.n + o.index, "text": o.text, "logprobs": None,
                             "finish_reason": o.finish_reason or "stop"} for o in outs]
            body = {"id": rid, "object": "text_completion", "created": _now(), "model": req.model,
                    "system_fingerprint": f"lexforge-{ref.version}", "choices": choices, "usage": _usage(pt, ct)}
            return JSONResponse(body, headers=headers)

        return await self._observe(request, run)

    async def _completion_stream(self, rid, name, ref, prompt_ids, params, include_usage):
        base = {"id": rid, "object": "text_completion", "created": _now(), "model": name}
        async for event in self._sse_events(rid, name, ref, prompt_ids, params, include_usage, base,
                                            lambda o, delta: {"index": o.index, "text": delta, "logprobs": None,
                                                              "finish_reason": o.finish_reason}):
            yield event

    # ---- legal ------------------------------------------------------------------------------------------
    @api.post("/v1/legal/chat")
    async def legal_chat(self, request: Request, req: LegalChatRequest) -> Response:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        messages = with_system_prompt(messages, req.system_prompt or self.s.system_prompt)
        return await self._observe(request, lambda: self._chat(request, req, messages, req.model))

    @api.post("/v1/legal/analyze")
    async def legal_analyze(self, request: Request, req: LegalAnalyzeRequest) -> Response:
        async def run() -> Response:
            if req.stream:
                raise bad_request("/v1/legal/analyze does not stream; use /v1/legal/chat", param="stream")
            resp = await self._chat(request, req, legal_analyze_messages(req, self.s.system_prompt), req.model)
            body = json.loads(resp.body)
            out = {"id": body["id"], "object": "legal.analysis", "model": body["model"],
                   "model_version": resp.headers[VERSION_HEADER], "jurisdiction": req.jurisdiction,
                   "analysis": body["choices"][0]["message"]["content"],
                   "finish_reason": body["choices"][0]["finish_reason"], "usage": body["usage"],
                   "disclaimer": "Generated by a language model; not legal advice."}
            return JSONResponse(out, headers={VERSION_HEADER: resp.headers[VERSION_HEADER]})

        return await self._observe(request, run)

    # ---- models / admin ---------------------------------------------------------------------------------
    @api.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        self._authorize(request)
        data = []
        for ref in self.table.refs():
            data.append(model_card(ref, self.s.base_name, self._created))
        return JSONResponse({"object": "list", "data": data})

    async def _install_champion(self, champ: Champion, previous: AdapterRef | None = None) -> AdapterRef:
        if champ.base_model and not _same_model(champ.base_model, self.s.base_model):
            raise APIError(409, f"champion version {champ.version} was fine-tuned from {champ.base_model}, but this "
                           f"server runs {self.s.base_model}; start a server for that base (lexforge serve --base)",
                           "invalid_request_error", None, "base_model_mismatch")
        if champ.adapter_path:
            try:
                check_adapter_dir(champ.adapter_path, self.s.max_lora_rank, self.s.base_model)
            except AdapterError as e:
                raise APIError(422, str(e), "invalid_request_error", "adapter_path", "invalid_adapter")
        ref = self.table.build(self.s.served_name, champ.adapter_path, champ.version, source="champion")
        await self.engine.load_adapter(ref)  # load first: the swap below is then instant and cannot fail
        self.table.put(ref)
        self.metrics.set_champion(self.s.served_name, ref.version)
        self.champion_error = None
        log.info("champion %s -> version %s (%s)", self.s.served_name, ref.version, ref.path or "base model")
        return ref

    @api.post("/admin/reload-champion")
    async def reload_champion(self, request: Request) -> Response:
        async def run() -> Response:
            fp = self._authorize(request, admin=True)
            raw = await request.body()
            try:
                body = ReloadChampionRequest.model_validate_json(raw) if raw.strip() else ReloadChampionRequest()
            except Exception as e:
                raise bad_request(f"invalid body: {e}", param="body")
            async with self._reload_lock:
                previous = self.table.get(self.s.served_name)
                try:
                    if body.adapter_path:
                        champ = Champion(body.adapter_path, body.version or Path(body.adapter_path).name)
                    else:
                        champ = await asyncio.to_thread(self.champion_source.resolve)
                    ref = await self._install_champion(champ, previous)
                except APIError:
                    self.metrics.reloads.labels("error").inc()
                    raise
                except Exception as e:
                    self.metrics.reloads.labels("error").inc()
                    raise APIError(502, f"could not resolve/load the champion: {type(e).__name__}: {e}; "
                                   f"{self.s.served_name} still serves version {previous.version if previous else '-'}",
                                   "server_error", None, "champion_reload_failed")
                gen = await self._publish(ref)
            lagging = await self._wait_all_replicas(gen)
            self.metrics.reloads.labels("ok" if not lagging else "partial").inc()
            log.info("reload-champion by key=%s: %s -> %s (generation %d, lagging replicas: %s)", fp,
                     previous.version if previous else None, ref.version, gen, lagging or "none")
            return JSONResponse({"served_name": self.s.served_name, "version": ref.version,
                                 "previous_version": previous.version if previous else None,
                                 "generation": gen, "replicas_in_sync": not lagging, "lagging_replicas": lagging},
                                status_code=200 if not lagging else 504)

        return await self._observe(request, run)

    @api.post("/admin/adapters")
    async def register_adapter(self, request: Request, reg: AdapterRegistration) -> Response:
        async def run() -> Response:
            self._authorize(request, admin=True)
            if reg.name in (self.s.base_name, self.s.served_name):
                raise APIError(409, f"{reg.name!r} is reserved (base model / stable champion name); "
                               f"use POST /admin/reload-champion to change the champion",
                               "invalid_request_error", "name", "reserved_name")
            path, version, param = reg.path, reg.version, "path"
            if reg.model_uri is not None:  # a registry version: the same identity the pipeline evaluated
                param = "model_uri"
                try:
                    path, version = await asyncio.to_thread(self._resolve_registered, reg.model_uri)
                except Exception as e:  # noqa: BLE001 - the registry's answer is the client's problem to see
                    raise APIError(422, f"cannot resolve {reg.model_uri}: {e}", "invalid_request_error",
                                   param, "invalid_adapter")
                version = reg.version or version
            try:
                check_adapter_dir(path, self.s.max_lora_rank, self.s.base_model)
            except AdapterError as e:
                raise APIError(422, str(e), "invalid_request_error", param, "invalid_adapter")
            async with self._reload_lock:
                ref = self.table.build(reg.name, path, version or reg.name, source="admin")
                await self.engine.load_adapter(ref)
                old = self.table.put(ref)
                gen = await self._publish(ref)
            lagging = await self._wait_all_replicas(gen)
            return JSONResponse({"name": ref.name, "version": ref.version,
                                 "replaced_version": old.version if old else None, "replicas_in_sync": not lagging,
                                 "lagging_replicas": lagging}, status_code=200 if not lagging else 504)

        return await self._observe(request, run)

    def _resolve_registered(self, model_uri: str) -> tuple[str, str]:
        """(local adapter dir, version label ``name/version``) of a registry version."""
        from lexforge.registry import resolve_servable

        sv = resolve_servable(model_uri, tracking_uri=self.s.tracking_uri or self.s.champion.tracking_uri)
        if not sv.adapter_path:
            raise AdapterError(f"{model_uri} holds full weights, not a LoRA adapter; serve it as its own base")
        if sv.base_model and not _same_model(sv.base_model, self.s.base_model):
            raise AdapterError(f"{model_uri} was fine-tuned from base model {Path(sv.base_model).name!r}, but this "
                               f"server runs {self.s.base_name!r}; serve it from a server for that base")
        return str(sv.adapter_path), f"{sv.name}/{sv.version}"

    @api.get("/admin/adapters")
    async def list_adapters(self, request: Request) -> Response:
        self._authorize(request, admin=True)
        return JSONResponse({"adapters": [{**model_card(r, self.s.base_name, self._created), "source": r.source}
                                          for r in self.table.refs()],
                             "champion_error": redact_locations(self.champion_error), "generation": self.gen,
                             "replica": self.replica_id})

    @api.get("/metrics")
    async def metrics_route(self, request: Request) -> Response:
        self._authorize(request)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    @api.get("/health")
    async def health(self) -> Response:
        try:
            await self.engine.check_health()
        except Exception as e:
            return JSONResponse({"status": "unhealthy", "error": f"{type(e).__name__}"}, status_code=503)
        champ = self.table.get(self.s.served_name)
        return JSONResponse({"status": "ok", "served_name": self.s.served_name,
                             "champion_version": champ.version if champ else None,
                             "champion_loaded": self.champion_error is None, "generation": self.gen,
                             "replica": self.replica_id})

    async def check_health(self) -> None:  # Ray Serve's replica health check
        await self.engine.check_health()

    def __del__(self):
        task = getattr(self, "_sync_task", None)
        if task is not None:
            task.cancel()
        eng = getattr(self, "engine", None)
        if eng is not None:
            eng.shutdown()


# ---- building and running -------------------------------------------------------------------------------------


def _code_version() -> str:
    """Hash of this package's source: a deployment restarts its replicas when the code changes."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def build_app(s: ServeSettings):
    """The bound Ray Serve application for ``s`` (pass to ``serve.run``).

    Deployments get explicit versions (code hash + settings), so re-running with only ``num_replicas`` changed
    is a lightweight update: running engines and the shared adapter table are kept, replicas are added/removed.
    """
    import hashlib

    actor: dict[str, Any] = {"num_cpus": s.num_cpus}
    if s.resolved_accelerator() == "gpu":
        actor["num_gpus"] = s.num_gpus or 1
    args = s.model_dump(exclude={"num_replicas"})
    code = _code_version()
    version = hashlib.sha256((code + json.dumps(args, sort_keys=True)).encode()).hexdigest()[:16]
    server = LexforgeServer.options(num_replicas=s.num_replicas, ray_actor_options=actor,
                                    max_ongoing_requests=s.max_ongoing_requests)
    state = AdapterState.options()
    # Ray 2.60's serve.run gives a deployment without a version a random one (every deploy restarts all
    # replicas) and no longer accepts `version` in options(); set the internal field where it exists.
    for dep, v in ((server, version), (state, code)):
        if hasattr(dep, "_version"):
            dep._version = v
    return server.bind(args, state.bind())


def run_server(s: ServeSettings, host: str = "127.0.0.1", port: int = 8000, app_name: str = "lexforge",
               ray_address: str | None = None, timeout_s: float = 600.0):
    """Start (or join) Ray, start Serve's HTTP proxy on host:port and deploy the app; returns the handle.
    Blocks until the engine is up (the base model and adapters loaded)."""
    import ray

    from lexforge import ray_auth

    if not ray.is_initialized():
        with ray_auth.ray_init_env(ray_address or "local"):  # the cluster's token (lexforge/ray_auth.py)
            ray.init(address=ray_address or "local", include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(s), name=app_name, route_prefix="/", blocking=False)
