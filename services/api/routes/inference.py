"""/v1: OpenAI-compatible inference, placed by a router over NATS.

The gateway only checks the body's shape, takes gpuplane's own fields out and forwards it; errors on these
paths use OpenAI's shape (``{"error": {...}}``) so OpenAI clients can read them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.background import BackgroundTask

from services.api.access import Principal, priority_allowed
from services.api.bodies import BodyProblem, parse_json
from services.api.deps import BusDep, GatewayState, PrincipalDep, StateDep
from services.api.metrics import gateway_metrics
from services.api.routes.router_state import loaded_on, router_state
from services.api.schemas import (
    ChatCompletionIn,
    CompletionIn,
    EmbeddingIn,
    ModelCardOut,
    ModelListOut,
    OpenAIErrorOut,
)
from shared.bus.base import Bus, Delivery, Subscription
from shared.contracts import InferenceKind, InferenceRequest, InferenceResult, Priority, ServiceName, StreamChunk
from shared.errors import (
    BusError,
    BusUnavailable,
    Forbidden,
    GpuplaneError,
    InvalidRequest,
    NoResponders,
    RemoteError,
    RequestTimeout,
)
from shared.subjects import stream_chunks

log = logging.getLogger("gpuplane.api.inference")

PRIORITY_HEADER = "X-Gpuplane-Priority"
CHUNK_GRACE_S = 5.0
"""How long to wait for chunks still on their way once the router has answered a streamed request."""

_EXCLUSIVE_GPU = re.compile(r"^(?:[^/\s]+/)?cuda:\d+$")


# --------------------------------------------------------------------------- errors in OpenAI's shape


def openai_error(
    status: int,
    message: str,
    *,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    retry_after: str | None = None,
) -> JSONResponse:
    headers = {"Retry-After": retry_after} if retry_after else None
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def retry_after(value: str | None, default_s: int) -> int:
    """Whole seconds to wait, at least 1: the router's hint when it gave a usable one, else ``default_s``."""
    try:
        seconds = float(value) if value is not None else float(default_s)
    except ValueError:
        seconds = float(default_s)
    return max(1, math.ceil(seconds)) if math.isfinite(seconds) else default_s


def error_response(exc: GpuplaneError, retry_after_s: int) -> JSONResponse:
    """The OpenAI-shaped answer to an error met while serving a /v1 request."""
    retry = str(retry_after_s)
    if isinstance(exc, InvalidRequest):
        return openai_error(400, str(exc), type_="invalid_request_error", param=exc.field)
    if isinstance(exc, Forbidden):
        return openai_error(403, str(exc), type_="permission_error", param=exc.field, code="forbidden")
    if isinstance(exc, RemoteError):
        msg, code = exc.remote_message, exc.code
        if code == "bad_request":
            return openai_error(400, msg, type_="invalid_request_error", param=exc.field)
        if code == "not_found":
            return openai_error(404, msg, type_="not_found_error", param=exc.field)
        if code == "overloaded":
            wait = str(retry_after(exc.context.get("retry_after_s"), retry_after_s))
            return openai_error(429, msg, type_="rate_limit_error", code=code, retry_after=wait)
        if code == "conflict":
            return openai_error(409, msg, type_="invalid_request_error", code=code)
        if code == "unavailable":
            return openai_error(503, msg, type_="server_error", code=code, retry_after=retry)
        return openai_error(500 if code == "internal" else 502, msg, type_="server_error", code=code)
    if isinstance(exc, NoResponders):
        return openai_error(503, "no router is running", type_="server_error", code="no_router", retry_after=retry)
    if isinstance(exc, RequestTimeout):
        return openai_error(504, str(exc), type_="server_error", code="timeout", retry_after=retry)
    if isinstance(exc, BusUnavailable):
        return openai_error(503, str(exc), type_="server_error", code="unavailable", retry_after=retry)
    if isinstance(exc, BusError):
        return openai_error(502, str(exc), type_="server_error", code="bad_gateway")
    return openai_error(500, str(exc), type_="server_error", code="internal")


class OpenAIRoute(APIRoute):
    """Answers every gpuplane error of its route in OpenAI's shape, dependencies' errors included, so the
    app's global handlers keep their own shape for the other paths."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except GpuplaneError as exc:
                state: GatewayState = request.app.state.gateway
                response = error_response(exc, state.settings.retry_after_s)
                if response.status_code >= 500:
                    log.warning("%s %s: %d %s", request.method, request.url.path, response.status_code, exc)
                return response
            except RequestValidationError as exc:
                # Only a malformed header or query can get here: bodies are checked by hand.
                first = exc.errors()[0] if exc.errors() else {}
                loc = first.get("loc") or ("request",)
                return openai_error(
                    400, str(first.get("msg", "invalid request")), type_="invalid_request_error", param=str(loc[-1])
                )

        return guarded


router = APIRouter(tags=["inference"], route_class=OpenAIRoute)

ANSWERS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorOut, "description": "The body is wrong; `error.param` names the field."},
    404: {"model": OpenAIErrorOut, "description": "No such model (or GPU for `exclusive_gpu`)."},
    429: {"model": OpenAIErrorOut, "description": "The router's queue is full; see Retry-After."},
    503: {"model": OpenAIErrorOut, "description": "No router is running, or no worker can serve now."},
    504: {"model": OpenAIErrorOut, "description": "No answer within GPUPLANE_INFERENCE_TIMEOUT_S."},
}


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The request body for OpenAPI, as the route reads it by hand."""
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}
    return {"requestBody": schema}


# --------------------------------------------------------------------------- the body


@dataclass(frozen=True)
class ParsedBody:
    """A /v1 body checked, with gpuplane's own fields taken out of what is forwarded."""

    model: str
    body: dict[str, Any]
    priority: Priority
    exclusive_gpu: str | None
    stream: bool


def _priority(value: object, where: str) -> Priority:
    if isinstance(value, str):
        try:
            return Priority(value.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(p.value for p in Priority)
    raise InvalidRequest(f"{where} must be one of {choices}, not {value!r}", field=where)


def _is_nonempty_text_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def parse_body(kind: InferenceKind, raw: object, priority_header: str | None = None) -> ParsedBody:
    """Check what the gateway relies on (the rest is the worker's to judge); ``InvalidRequest`` names the field.

    A ``priority`` in the body wins over the header.
    """
    if not isinstance(raw, dict):
        raise InvalidRequest("the request body must be a JSON object")
    body = dict(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model is required: a non-empty string (GET /v1/models lists them)", field="model")
    if kind is InferenceKind.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise InvalidRequest("messages is required: a non-empty list of message objects", field="messages")
    elif kind is InferenceKind.COMPLETION:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) and not (isinstance(prompt, list) and prompt):
            raise InvalidRequest("prompt is required: a string or a non-empty list", field="prompt")
    else:
        text = body.get("input")
        if not (isinstance(text, str) and text) and not _is_nonempty_text_list(text):
            raise InvalidRequest("input is required: a non-empty string or list of non-empty strings", field="input")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be true or false", field="stream")
    if stream and kind is InferenceKind.EMBEDDING:
        raise InvalidRequest("embeddings cannot be streamed", field="stream")

    priority = Priority.NORMAL
    if priority_header is not None:
        priority = _priority(priority_header, PRIORITY_HEADER)
    if "priority" in body:
        value = body.pop("priority")
        if value is not None:
            priority = _priority(value, "priority")
    exclusive = body.pop("exclusive_gpu", None)
    if exclusive is not None and not (isinstance(exclusive, str) and _EXCLUSIVE_GPU.match(exclusive)):
        raise InvalidRequest(
            f'exclusive_gpu must be "cuda:N" or "host/cuda:N", not {exclusive!r}', field="exclusive_gpu"
        )
    return ParsedBody(model=model, body=body, priority=priority, exclusive_gpu=exclusive, stream=stream)


async def _read_json(request: Request) -> object:
    try:
        return parse_json(await request.body())
    except BodyProblem as exc:
        raise InvalidRequest(str(exc), field=exc.field) from None


# --------------------------------------------------------------------------- answers


def _multi_host(state: GatewayState) -> bool:
    return len({inv.host for inv in state.read_model.inventories()}) > 1


def _gpu_header(state: GatewayState, host: str, device: str) -> str:
    return f"{host}/{device}" if _multi_host(state) else device


def header_text(text: str, limit: int = 300) -> str:
    """``text`` as a header value can carry it: printable ASCII on one line, at most ``limit`` characters."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def result_headers(state: GatewayState, result: InferenceResult) -> dict[str, str]:
    return {
        "X-Gpuplane-Gpu": _gpu_header(state, result.host, result.device),
        "X-Gpuplane-Worker": result.worker_id,
        "X-Gpuplane-Route": result.route.value,
        "X-Gpuplane-Reason": header_text(result.reason),
        "X-Gpuplane-Request-Id": result.request_id,
        "X-Gpuplane-Attempts": str(result.attempts),
        "X-Gpuplane-Queued-Ms": str(round(result.queued_s * 1000)),
    }


def chunk_headers(state: GatewayState, request_id: str, chunk: StreamChunk) -> dict[str, str]:
    headers = {
        "X-Gpuplane-Request-Id": request_id,
        "X-Gpuplane-Attempts": str(chunk.attempt),
        "Cache-Control": "no-cache",
    }
    if chunk.device is not None and chunk.host is not None:
        headers["X-Gpuplane-Gpu"] = _gpu_header(state, chunk.host, chunk.device)
    if chunk.worker_id is not None:
        headers["X-Gpuplane-Worker"] = chunk.worker_id
    if chunk.route is not None:
        headers["X-Gpuplane-Route"] = chunk.route.value
    return headers


def sse(data: object) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(message: str) -> str:
    return sse({"error": {"message": message, "type": "server_error"}})


@dataclass
class ChunkStream:
    """One streamed request: its chunk subscription and its bus request, closed exactly once."""

    sub: Subscription
    request: asyncio.Task[InferenceResult]
    chunks: asyncio.Queue[StreamChunk]
    closed: bool = False
    pending: dict[int, StreamChunk] = field(default_factory=dict)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.request.cancel()
        # Shielded: this also runs when the client went away and the response's scope is being cancelled.
        with anyio.CancelScope(shield=True):
            await self.sub.unsubscribe()
            await asyncio.wait({self.request})
        if not self.request.cancelled():
            self.request.exception()  # retrieved on purpose: a failure after the stream ended helps nobody

    async def next_chunk(self) -> StreamChunk | None:
        """The next chunk to arrive; None when the request ended and no chunk followed in time (the request's
        outcome then says why)."""
        if self.chunks.empty() and not self.request.done():
            getter = asyncio.ensure_future(self.chunks.get())
            try:
                await asyncio.wait({getter, self.request}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                got = getter.done()
                if not got:  # the request ended first, or this wait was cancelled
                    getter.cancel()
            if got:
                return getter.result()
        if not self.chunks.empty():
            return self.chunks.get_nowait()
        if self.request.cancelled() or self.request.exception() is not None:
            return None
        # Answered: chunks sent before the answer may still be on their way (handlers run concurrently).
        try:
            return await asyncio.wait_for(self.chunks.get(), CHUNK_GRACE_S)
        except TimeoutError:
            return None

    def failure(self) -> str:
        """Why the stream stopped short: an error chunk stuck behind a lost one, else the request's error."""
        stuck = next((c.error for _, c in sorted(self.pending.items()) if c.error is not None), None)
        if stuck is not None:
            return stuck
        if self.request.done() and not self.request.cancelled():
            exc = self.request.exception()
            if isinstance(exc, RemoteError):
                return exc.remote_message
            if exc is not None:
                return str(exc)
        return "the stream ended without its last chunk"

    async def events(self, first: StreamChunk) -> AsyncGenerator[str, None]:
        """Server-sent events in ``seq`` order, ending with ``[DONE]`` after the last chunk or an error."""
        try:
            chunk: StreamChunk | None = first
            next_seq = 0
            while chunk is not None:
                if chunk.seq >= next_seq:  # an earlier seq is a duplicate: already sent
                    self.pending[chunk.seq] = chunk
                while next_seq in self.pending:
                    ready = self.pending.pop(next_seq)
                    next_seq += 1
                    if ready.error is not None:
                        yield sse_error(ready.error)
                        yield SSE_DONE
                        return
                    if ready.data is not None:
                        yield sse(ready.data)
                    if ready.done:
                        yield SSE_DONE
                        return
                chunk = await self.next_chunk()
            yield sse_error(self.failure())
            yield SSE_DONE
        finally:
            await self.close()


async def _stream(state: GatewayState, bus: Bus, request: InferenceRequest) -> Response:
    """Subscribe to the chunks first, then ask; answer with the stream once its first chunk arrives, or with
    the error the router gave before any chunk."""
    subject = stream_chunks(ServiceName.API, state.instance, request.request_id)
    chunks: asyncio.Queue[StreamChunk] = asyncio.Queue()
    received = asyncio.Event()

    async def on_chunk(chunk: StreamChunk, _: Delivery) -> None:
        received.set()
        await chunks.put(chunk)

    sub = await bus.subscribe(subject, StreamChunk, on_chunk)
    ask = request.model_copy(update={"stream_subject": subject})
    # A lost answer is sent again only while nothing of it has arrived: two generations must not mix.
    task = asyncio.create_task(
        state.inflight.ask(bus, ask, may_retry=lambda: not received.is_set()), name=f"infer {request.request_id}"
    )
    stream = ChunkStream(sub, task, chunks)
    response: StreamingResponse | None = None
    try:
        first = await stream.next_chunk()
        if first is None:
            result = task.result()  # raises the router's error, if it gave one
            raise BusError(f"the router answered request {result.request_id} without streaming any chunk")
        response = StreamingResponse(
            stream.events(first),
            media_type="text/event-stream",
            headers=chunk_headers(state, request.request_id, first),
            # Also closes the stream when the client left before the body started (the generator never ran).
            background=BackgroundTask(stream.close),
        )
        return response
    finally:
        if response is None:  # an error, or this request cancelled: nothing will read the chunks
            await stream.close()


def count_usage(who: str, body: dict[str, Any] | None) -> None:
    """Tokens per key name, as the engine reported them in the answer's ``usage``."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return
    metrics = gateway_metrics()
    for field_name, counter in (
        ("prompt_tokens", metrics.key_prompt_tokens),
        ("completion_tokens", metrics.key_completion_tokens),
    ):
        value = usage.get(field_name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
            counter.labels(who).inc(value)


async def infer(
    kind: InferenceKind,
    request: Request,
    state: GatewayState,
    bus: Bus,
    principal: Principal,
    priority_header: str | None,
) -> Response:
    metrics = gateway_metrics()
    try:
        response = await _serve(kind, request, state, bus, principal, priority_header)
    except GpuplaneError:
        metrics.key_requests.labels(principal.name, "error").inc()
        raise
    metrics.key_requests.labels(principal.name, "ok").inc()
    return response


async def _serve(
    kind: InferenceKind,
    request: Request,
    state: GatewayState,
    bus: Bus,
    principal: Principal,
    priority_header: str | None,
) -> Response:
    parsed = parse_body(kind, await _read_json(request), priority_header)
    highest = principal.key.max_priority if principal.key else None
    if not priority_allowed(parsed.priority, highest):
        raise Forbidden(
            f"key {principal.name!r} may ask for priority {highest.value if highest else '?'} at most, "
            f"not {parsed.priority.value}",
            field="priority",
        )
    ask = InferenceRequest(
        request_id=uuid.uuid4().hex,
        kind=kind,
        model=parsed.model,
        body=parsed.body,
        priority=parsed.priority,
        exclusive_gpu=parsed.exclusive_gpu,
    )
    if parsed.stream:
        return await _stream(state, bus, ask)
    result = await state.inflight.ask(bus, ask)
    count_usage(principal.name, result.body)
    if result.body is None:
        raise BusError(f"the router answered request {result.request_id} without a body")
    return JSONResponse(result.body, headers=result_headers(state, result))


PriorityHeader = Annotated[
    str | None,
    Header(alias=PRIORITY_HEADER, description="high, normal or low; a `priority` field in the body wins."),
]


@router.post(
    "/v1/chat/completions",
    responses=ANSWERS,
    openapi_extra=_body_doc(ChatCompletionIn),
    summary="Chat completion (OpenAI-compatible)",
)
async def chat_completions(
    request: Request, state: StateDep, bus: BusDep, who: PrincipalDep, priority: PriorityHeader = None
) -> Response:
    """OpenAI's chat completion, served by the worker a router picks; `stream: true` answers with
    server-sent events. X-Gpuplane-Gpu, -Worker and -Route say who served it and why."""
    return await infer(InferenceKind.CHAT, request, state, bus, who, priority)


@router.post(
    "/v1/completions",
    responses=ANSWERS,
    openapi_extra=_body_doc(CompletionIn),
    summary="Text completion (OpenAI-compatible)",
)
async def completions(
    request: Request, state: StateDep, bus: BusDep, who: PrincipalDep, priority: PriorityHeader = None
) -> Response:
    """OpenAI's (legacy) text completion; `stream: true` answers with server-sent events."""
    return await infer(InferenceKind.COMPLETION, request, state, bus, who, priority)


@router.post(
    "/v1/embeddings",
    responses=ANSWERS,
    openapi_extra=_body_doc(EmbeddingIn),
    summary="Embeddings (OpenAI-compatible)",
)
async def embeddings(
    request: Request, state: StateDep, bus: BusDep, who: PrincipalDep, priority: PriorityHeader = None
) -> Response:
    """OpenAI's embeddings; a router may batch several requests into one worker call."""
    return await infer(InferenceKind.EMBEDDING, request, state, bus, who, priority)


@router.get("/v1/models", response_model=ModelListOut, responses=ANSWERS, summary="Models (OpenAI-compatible)")
async def list_models(bus: BusDep) -> ModelListOut:
    """Every model of every group the router knows, with the devices its group is loaded on now."""
    state = await router_state(bus)
    return ModelListOut(
        data=[
            ModelCardOut(
                id=model.id,
                group=group.group_id,
                kind=model.kind.value,
                loaded_on_devices=loaded_on(state, group.group_id),
            )
            for group in state.groups
            for model in group.models
        ]
    )
