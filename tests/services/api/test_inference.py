"""/v1 (OpenAI-compatible) through the gateway to a fake router on the in-memory bus: bodies, headers,
gpuplane's own fields, OpenAI-shaped errors, and streamed answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from services.api.deps import GatewayState
from services.api.routes import inference
from services.api.routes.inference import ChunkStream, header_text, parse_body, retry_after
from shared.bus.base import Delivery
from shared.bus.memory import MemoryBus
from shared.contracts import (
    InferenceKind,
    InferenceRequest,
    InferenceResult,
    Inventory,
    InventorySource,
    Priority,
    Route,
    RouterHeld,
    RouterHeldQuery,
    RouterStateRequest,
    StreamChunk,
)
from shared.errors import (
    GpuplaneError,
    InvalidRequest,
    NotFound,
    OperationFailed,
    Overloaded,
)
from shared.subjects import ROUTER_HELD, ROUTER_INFER, ROUTER_STATE, inventory
from tests.builders import make_gpu
from tests.services.api.gateway import gateway_settings, running_gateway
from tests.services.api.test_router_state import FakeStateRouter, router_state, worker

CHAT = {"model": "qwen-0.5b", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"message": {"content": "hello"}}]}

Behaviour = Callable[[InferenceRequest, MemoryBus], Awaitable[InferenceResult]]


def result_for(req: InferenceRequest, body: dict[str, Any] | None = ANSWER, **changes: Any) -> InferenceResult:
    fields: dict[str, Any] = {
        "request_id": req.request_id,
        "body": body,
        "worker_id": "w1",
        "device": "cuda:1",
        "host": "box",
        "route": Route.AFFINITY,
        "group": "chat-small",
        "reason": "group loaded",
        "attempts": 2,
        "queued_s": 0.0123,
    }
    return InferenceResult(**(fields | changes))


async def answer(req: InferenceRequest, _: MemoryBus) -> InferenceResult:
    return result_for(req)


def raising(error: GpuplaneError) -> Behaviour:
    async def behave(_: InferenceRequest, __: MemoryBus) -> InferenceResult:
        raise error

    return behave


def chunk(seq: int, text: str | None = None, **changes: Any) -> StreamChunk:
    """Chunk ``seq`` of request "r" (the fake router sets the real request id); seq 0 names the worker."""
    fields: dict[str, Any] = {"request_id": "r", "seq": seq}
    if text is not None:
        fields["data"] = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": text}}]}
    if seq == 0:
        fields |= {"worker_id": "w0", "device": "cuda:0", "host": "box", "route": Route.LEAST_LOADED}
    return StreamChunk(**(fields | changes))


def streaming(*chunks: StreamChunk, then: GpuplaneError | None = None) -> Behaviour:
    """Publish ``chunks`` in the order given to the request's stream subject, then answer (or fail)."""

    async def behave(req: InferenceRequest, bus: MemoryBus) -> InferenceResult:
        assert req.stream_subject is not None
        for c in chunks:
            await bus.publish(req.stream_subject, c.model_copy(update={"request_id": req.request_id}))
        if then is not None:
            raise then
        return result_for(req, body=None, worker_id="w0", device="cuda:0")

    return behave


@dataclass
class FakeRouter:
    """Answers ROUTER_INFER as ``behave`` says, keeping what it was asked."""

    bus: MemoryBus
    behave: Behaviour = answer
    seen: list[InferenceRequest] = field(default_factory=list)

    async def handle(self, req: InferenceRequest, _: Delivery) -> InferenceResult:
        self.seen.append(req)
        return await self.behave(req, self.bus)


@dataclass
class Gateway:
    client: httpx.AsyncClient
    bus: MemoryBus
    state: GatewayState
    router: FakeRouter
    background: asyncio.Task[None] | None = None

    async def start_router(self) -> None:
        await self.bus.subscribe(ROUTER_INFER, InferenceRequest, self.router.handle)


@pytest.fixture
async def gateway(memory_bus: MemoryBus) -> AsyncIterator[Gateway]:
    async with running_gateway(memory_bus) as (app, client):
        gw = Gateway(client, memory_bus, app.state.gateway, FakeRouter(memory_bus))
        await gw.start_router()
        yield gw
        if gw.background is not None:
            await gw.background


@pytest.fixture
async def no_router(memory_bus: MemoryBus) -> AsyncIterator[httpx.AsyncClient]:
    async with running_gateway(memory_bus) as (_, client):
        yield client


def openai_error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


def sse_data(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line]


# --------------------------------------------------------------------------- answers


async def test_chat_answers_the_routers_body_with_who_served_it(gateway: Gateway) -> None:
    r = await gateway.client.post("/v1/chat/completions", json=CHAT)

    assert r.status_code == 200
    assert r.json() == ANSWER
    (req,) = gateway.router.seen
    assert req.kind is InferenceKind.CHAT and req.model == "qwen-0.5b" and req.body == CHAT
    assert req.priority is Priority.NORMAL and req.exclusive_gpu is None and req.stream_subject is None
    assert {k: v for k, v in r.headers.items() if k.startswith("x-gpuplane")} == {
        "x-gpuplane-gpu": "cuda:1",
        "x-gpuplane-worker": "w1",
        "x-gpuplane-route": "affinity",
        "x-gpuplane-reason": "group loaded",
        "x-gpuplane-request-id": req.request_id,
        "x-gpuplane-attempts": "2",
        "x-gpuplane-queued-ms": "12",
    }


@pytest.mark.parametrize(
    ("reason", "header"),
    [("group loaded", "group loaded"), ("soonest → here\nnext", "soonest ? here?next"), ("x" * 400, "x" * 297 + "...")],
)
def test_the_reason_header_is_one_printable_line(reason: str, header: str) -> None:
    assert header_text(reason) == header


@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        ("/v1/completions", {"model": "m", "prompt": "once upon"}, InferenceKind.COMPLETION),
        ("/v1/embeddings", {"model": "bge-m3", "input": ["a", "b"]}, InferenceKind.EMBEDDING),
        ("/v1/embeddings", {"model": "bge-m3", "input": "a"}, InferenceKind.EMBEDDING),
    ],
)
async def test_completions_and_embeddings_are_forwarded_with_their_kind(
    gateway: Gateway, path: str, body: dict[str, Any], kind: InferenceKind
) -> None:
    r = await gateway.client.post(path, json=body)

    assert r.status_code == 200
    (req,) = gateway.router.seen
    assert req.kind is kind and req.body == body


async def test_gpuplane_fields_are_taken_out_of_the_body_and_set_on_the_request(gateway: Gateway) -> None:
    body = {**CHAT, "temperature": 0.2, "priority": "high", "exclusive_gpu": "box/cuda:1"}

    r = await gateway.client.post("/v1/chat/completions", json=body)

    assert r.status_code == 200
    (req,) = gateway.router.seen
    assert req.body == {**CHAT, "temperature": 0.2}
    assert req.priority is Priority.HIGH and req.exclusive_gpu == "box/cuda:1"


@pytest.mark.parametrize(
    ("header", "in_body", "expected"),
    [
        (None, None, Priority.NORMAL),
        ("low", None, Priority.LOW),
        (" HIGH ", None, Priority.HIGH),
        ("low", "high", Priority.HIGH),  # the body wins
    ],
)
async def test_priority_comes_from_the_header_or_the_body(
    gateway: Gateway, header: str | None, in_body: str | None, expected: Priority
) -> None:
    body = CHAT if in_body is None else {**CHAT, "priority": in_body}
    headers = {} if header is None else {"X-Gpuplane-Priority": header}

    r = await gateway.client.post("/v1/chat/completions", json=body, headers=headers)

    assert r.status_code == 200
    assert gateway.router.seen[0].priority is expected


async def test_the_gpu_header_names_the_host_when_several_hosts_reported(gateway: Gateway) -> None:
    for host in ("a", "box"):
        await gateway.bus.publish(
            inventory(host), Inventory(host=host, source=InventorySource.SIMULATED, gpus=(make_gpu(0),))
        )
    await gateway.bus.settle()

    r = await gateway.client.post("/v1/chat/completions", json=CHAT)

    assert r.headers["X-Gpuplane-Gpu"] == "box/cuda:1"


# --------------------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": CHAT["messages"]}, "model"),
        ("/v1/chat/completions", {**CHAT, "model": " "}, "model"),
        ("/v1/chat/completions", {**CHAT, "model": 7}, "model"),
        ("/v1/chat/completions", {"model": "m"}, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": ["hi"]}, "messages"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {**CHAT, "priority": "urgent"}, "priority"),
        ("/v1/chat/completions", {**CHAT, "exclusive_gpu": "gpu0"}, "exclusive_gpu"),
        ("/v1/chat/completions", {**CHAT, "exclusive_gpu": 0}, "exclusive_gpu"),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": []}, "prompt"),
        ("/v1/embeddings", {"model": "m"}, "input"),
        ("/v1/embeddings", {"model": "m", "input": ""}, "input"),
        ("/v1/embeddings", {"model": "m", "input": []}, "input"),
        ("/v1/embeddings", {"model": "m", "input": ["a", 3]}, "input"),
        ("/v1/embeddings", {"model": "m", "input": "a", "stream": True}, "stream"),
        ("/v1/chat/completions", ["not", "an", "object"], None),
    ],
)
async def test_a_bad_body_is_400_in_openai_shape_naming_the_field(
    gateway: Gateway, path: str, body: object, param: str | None
) -> None:
    r = await gateway.client.post(path, json=body)

    assert r.status_code == 400
    error = openai_error(r)
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] is None
    if param is not None:
        assert param in error["message"]
    assert gateway.router.seen == []


async def test_a_body_that_is_not_json_is_400(gateway: Gateway) -> None:
    r = await gateway.client.post(
        "/v1/chat/completions", content=b"{model:", headers={"Content-Type": "application/json"}
    )

    assert r.status_code == 400
    assert "not valid JSON" in openai_error(r)["message"]


async def test_an_invalid_priority_header_is_400_naming_it(gateway: Gateway) -> None:
    r = await gateway.client.post("/v1/chat/completions", json=CHAT, headers={"X-Gpuplane-Priority": "asap"})

    assert r.status_code == 400
    assert openai_error(r)["param"] == "X-Gpuplane-Priority"


def test_parse_body_keeps_stream_and_unknown_fields() -> None:
    parsed = parse_body(InferenceKind.CHAT, {**CHAT, "stream": True, "n": 2, "priority": None})

    assert parsed.stream is True and parsed.priority is Priority.NORMAL
    assert parsed.body == {**CHAT, "stream": True, "n": 2}


def test_parse_body_does_not_change_what_it_was_given() -> None:
    raw = {**CHAT, "priority": "low"}

    parse_body(InferenceKind.CHAT, raw)

    assert raw["priority"] == "low"


def test_parse_body_errors_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(InferenceKind.COMPLETION, {"model": "m", "prompt": None})
    assert caught.value.field == "prompt"


# --------------------------------------------------------------------------- the router's errors


@pytest.mark.parametrize(
    ("error", "status", "type_", "param", "retry"),
    [
        (Overloaded("queue full", retry_after_s=3), 429, "rate_limit_error", None, "3"),
        (NotFound("no model x", field="model"), 404, "not_found_error", "model", None),
        (InvalidRequest("max_tokens too large", field="max_tokens"), 400, "invalid_request_error", "max_tokens", None),
        (GpuplaneError("every worker is down"), 503, "server_error", None, "5"),
        (OperationFailed("the worker crashed"), 500, "server_error", None, None),
    ],
    ids=["overloaded", "not_found", "bad_request", "unavailable", "internal"],
)
async def test_router_errors_are_openai_shaped_with_their_status(
    gateway: Gateway, error: GpuplaneError, status: int, type_: str, param: str | None, retry: str | None
) -> None:
    gateway.router.behave = raising(error)

    r = await gateway.client.post("/v1/chat/completions", json=CHAT)

    assert r.status_code == status
    body = openai_error(r)
    assert body["message"] == str(error) and body["type"] == type_ and body["param"] == param
    assert r.headers.get("Retry-After") == retry


async def test_no_router_is_503_in_openai_shape(no_router: httpx.AsyncClient) -> None:
    r = await no_router.post("/v1/chat/completions", json=CHAT)

    assert r.status_code == 503
    assert openai_error(r)["message"] == "no router is running"
    assert r.headers["Retry-After"] == "5"


async def test_a_router_that_does_not_answer_in_time_is_504(gateway: Gateway) -> None:
    gateway.state.settings = gateway_settings(inference_timeout_s=0.05)

    async def slow(req: InferenceRequest, _: MemoryBus) -> InferenceResult:
        await asyncio.sleep(1)
        return result_for(req)

    gateway.router.behave = slow

    r = await gateway.client.post("/v1/embeddings", json={"model": "m", "input": "a"})

    assert r.status_code == 504
    assert openai_error(r)["code"] == "timeout"


@pytest.mark.parametrize(("hint", "expected"), [("3", 3), ("0", 1), ("2.2", 3), (None, 5), ("soon", 5), ("inf", 5)])
def test_retry_after_is_whole_seconds_of_at_least_one(hint: str | None, expected: int) -> None:
    assert retry_after(hint, 5) == expected


# --------------------------------------------------------------------------- streaming


async def test_a_stream_sends_chunks_in_seq_order_then_done_with_headers_from_the_first(gateway: Gateway) -> None:
    # seq 2 overtakes seq 1 on the way: the gateway puts them back in order.
    gateway.router.behave = streaming(chunk(0, "Hel"), chunk(2, "!"), chunk(1, "lo"), chunk(3, done=True))

    r = await gateway.client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-Gpuplane-Gpu"] == "cuda:0"
    assert r.headers["X-Gpuplane-Worker"] == "w0"
    assert r.headers["X-Gpuplane-Route"] == "least-loaded"
    (req,) = gateway.router.seen
    assert r.headers["X-Gpuplane-Request-Id"] == req.request_id
    assert req.stream_subject is not None and gateway.state.instance in req.stream_subject
    assert req.body["stream"] is True
    events = sse_data(r.text)
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == ["Hel", "lo", "!"]


async def test_an_error_chunk_ends_the_stream_with_an_error_event(gateway: Gateway) -> None:
    gateway.router.behave = streaming(chunk(0, "Hel"), chunk(1, error="the worker died"))

    r = await gateway.client.post("/v1/completions", json={"model": "m", "prompt": "p", "stream": True})

    assert r.status_code == 200
    events = sse_data(r.text)
    assert events[1:] == ['{"error":{"message":"the worker died","type":"server_error"}}', "[DONE]"]


async def test_a_router_failing_mid_stream_ends_it_with_an_error_event(gateway: Gateway) -> None:
    gateway.router.behave = streaming(chunk(0, "Hel"), then=OperationFailed("lost the worker"))

    r = await gateway.client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert r.status_code == 200
    events = sse_data(r.text)
    assert json.loads(events[-2]) == {"error": {"message": "lost the worker", "type": "server_error"}}
    assert events[-1] == "[DONE]"


async def test_an_error_behind_a_lost_chunk_is_still_reported(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference, "CHUNK_GRACE_S", 0.05)
    gateway.router.behave = streaming(chunk(0, "Hel"), chunk(2, error="the worker died"))

    r = await gateway.client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    events = sse_data(r.text)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hel"
    assert json.loads(events[1]) == {"error": {"message": "the worker died", "type": "server_error"}}
    assert events[2:] == ["[DONE]"]


@pytest.mark.parametrize(
    ("error", "status"),
    [(Overloaded("queue full", retry_after_s=3), 429), (NotFound("no model m", field="model"), 404)],
)
async def test_an_error_before_any_chunk_is_a_plain_http_error(
    gateway: Gateway, error: GpuplaneError, status: int
) -> None:
    gateway.router.behave = streaming(then=error)

    r = await gateway.client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert r.status_code == status
    assert openai_error(r)["message"] == str(error)


async def test_a_stream_with_no_router_is_503(no_router: httpx.AsyncClient) -> None:
    r = await no_router.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert r.status_code == 503
    assert openai_error(r)["message"] == "no router is running"


async def test_chunks_that_arrive_after_the_routers_answer_are_still_streamed(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference, "CHUNK_GRACE_S", 1.0)

    async def answer_first(req: InferenceRequest, bus: MemoryBus) -> InferenceResult:
        async def later() -> None:
            await asyncio.sleep(0.05)
            await streaming(chunk(0, "late"), chunk(1, done=True))(req, bus)

        gateway.background = asyncio.create_task(later())
        return result_for(req, body=None)

    gateway.router.behave = answer_first

    r = await gateway.client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert r.status_code == 200 and r.headers["X-Gpuplane-Worker"] == "w0"
    assert len(sse_data(r.text)) == 2 and sse_data(r.text)[-1] == "[DONE]"


async def test_an_answer_without_chunks_or_body_is_502(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "CHUNK_GRACE_S", 0.05)
    gateway.router.behave = lambda req, _: _result(result_for(req, body=None))

    streamed = await gateway.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    plain = await gateway.client.post("/v1/chat/completions", json=CHAT)

    for r in (streamed, plain):
        assert r.status_code == 502
        assert "without" in openai_error(r)["message"]


async def _result(result: InferenceResult) -> InferenceResult:
    return result


@dataclass
class RecordingSubscription:
    unsubscribed: bool = False

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


async def test_closing_a_stream_early_unsubscribes_and_cancels_the_request() -> None:
    """What happens when the client goes away: the response stops iterating and closes the generator."""

    async def never() -> InferenceResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    request = asyncio.create_task(never())
    sub = RecordingSubscription()
    stream = ChunkStream(sub, request, asyncio.Queue())
    events = stream.events(chunk(0, "Hel"))

    assert json.loads((await anext(events)).removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hel"
    await events.aclose()

    assert sub.unsubscribed and request.cancelled()


# --------------------------------------------------------------------------- /v1/models


async def test_models_lists_every_model_with_its_group_and_where_it_is_loaded(gateway: Gateway) -> None:
    state = router_state(workers=(worker("w0", 0, loaded=("embed",)), worker("w1", 1, loaded=("embed",))))
    await gateway.bus.subscribe(ROUTER_STATE, RouterStateRequest, FakeStateRouter(state).handle)

    r = await gateway.client.get("/v1/models")

    assert r.status_code == 200
    assert r.json() == {
        "object": "list",
        "data": [
            {
                "id": "qwen-0.5b",
                "object": "model",
                "created": 0,
                "owned_by": "gpuplane",
                "group": "chat-small",
                "kind": "chat",
                "loaded_on_devices": [],
            },
            {
                "id": "bge-m3",
                "object": "model",
                "created": 0,
                "owned_by": "gpuplane",
                "group": "embed",
                "kind": "embedding",
                "loaded_on_devices": ["cuda:0", "cuda:1"],
            },
            {
                "id": "e5-large",
                "object": "model",
                "created": 0,
                "owned_by": "gpuplane",
                "group": "embed",
                "kind": "embedding",
                "loaded_on_devices": ["cuda:0", "cuda:1"],
            },
        ],
    }


async def test_models_with_no_router_is_503_in_openai_shape(no_router: httpx.AsyncClient) -> None:
    r = await no_router.get("/v1/models")

    assert r.status_code == 503
    assert openai_error(r)["message"] == "no router is running"


async def test_other_paths_keep_the_gateways_own_error_shape(no_router: httpx.AsyncClient) -> None:
    r = await no_router.get("/api/models")

    assert r.status_code == 503 and set(r.json()) == {"detail"}


async def test_the_openapi_document_shows_the_bodies_read_by_hand(gateway: Gateway) -> None:
    paths = (await gateway.client.get("/openapi.json")).json()["paths"]

    chat = paths["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages"} <= set(body["required"]) and "exclusive_gpu" in body["properties"]
    assert any(p["name"] == "X-Gpuplane-Priority" for p in chat["parameters"])
    assert {"/v1/completions", "/v1/embeddings", "/v1/models", "/api/gpu_stats", "/api/models", "/api/queue"} <= set(
        paths
    )


# --------------------------------------------------------------------------- lost answers


@dataclass
class LossyRouter:
    """Loses the answer to the first ``lose`` requests (as a router restart or NATS outage would): it never
    answers them and no longer holds them; answers the rest."""

    lose: int
    latency_s: float = 0.01
    held: set[str] = field(default_factory=set)
    seen: list[str] = field(default_factory=list)

    async def handle(self, req: InferenceRequest, _: Delivery) -> InferenceResult:
        self.seen.append(req.request_id)
        if len(self.seen) <= self.lose:
            await asyncio.Event().wait()
        self.held.add(req.request_id)
        try:
            await asyncio.sleep(self.latency_s)
            return result_for(req)
        finally:
            self.held.discard(req.request_id)

    async def on_held(self, query: RouterHeldQuery, _: Delivery) -> RouterHeld:
        return RouterHeld(router="r1", request_ids=tuple(r for r in query.request_ids if r in self.held))


FAST_LOSS = {"answer_check_interval_s": 0.05, "answer_check_after_s": 0.05, "answer_grace_s": 0.05}


@asynccontextmanager
async def lossy_gateway(bus: MemoryBus, router: LossyRouter, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    await bus.subscribe(ROUTER_INFER, InferenceRequest, router.handle)
    await bus.subscribe(ROUTER_HELD, RouterHeldQuery, router.on_held)
    async with running_gateway(bus, gateway_settings(**FAST_LOSS, **settings)) as (_, client):
        yield client


async def test_a_lost_answer_is_asked_for_once_more(memory_bus: MemoryBus) -> None:
    router = LossyRouter(lose=1)
    async with lossy_gateway(memory_bus, router) as client:
        r = await asyncio.wait_for(client.post("/v1/chat/completions", json=CHAT), 5)
    assert r.status_code == 200
    assert len(router.seen) == 2 and router.seen[0] == router.seen[1]  # the same request, sent again


async def test_an_answer_lost_twice_is_a_503_with_retry_after_not_a_hang(memory_bus: MemoryBus) -> None:
    router = LossyRouter(lose=2)
    async with lossy_gateway(memory_bus, router, lost_request_bound_s=3) as client:
        started = asyncio.get_running_loop().time()
        r = await asyncio.wait_for(client.post("/v1/chat/completions", json=CHAT), 5)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert "was lost" in openai_error(r)["message"]
    assert asyncio.get_running_loop().time() - started < 3


async def test_an_answer_held_by_a_router_is_waited_for(memory_bus: MemoryBus) -> None:
    """Slow is not lost: a router that still holds the request is left to answer."""
    router = LossyRouter(lose=0, latency_s=0.5)
    async with lossy_gateway(memory_bus, router) as client:
        r = await asyncio.wait_for(client.post("/v1/chat/completions", json=CHAT), 5)
    assert r.status_code == 200 and len(router.seen) == 1
