"""The engine: the worker's OpenAI-compatible HTTP server, for a data plane that calls it directly.

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` each become a
``WorkerTask`` that goes through the worker's pool exactly like one arriving over NATS (slots,
priority, exclusive, queueing, statuses, metrics; draining refuses it with 503). A streamed answer
goes out as server-sent events as its chunks come; the answer's headers say who served it:

- ``X-Gpuplane-Worker``, ``X-Gpuplane-Group``, ``X-Gpuplane-Request-Id`` on every answer;
- ``X-Gpuplane-Service-Ms`` and ``X-Gpuplane-Load-Ms`` (the group load, 0 when none) on a
  non-streamed one; a streamed one says them in an SSE comment just before ``data: [DONE]``
  (``: gpuplane service_ms=... load_ms=...``), as they are known only at its end.

A request may say ``X-Gpuplane-Priority`` (high, normal, low), ``X-Gpuplane-Exclusive: 1``,
``X-Gpuplane-Request-Id`` (else one is made) and ``X-Gpuplane-Attempt``. Errors are OpenAI-shaped
(``{"error": {"message", "type", "param", "code"}}``). A client that disconnects cancels its task
and frees its slot. With a token set (``GPUPLANE_ENGINE_TOKEN[_FILE]``) every route but
``GET /health`` asks for ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from services.worker.backends.base import AnswerAbandoned
from shared.contracts import InferenceKind, Priority, WorkerResult, WorkerTask
from shared.errors import ERRORS, ConfigError, GpuplaneError, InvalidRequest, Overloaded, error_code
from shared.settings import is_loopback
from shared.telemetry import tracing_wanted

if TYPE_CHECKING:
    from services.worker.service import Worker
    from services.worker.settings import WorkerSettings

log = logging.getLogger("gpuplane.worker.engine")

PATHS: dict[str, InferenceKind] = {
    "/v1/chat/completions": InferenceKind.CHAT,
    "/v1/completions": InferenceKind.COMPLETION,
    "/v1/embeddings": InferenceKind.EMBEDDING,
}
REQUIRED: dict[InferenceKind, str] = {
    InferenceKind.CHAT: "messages",
    InferenceKind.COMPLETION: "prompt",
    InferenceKind.EMBEDDING: "input",
}
"""The field each kind of request cannot do without."""
OPEN_PATHS = frozenset({"/health"})
"""Routes answered without a credential."""

PRIORITY_HEADER = "X-Gpuplane-Priority"
EXCLUSIVE_HEADER = "X-Gpuplane-Exclusive"
REQUEST_ID_HEADER = "X-Gpuplane-Request-Id"
ATTEMPT_HEADER = "X-Gpuplane-Attempt"
WORKER_HEADER = "X-Gpuplane-Worker"
GROUP_HEADER = "X-Gpuplane-Group"
SERVICE_MS_HEADER = "X-Gpuplane-Service-Ms"
LOAD_MS_HEADER = "X-Gpuplane-Load-Ms"

REQUEST_ID_MAX_CHARS = 200
RETRY_AFTER_S = 1
"""Retry-After of a 503 while draining: another worker can take the request at once."""
SHUTDOWN_S = 1.0
"""After draining, how long answers still being written may take before the server closes them."""
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def openai_error(exc: GpuplaneError) -> tuple[int, dict[str, Any], bool]:
    """``exc`` as OpenAI answers it: the HTTP status, the body, and whether to say Retry-After."""
    code = error_code(exc)
    kind = ERRORS[code]
    field = getattr(exc, "field", None)
    error_id = "model_not_found" if code == "not_found" and field == "model" else kind.openai_code
    body = {"error": {"message": str(exc), "type": kind.openai_type, "param": field, "code": error_id}}
    return kind.openai_status, body, kind.retry_after


def error_response(exc: GpuplaneError, headers: dict[str, str] | None = None) -> web.Response:
    status, body, retry = openai_error(exc)
    out = dict(headers or {})
    if retry:
        retry_after_s = exc.retry_after_s if isinstance(exc, Overloaded) else RETRY_AFTER_S
        out["Retry-After"] = str(max(1, round(retry_after_s)))
    return web.Response(status=status, body=_dumps(body), content_type="application/json", headers=out)


def _plain_error(status: int, message: str, error_type: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return web.Response(status=status, body=_dumps(body), content_type="application/json")


def _ms(seconds: float) -> str:
    return f"{max(0.0, seconds) * 1000:.1f}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class SseAnswer:
    """A streamed answer over HTTP: each chunk a ``data:`` event, written as it comes.

    The response starts with the first chunk, so that a request failing before any chunk still gets a
    plain HTTP error. An error after that ends the events with an error event and ``[DONE]``.
    """

    def __init__(self, request: web.Request, headers: dict[str, str]) -> None:
        self._request = request
        self._headers = headers
        self.response: web.StreamResponse | None = None
        self.sent = 0
        self.ended = False

    async def _write(self, data: bytes) -> None:
        try:
            if self.response is None:
                response = web.StreamResponse(status=200, headers={**self._headers, **SSE_HEADERS})
                response.content_type = "text/event-stream"
                await response.prepare(self._request)
                self.response = response
            await self.response.write(data)
        except ConnectionError as exc:  # aiohttp's ClientConnectionResetError too: the client is gone
            raise AnswerAbandoned("the client disconnected") from exc

    async def emit(self, data: dict[str, Any]) -> None:
        await self._write(b"data: " + _dumps(data) + b"\n\n")
        self.sent += 1

    async def finish(self, error: GpuplaneError | None = None) -> None:
        """An error ends the events here; a success is ended by ``close`` once its figures are known."""
        if error is not None and not self.ended:
            self.ended = True
            _, body, _ = openai_error(error)
            await self._write(b"data: " + _dumps(body) + b"\n\n" + DONE)

    async def close(self, result: WorkerResult | None) -> web.StreamResponse:
        """End the events (``[DONE]``, after the figures of ``result``) and the response."""
        if not self.ended:
            self.ended = True
            figures = b""
            if result is not None:
                figures = f": gpuplane service_ms={_ms(result.service_s)} load_ms={_ms(result.load_s)}\n\n".encode()
            await self._write(figures + DONE)
        assert self.response is not None
        try:
            await self.response.write_eof()
        except ConnectionError as exc:
            raise AnswerAbandoned("the client disconnected") from exc
        return self.response


class Engine:
    """The HTTP server in front of one worker's pool."""

    def __init__(self, worker: Worker, settings: WorkerSettings) -> None:
        self._worker = worker
        self._settings = settings
        self._token = settings.engine_bearer()
        self._runner: web.AppRunner | None = None
        self._active = 0
        self._admission = asyncio.Semaphore(settings.task_concurrency_limit)
        self._created = int(time.time())
        self._tracing = tracing_wanted(settings.otlp_endpoint)
        self._tracer = trace.get_tracer("gpuplane.worker.engine")
        self.url: str | None = None

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._settings.engine_body_max_bytes, middlewares=[self._errors, self._auth]
        )
        for path, kind in PATHS.items():
            app.router.add_post(path, self._inference_handler(kind))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        return app

    async def start(self) -> str:
        """Listen; the URL to advertise (``http://host:port/v1``)."""
        settings = self._settings
        if self._token is None and not is_loopback(settings.engine_host):
            log.warning(
                "the engine listens on %s without a token: anyone who reaches it can run requests "
                "(set GPUPLANE_ENGINE_TOKEN or GPUPLANE_ENGINE_TOKEN_FILE)",
                settings.engine_host,
            )
        # handler_cancellation: a client that disconnects cancels its handler, hence its task.
        runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        site = web.TCPSite(runner, settings.engine_host, settings.engine_port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the engine cannot listen on {settings.engine_host}:{settings.engine_port}: "
                f"{exc.strerror or exc} (GPUPLANE_ENGINE_HOST, GPUPLANE_ENGINE_PORT)"
            ) from exc
        self._runner = runner
        port = int(runner.addresses[0][1])
        host = settings.engine_advertise_host or settings.engine_host
        if host in ("", "0.0.0.0", "::"):
            host = settings.host_name
        self.url = f"http://{_url_host(host)}:{port}/v1"
        log.debug("engine listening on %s:%d (%s)", settings.engine_host, port, self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # --------------------------------------------------------------- middlewares

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """aiohttp's own refusals (no such route, wrong method, body too large) in OpenAI's shape."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error_type = "server_error" if exc.status >= 500 else "invalid_request_error"
            message = exc.text if exc.status == web.HTTPRequestEntityTooLarge.status_code else exc.reason
            return _plain_error(exc.status, message or exc.reason, error_type, None)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _plain_error(500, "the engine failed to answer (see the worker's log)", "server_error", "internal")

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._token is None or request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), self._token.encode()):
            response = _plain_error(
                401, "this engine needs Authorization: Bearer <its token>", "authentication_error", "invalid_api_key"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    # --------------------------------------------------------------- routes

    async def _health(self, _: web.Request) -> web.Response:
        worker = self._worker
        details = {"status": "ok" if worker.accepting else worker.state.value, **worker.health()}
        return web.json_response(details, status=200 if worker.accepting else 503)

    async def _models(self, _: web.Request) -> web.Response:
        models = self._worker.backend.state().models
        data = [{"id": m, "object": "model", "created": self._created, "owned_by": "gpuplane"} for m in models]
        return web.Response(body=_dumps({"object": "list", "data": data}), content_type="application/json")

    def _inference_handler(self, kind: InferenceKind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            if not self._tracing:
                return await self._infer(request, kind)
            # The data plane's span is the parent: one trace from the gateway to the engine.
            with self._tracer.start_as_current_span(
                f"{request.method} {request.path}",
                context=propagate.extract(dict(request.headers)),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": request.method, "url.path": request.path},
            ) as span:
                response = await self._infer(request, kind)
                span.set_attribute("http.response.status_code", response.status)
                return response

        return handle

    async def _infer(self, request: web.Request, kind: InferenceKind) -> web.StreamResponse:
        worker = self._worker
        try:
            worker.check_accepting()
            body = await self._body(request)
            task, streamed = self._task(request, kind, body)
        except GpuplaneError as exc:
            return error_response(exc)
        headers = {
            WORKER_HEADER: worker.identity.worker_id,
            GROUP_HEADER: task.group,
            REQUEST_ID_HEADER: task.request_ids[0],
        }
        # Past the limit a request waits here, unread by the pool, as a task does in its NATS client: the
        # routers bound what they send (slots plus GPUPLANE_WORKER_QUEUE_LIMIT), so this only caps memory.
        await self._admission.acquire()
        self._active += 1
        try:
            if streamed:
                return await self._stream(request, task, headers)
            try:
                result = await worker.serve(task)
            except GpuplaneError as exc:
                return error_response(exc, headers)
        finally:
            self._active -= 1
            self._admission.release()
        headers[GROUP_HEADER] = result.group
        headers[SERVICE_MS_HEADER] = _ms(result.service_s)
        headers[LOAD_MS_HEADER] = _ms(result.load_s)
        return web.Response(body=_dumps(result.bodies[0]), content_type="application/json", headers=headers)

    async def _stream(self, request: web.Request, task: WorkerTask, headers: dict[str, str]) -> web.StreamResponse:
        answer = SseAnswer(request, headers)
        result: WorkerResult | None = None
        try:
            result = await self._worker.serve(task, answer)
        except GpuplaneError as exc:
            if answer.response is None:
                return error_response(exc, headers)
            # The error event went out already (``AnswerStream.finish``); end what was started.
        except AnswerAbandoned:
            log.debug("request %s: the client went away mid-answer", task.request_ids[0])
            return answer.response or web.Response(status=499)
        try:
            return await answer.close(result)
        except AnswerAbandoned:
            return answer.response or web.Response(status=499)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequest("the request body is not JSON") from exc
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        return body

    def _task(self, request: web.Request, kind: InferenceKind, body: dict[str, Any]) -> tuple[WorkerTask, bool]:
        """The task a request asks for, and whether its answer is streamed; ``InvalidRequest``/``NotFound`` else."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("the request needs a model", field="model")
        needed = REQUIRED[kind]
        if body.get(needed) is None:
            raise InvalidRequest(f"the request needs {needed}", field=needed)
        if kind is InferenceKind.CHAT and not isinstance(body["messages"], list):
            raise InvalidRequest("messages must be a list", field="messages")
        streamed = body.get("stream") is True
        if streamed and kind is InferenceKind.EMBEDDING:
            raise InvalidRequest("embeddings are not streamed", field="stream")
        group = self._worker.backend.group_for(model)
        request_id = _request_id(request.headers.get(REQUEST_ID_HEADER))
        task = WorkerTask(
            task_id=f"engine-{uuid.uuid4().hex}",
            request_ids=(request_id,),
            kind=kind,
            model=model,
            group=group,
            bodies=(body,),
            priority=_priority(request.headers.get(PRIORITY_HEADER)),
            exclusive=_flag(request.headers.get(EXCLUSIVE_HEADER), EXCLUSIVE_HEADER),
            attempt=_attempt(request.headers.get(ATTEMPT_HEADER)),
        )
        return task, streamed


def _request_id(raw: str | None) -> str:
    if raw is None or not raw.strip():
        return f"req-{uuid.uuid4().hex}"
    value = raw.strip()
    if len(value) > REQUEST_ID_MAX_CHARS or not value.isprintable():
        raise InvalidRequest(
            f"{REQUEST_ID_HEADER} must be printable and at most {REQUEST_ID_MAX_CHARS} characters",
            field=REQUEST_ID_HEADER,
        )
    return value


def _priority(raw: str | None) -> Priority:
    if raw is None or not raw.strip():
        return Priority.NORMAL
    try:
        return Priority(raw.strip().lower())
    except ValueError:
        valid = ", ".join(p.value for p in Priority)
        raise InvalidRequest(f"{PRIORITY_HEADER} must be one of {valid}, not {raw!r}", field=PRIORITY_HEADER) from None


def _flag(raw: str | None, name: str) -> bool:
    value = (raw or "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise InvalidRequest(f"{name} must be 1 or 0, not {raw!r}", field=name)


def _attempt(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return 1
    try:
        attempt = int(raw.strip())
    except ValueError:
        attempt = 0
    if attempt < 1:
        raise InvalidRequest(f"{ATTEMPT_HEADER} must be a whole number from 1, not {raw!r}", field=ATTEMPT_HEADER)
    return attempt
