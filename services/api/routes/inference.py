"""/v1: OpenAI-compatible inference, placed by the gateway's own router core and sent straight to an engine.

The gateway checks the body against the models that document it, takes gpuplane's own fields out and forwards
the rest (``services.api.dataplane``); errors on these paths use OpenAI's shape (``{"error": {...}}``) so
OpenAI clients can read them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from services.api.access import Principal, priority_allowed
from services.api.bodies import BodyProblem, model_problem, parse_json
from services.api.dataplane import body_bytes, open_stream, usage_of
from services.api.deps import DataPlaneDep, GatewayState, PrincipalDep, StateDep
from services.api.metrics import gateway_metrics
from services.api.routes.router_state import RouterStateDep, loaded_on
from services.api.schemas import (
    ChatCompletionIn,
    CompletionIn,
    EmbeddingIn,
    GpuplaneFieldsIn,
    ModelCardOut,
    ModelListOut,
    OpenAIErrorOut,
)
from services.router.core.lifecycle import Answer
from services.router.dispatcher import Dispatcher
from services.router.transports import StreamMeta
from shared.contracts import (
    InferenceKind,
    InferenceRequest,
    Priority,
    RouterState,
)
from shared.errors import (
    ERRORS,
    DeadlinePassed,
    Forbidden,
    GpuplaneError,
    InvalidRequest,
    NoResponders,
    NotFound,
    RemoteError,
    error_code,
)

log = logging.getLogger("gpuplane.api.inference")

PRIORITY_HEADER = "X-Gpuplane-Priority"

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
    """The OpenAI-shaped answer to an error met while serving a /v1 request, as the table ``ERRORS`` says."""
    kind = ERRORS[error_code(exc)]
    message = exc.remote_message if isinstance(exc, RemoteError) else str(exc)
    if isinstance(exc, NoResponders):
        message = "no router is running"  # the only responder a /v1 route asks; its subject means nothing to clients
    context: dict[str, str] = getattr(exc, "context", {})
    wait = str(retry_after(context.get("retry_after_s"), retry_after_s)) if kind.retry_after else None
    return openai_error(
        kind.openai_status,
        message,
        type_=kind.openai_type,
        param=getattr(exc, "field", None),
        code=kind.openai_code,
        retry_after=wait,
    )


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
                # Only a malformed header or path can get here: parse_body validates the bodies.
                first = exc.errors()[0] if exc.errors() else {}
                loc = first.get("loc") or ("request",)
                kind = ERRORS["bad_request"]
                message = str(first.get("msg", "invalid request"))
                return openai_error(kind.openai_status, message, type_=kind.openai_type, param=str(loc[-1]))

        return guarded


router = APIRouter(tags=["inference"], route_class=OpenAIRoute)

ANSWERS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorOut, "description": "The body is wrong; `error.param` names the field."},
    404: {"model": OpenAIErrorOut, "description": "No such model (or GPU for `exclusive_gpu`)."},
    429: {"model": OpenAIErrorOut, "description": "The router's queue is full; see Retry-After."},
    503: {"model": OpenAIErrorOut, "description": "No router is running, or no worker can serve now."},
    504: {"model": OpenAIErrorOut, "description": "No answer within GPUPLANE_INFERENCE_TIMEOUT_S (queueing included)."},
}


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The request body for OpenAPI, as ``parse_body`` validates it (the route reads the body itself)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    schema = _inline(schema, defs)
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": True}}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with each ``#/$defs/X`` replaced by X itself: in the OpenAPI document those refs would point at
    nothing (its definitions live under components, where an operation's extras cannot add any)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


# --------------------------------------------------------------------------- the body


@dataclass(frozen=True)
class ParsedBody:
    """A /v1 body checked, with gpuplane's own fields taken out of what is forwarded."""

    model: str
    body: dict[str, Any]
    priority: Priority
    exclusive_gpu: str | None
    stream: bool


BODY_MODELS: dict[InferenceKind, type[GpuplaneFieldsIn]] = {
    InferenceKind.CHAT: ChatCompletionIn,
    InferenceKind.COMPLETION: CompletionIn,
    InferenceKind.EMBEDDING: EmbeddingIn,
}
"""The model each kind's body must match (and OpenAPI shows)."""

GPUPLANE_FIELDS = frozenset({"priority", "exclusive_gpu"})
"""gpuplane's own fields: read here, never forwarded (an engine would refuse them, or read them its own way)."""


_PRIORITIES = {p.value: p for p in Priority}


def _priority(value: object, where: str) -> Priority:
    found = _PRIORITIES.get(value.strip().lower()) if isinstance(value, str) else None
    if found is not None:
        return found
    choices = ", ".join(p.value for p in Priority)
    raise InvalidRequest(f"{where} must be one of {choices}, not {value!r}", field=where)


def parse_body(kind: InferenceKind, raw: object, priority_header: str | None = None) -> ParsedBody:
    """Validate ``raw`` against its kind's model (``InvalidRequest`` names the field and what it allows) and
    take gpuplane's own fields out of it. A ``priority`` in the body wins over the header.

    What is forwarded is ``raw`` itself less those fields, not the model dumped again: fields the model does not
    name reach the engine exactly as sent, and nothing is spent re-serialising.
    """
    if not isinstance(raw, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = BODY_MODELS[kind]
    try:
        valid = model.model_validate(raw)
    except ValidationError as exc:
        problem = model_problem(exc, raw, model)
        raise InvalidRequest(problem.message, field=problem.field) from None
    if not valid.model.strip():
        raise InvalidRequest("model: must not be blank (GET /v1/models lists the models)", field="model")
    stream = raw.get("stream")
    if kind is InferenceKind.EMBEDDING and stream is not None and stream is not False:
        raise InvalidRequest("stream: embeddings cannot be streamed (leave it out, or false)", field="stream")

    priority = Priority.NORMAL
    if priority_header is not None:
        priority = _priority(priority_header, PRIORITY_HEADER)
    if valid.priority is not None:
        priority = _priority(valid.priority, "priority")
    exclusive = valid.exclusive_gpu
    if exclusive is not None and not _EXCLUSIVE_GPU.match(exclusive):
        raise InvalidRequest(
            f'exclusive_gpu must be "cuda:N" or "host/cuda:N", not {exclusive!r}', field="exclusive_gpu"
        )
    body = dict(raw)  # a copy: the caller's dict stays as it was
    for name in GPUPLANE_FIELDS:
        body.pop(name, None)
    return ParsedBody(model=valid.model, body=body, priority=priority, exclusive_gpu=exclusive, stream=stream is True)


# --------------------------------------------------------------------------- answers


def _multi_host(state: GatewayState) -> bool:
    return len({inv.host for inv in state.read_model.inventories()}) > 1


def _gpu_header(state: GatewayState, host: str, device: str) -> str:
    return f"{host}/{device}" if _multi_host(state) else device


def header_text(text: str, limit: int = 300) -> str:
    """``text`` as a header value can carry it: printable ASCII on one line, at most ``limit`` characters."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def engine_of(state: GatewayState, worker_id: str) -> str:
    """What answered, as the worker reports it: the engine's own kind (``llamacpp``, ``vllm``...) where it says,
    else the worker's backend (``simulated``, ``openai``); ``unknown`` for a worker gone from view."""
    record = state.dataplane.pools.workers.get(worker_id) if state.dataplane is not None else None
    if record is None:
        return "unknown"
    status = record.status
    return status.engine.kind if status.engine is not None and status.engine.kind != "openai" else status.backend


def result_headers(state: GatewayState, result: Answer) -> dict[str, str]:
    return {
        "X-Gpuplane-Gpu": _gpu_header(state, result.host, result.device),
        "X-Gpuplane-Worker": result.worker_id,
        "X-Gpuplane-Engine": engine_of(state, result.worker_id),
        "X-Gpuplane-Route": result.route.value,
        "X-Gpuplane-Reason": header_text(result.reason),
        "X-Gpuplane-Request-Id": result.request_id,
        "X-Gpuplane-Attempts": str(result.attempts),
        "X-Gpuplane-Queued-Ms": str(round(result.queued_s * 1000)),
    }


def stream_headers(state: GatewayState, meta: StreamMeta) -> dict[str, str]:
    return {
        "X-Gpuplane-Gpu": _gpu_header(state, meta.host, meta.device),
        "X-Gpuplane-Worker": meta.worker_id,
        "X-Gpuplane-Engine": engine_of(state, meta.worker_id),
        "X-Gpuplane-Route": meta.route.value,
        "X-Gpuplane-Request-Id": meta.request_id,
        "X-Gpuplane-Attempts": str(meta.attempt),
        "Cache-Control": "no-cache",
    }


def count_usage(who: str, usage: dict[str, Any] | None) -> None:
    """Tokens per key name, as the engine reported them in the answer's ``usage``."""
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


@dataclass(frozen=True)
class Reply:
    """A /v1 answer ready to send: a whole body, or server-sent events from a stream's request."""

    headers: dict[str, str]
    body: bytes = b""
    events: AsyncIterator[bytes] | None = None
    request: asyncio.Task[Answer] | None = None
    """A stream's request: cancelled if the client leaves before it ends."""


async def reply(
    kind: InferenceKind,
    raw: bytes,
    state: GatewayState,
    plane: Dispatcher,
    principal: Principal,
    priority_header: str | None,
) -> Reply:
    """Check, place and answer one /v1 request (``raw`` is its body); errors are typed ``GpuplaneError``s."""
    metrics = gateway_metrics()
    try:
        answer = await _reply(kind, raw, state, plane, principal, priority_header)
    except GpuplaneError:
        metrics.key_requests.labels(principal.name, "error").inc()
        raise
    metrics.key_requests.labels(principal.name, "ok").inc()
    return answer


def read_json(raw: bytes) -> object:
    try:
        return parse_json(raw)
    except BodyProblem as exc:
        raise InvalidRequest(str(exc), field=exc.field) from None


async def _reply(
    kind: InferenceKind,
    raw: bytes,
    state: GatewayState,
    plane: Dispatcher,
    principal: Principal,
    priority_header: str | None,
) -> Reply:
    parsed = parse_body(kind, read_json(raw), priority_header)
    highest = principal.key.max_priority if principal.key else None
    if not priority_allowed(parsed.priority, highest):
        raise Forbidden(
            f"key {principal.name!r} may ask for priority {highest.value if highest else '?'} at most, "
            f"not {parsed.priority.value}",
            field="priority",
        )
    # Every field is checked already (the body by its model): built without validating it all again.
    ask = InferenceRequest.model_construct(
        request_id=uuid.uuid4().hex,
        kind=kind,
        model=parsed.model,
        body=parsed.body,
        priority=parsed.priority,
        exclusive_gpu=parsed.exclusive_gpu,
    )
    limit_s = state.settings.inference_timeout_s
    if parsed.stream:
        try:
            async with asyncio.timeout(limit_s):
                sink, task = await open_stream(plane, ask)
        except TimeoutError:
            raise DeadlinePassed("GPUPLANE_INFERENCE_TIMEOUT_S, to the first chunk", limit_s) from None
        assert sink.meta is not None
        return Reply(stream_headers(state, sink.meta), events=sink.events(), request=task)
    try:
        async with asyncio.timeout(limit_s):
            answer = await plane.submit(ask)
    except TimeoutError:
        raise DeadlinePassed("GPUPLANE_INFERENCE_TIMEOUT_S", limit_s) from None
    raw_answer = body_bytes(answer)
    count_usage(principal.name, usage_of(raw_answer))
    return Reply(result_headers(state, answer), body=raw_answer)


async def infer(
    kind: InferenceKind,
    request: Request,
    state: GatewayState,
    plane: Dispatcher,
    principal: Principal,
    priority_header: str | None,
) -> Response:
    """The FastAPI route's way; the gateway's fast path (``services.api.fastpath``) answers the same
    requests without FastAPI's routing, with the same ``reply``."""
    answer = await reply(kind, await request.body(), state, plane, principal, priority_header)
    if answer.events is not None:
        return StreamingResponse(answer.events, media_type="text/event-stream", headers=answer.headers)
    return Response(answer.body, media_type="application/json", headers=answer.headers)


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
    request: Request, state: StateDep, plane: DataPlaneDep, who: PrincipalDep, priority: PriorityHeader = None
) -> Response:
    """OpenAI's chat completion, served by the worker a router picks; `stream: true` answers with
    server-sent events. X-Gpuplane-Gpu, -Worker and -Route say who served it and why."""
    return await infer(InferenceKind.CHAT, request, state, plane, who, priority)


@router.post(
    "/v1/completions",
    responses=ANSWERS,
    openapi_extra=_body_doc(CompletionIn),
    summary="Text completion (OpenAI-compatible)",
)
async def completions(
    request: Request, state: StateDep, plane: DataPlaneDep, who: PrincipalDep, priority: PriorityHeader = None
) -> Response:
    """OpenAI's (legacy) text completion; `stream: true` answers with server-sent events."""
    return await infer(InferenceKind.COMPLETION, request, state, plane, who, priority)


@router.post(
    "/v1/embeddings",
    responses=ANSWERS,
    openapi_extra=_body_doc(EmbeddingIn),
    summary="Embeddings (OpenAI-compatible)",
)
async def embeddings(
    request: Request, state: StateDep, plane: DataPlaneDep, who: PrincipalDep, priority: PriorityHeader = None
) -> Response:
    """OpenAI's embeddings; a router may batch several requests into one worker call."""
    return await infer(InferenceKind.EMBEDDING, request, state, plane, who, priority)


class FirstListed:
    """When this gateway first listed each model, in Unix seconds: the ``created`` of its model card.

    Not the catalog file's mtime: that would re-date every model whenever any group changes, and models that
    workers serve outside the catalog have no file at all. The first time this gateway process listed the model
    is stable for as long as the process runs (a restarted gateway, or another one, dates the models anew).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._at: dict[str, int] = {}

    def created(self, model: str) -> int:
        return self._at.setdefault(model, int(self._clock()))


FIRST_LISTED = FirstListed()

KNOWN_SHOWN = 20
"""Model names a 404 lists at most (the rest are counted)."""


def model_cards(state: RouterState, listed: FirstListed) -> list[ModelCardOut]:
    """A card per model of every group the router knows, with the devices its group is loaded on now."""
    return [
        ModelCardOut(
            id=model.id,
            created=listed.created(model.id),
            group=group.group_id,
            kind=model.kind.value,
            loaded_on_devices=loaded_on(state, group.group_id),
        )
        for group in state.groups
        for model in group.models
    ]


def unknown_model(model: str, known: list[str]) -> NotFound:
    """OpenAI's "model does not exist", naming the models there are."""
    names = ", ".join(known[:KNOWN_SHOWN]) or "none"
    if len(known) > KNOWN_SHOWN:
        names += f" and {len(known) - KNOWN_SHOWN} more"
    return NotFound(f"The model {model!r} does not exist; known models: {names} (GET /v1/models)", field="model")


@router.get("/v1/models", response_model=ModelListOut, responses=ANSWERS, summary="Models (OpenAI-compatible)")
async def list_models(view: RouterStateDep) -> ModelListOut:
    """Every model of every group the router knows, with the devices its group is loaded on now."""
    return ModelListOut(data=model_cards(view, FIRST_LISTED))


@router.get(
    "/v1/models/{model:path}", response_model=ModelCardOut, responses=ANSWERS, summary="Model (OpenAI-compatible)"
)
async def retrieve_model(model: str, view: RouterStateDep) -> ModelCardOut:
    """One model's card; 404 names the models there are. The id may hold slashes (``org/name``)."""
    cards = model_cards(view, FIRST_LISTED)
    card = next((c for c in cards if c.id == model), None)
    if card is None:
        raise unknown_model(model, [c.id for c in cards])
    return card
