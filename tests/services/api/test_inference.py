"""/v1 (OpenAI-compatible) through the gateway to a fake router on the in-memory bus: bodies, headers,
gpuplane's own fields, OpenAI-shaped errors, and streamed answers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.api.deps import GatewayState
from services.api.routes import router_state as router_state_route
from services.api.routes.inference import (
    KNOWN_SHOWN,
    FirstListed,
    error_response,
    header_text,
    parse_body,
    retry_after,
    unknown_model,
)
from shared.bus.memory import MemoryBus
from shared.contracts import (
    GroupInfo,
    InferenceKind,
    ModelInfo,
    Priority,
    RouterState,
)
from shared.errors import (
    BusError,
    BusUnavailable,
    ConfigError,
    Conflict,
    ContractError,
    Forbidden,
    GpuplaneError,
    InvalidRequest,
    NoResponders,
    NotFound,
    OperationFailed,
    Overloaded,
    RemoteError,
    RequestTimeout,
)
from tests.services.api.gateway import client_for, running_gateway
from tests.services.api.test_router_state import GROUPS, router_state, worker
from tests.services.router.fakes import FakeWorker

CHAT = {"model": "qwen-0.5b", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"message": {"content": "hello"}}]}


@dataclass
class Gateway:
    client: httpx.AsyncClient
    bus: MemoryBus
    state: GatewayState


@pytest.fixture
async def gateway(memory_bus: MemoryBus) -> AsyncIterator[Gateway]:
    async with running_gateway(memory_bus) as (app, client):
        yield Gateway(client, memory_bus, app.state.gateway)


def openai_error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


def sse_data(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line]


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("reason", "header"),
    [("group loaded", "group loaded"), ("soonest → here\nnext", "soonest ? here?next"), ("x" * 400, "x" * 297 + "...")],
)
def test_the_reason_header_is_one_printable_line(reason: str, header: str) -> None:
    assert header_text(reason) == header


# --------------------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": CHAT["messages"]}, "model"),
        ("/v1/chat/completions", {**CHAT, "model": " "}, "model"),
        ("/v1/chat/completions", {**CHAT, "model": 7}, "model"),
        ("/v1/chat/completions", {"model": "m"}, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": ["hi"]}, "messages.0"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"content": "hi"}]}, "messages.0.role"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": "abc"}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 2.5}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_completion_tokens": "10"}, "max_completion_tokens"),
        ("/v1/chat/completions", {**CHAT, "temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {**CHAT, "temperature": 2.5}, "temperature"),
        ("/v1/chat/completions", {**CHAT, "top_p": -0.1}, "top_p"),
        ("/v1/chat/completions", {**CHAT, "n": 0}, "n"),
        ("/v1/chat/completions", {**CHAT, "n": 129}, "n"),
        ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ("/v1/chat/completions", {**CHAT, "stream_options": True}, "stream_options"),
        ("/v1/chat/completions", {**CHAT, "stop": 5}, "stop"),
        ("/v1/chat/completions", {**CHAT, "stop": ["end", 5]}, "stop.1"),
        ("/v1/chat/completions", {**CHAT, "presence_penalty": 3}, "presence_penalty"),
        ("/v1/chat/completions", {**CHAT, "frequency_penalty": -2.5}, "frequency_penalty"),
        ("/v1/chat/completions", {**CHAT, "seed": "42"}, "seed"),
        ("/v1/chat/completions", {**CHAT, "user": 42}, "user"),
        ("/v1/chat/completions", {**CHAT, "logprobs": "yes"}, "logprobs"),
        ("/v1/chat/completions", {**CHAT, "response_format": "json"}, "response_format"),
        ("/v1/chat/completions", {**CHAT, "response_format": {}}, "response_format.type"),
        ("/v1/chat/completions", {**CHAT, "tools": {"type": "function"}}, "tools"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"50256": -101}}, "logit_bias.50256"),
        ("/v1/completions", {"model": "m", "prompt": "p", "logprobs": 6}, "logprobs"),
        ("/v1/completions", {"model": "m", "prompt": [[1, 2], ["a"]]}, "prompt.1.0"),
        ("/v1/embeddings", {"model": "m", "input": "a", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/embeddings", {"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
        ("/v1/chat/completions", {**CHAT, "priority": "urgent"}, "priority"),
        ("/v1/chat/completions", {**CHAT, "exclusive_gpu": "gpu0"}, "exclusive_gpu"),
        ("/v1/chat/completions", {**CHAT, "exclusive_gpu": 0}, "exclusive_gpu"),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": []}, "prompt"),
        ("/v1/embeddings", {"model": "m"}, "input"),
        ("/v1/embeddings", {"model": "m", "input": ""}, "input"),
        ("/v1/embeddings", {"model": "m", "input": []}, "input"),
        ("/v1/embeddings", {"model": "m", "input": ["a", 3]}, "input.1"),
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
    plane = gateway.state.dataplane
    assert plane is not None and not plane.out and not plane.core.decisions and not len(plane.core.queue)


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


@pytest.mark.parametrize(
    ("kind", "body", "param", "words"),
    [
        (
            InferenceKind.CHAT,
            {"model": "m", "messages": [{"role": "wizard", "content": "hi"}]},
            "messages.0.role",
            ["'system'", "'user'", "'assistant'", "'tool'", "'developer'", "'function'"],
        ),
        (InferenceKind.CHAT, {**CHAT, "max_tokens": "abc"}, "max_tokens", ["valid integer", "at least 1"]),
        (InferenceKind.CHAT, {**CHAT, "temperature": "hot"}, "temperature", ["valid number", "from 0 to 2"]),
        (InferenceKind.CHAT, {**CHAT, "n": 500}, "n", ["less than or equal to 128"]),
        (InferenceKind.CHAT, {**CHAT, "stop": 5}, "stop", ["5 is not allowed", "a string or a list of strings"]),
        (InferenceKind.EMBEDDING, {"model": "m", "input": ""}, "input", ['"" is not allowed', "non-empty string"]),
        (InferenceKind.COMPLETION, {"model": "m", "prompt": None}, "prompt", ["null is not allowed"]),
    ],
)
def test_a_refusal_names_the_field_and_what_it_allows(
    kind: InferenceKind, body: dict[str, Any], param: str, words: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(kind, body)

    assert caught.value.field == param
    message = str(caught.value)
    assert message.startswith(f"{param}: ")
    assert all(word in message for word in words), message


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (InferenceKind.CHAT, {**CHAT, "messages": [{"role": r, "content": "x"} for r in ("system", "developer")]}),
        (
            InferenceKind.CHAT,
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
                    {"role": "tool", "content": "42", "tool_call_id": "c1"},
                    {"role": "function", "content": "old", "name": "f"},
                ],
            },
        ),
        (
            InferenceKind.CHAT,
            {
                **CHAT,
                "max_tokens": 16,
                "max_completion_tokens": 16,
                "temperature": 0,
                "top_p": 1,
                "n": 128,
                "stream": False,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                "stop": ["\n", "end"],
                "presence_penalty": -2,
                "frequency_penalty": 2.0,
                "seed": -1,
                "user": "u",
                "logprobs": True,
                "top_logprobs": 5,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": "auto",
                "logit_bias": {"50256": -100},
            },
        ),
        (InferenceKind.CHAT, {**CHAT, "temperature": None, "max_tokens": None, "stop": None, "stream": None}),
        (InferenceKind.CHAT, {**CHAT, "guided_json": {"type": "object"}, "top_k": 40, "metadata": {"a": 1}}),
        (InferenceKind.COMPLETION, {"model": "m", "prompt": "", "logprobs": 5, "echo": True, "suffix": "x"}),
        (InferenceKind.COMPLETION, {"model": "m", "prompt": [1, 2, 3]}),
        (InferenceKind.COMPLETION, {"model": "m", "prompt": [[1, 2], [3]]}),
        (InferenceKind.COMPLETION, {"model": "m", "prompt": ["a", "b"], "stop": "."}),
        (InferenceKind.EMBEDDING, {"model": "m", "input": [[1, 2], [3]], "encoding_format": "base64"}),
        (InferenceKind.EMBEDDING, {"model": "m", "input": [7, 8], "dimensions": 256, "stream": False}),
    ],
)
def test_bodies_openai_accepts_pass_and_are_forwarded_as_sent(kind: InferenceKind, body: dict[str, Any]) -> None:
    parsed = parse_body(kind, body)

    assert parsed.body == body
    # The client's own values, not a dump of the model: nothing added, nothing coerced.
    assert all(parsed.body[k] is v for k, v in body.items())


async def test_the_worker_gets_the_body_as_sent_less_gpuplanes_fields(memory_bus: MemoryBus) -> None:
    """End to end through the data plane: extra fields and the client's own values, untouched."""
    sent = {
        **CHAT,
        "model": "m",
        "temperature": 1,
        "max_tokens": 16,
        "guided_json": {"type": "object"},
        "priority": "high",
        "exclusive_gpu": "cuda:0",
    }
    async with running_gateway(memory_bus) as (_, client):
        worker = await FakeWorker(memory_bus, "w0", slots=2, models=("m",)).start()
        await memory_bus.settle()
        r = await client.post("/v1/chat/completions", json=sent)
        worker.die()

    assert r.status_code == 200, r.text
    (task,) = worker.tasks
    assert task.bodies == ({k: v for k, v in sent.items() if k not in ("priority", "exclusive_gpu")},)
    assert task.priority is Priority.HIGH and task.exclusive


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
    ("error", "status", "type_", "param", "code", "retry"),
    [
        (InvalidRequest("bad n", field="n"), 400, "invalid_request_error", "n", None, None),
        (Forbidden("above its priority", field="priority"), 403, "permission_error", "priority", "forbidden", None),
        (NotFound("no model x", field="model"), 404, "not_found_error", "model", None, None),
        (Conflict("busy", {"run_id": "r1"}), 409, "invalid_request_error", None, "conflict", None),
        (Overloaded("queue full", retry_after_s=2.6), 429, "rate_limit_error", None, "overloaded", "3"),
        (OperationFailed("crashed"), 500, "server_error", None, "internal", None),
        (ConfigError("no catalog"), 503, "server_error", None, "unavailable", "5"),
        (NoResponders("gpuplane.svc.router.infer"), 503, "server_error", None, "no_router", "5"),
        (BusUnavailable("not connected"), 503, "server_error", None, "unavailable", "5"),
        (RequestTimeout("gpuplane.svc.router.infer", 30), 504, "server_error", None, "timeout", "5"),
        (BusError("bad reply"), 502, "server_error", None, "bad_gateway", None),
        (ContractError("not a result"), 502, "server_error", None, "bad_gateway", None),
        (
            RemoteError("s", "bad_request", "max_tokens too large", "max_tokens"),
            400,
            "invalid_request_error",
            "max_tokens",
            None,
            None,
        ),
        (RemoteError("s", "forbidden", "no", "priority"), 403, "permission_error", "priority", "forbidden", None),
        (
            RemoteError("s", "overloaded", "full", context={"retry_after_s": "7"}),
            429,
            "rate_limit_error",
            None,
            "overloaded",
            "7",
        ),
        (RemoteError("s", "unavailable", "no worker"), 503, "server_error", None, "unavailable", "5"),
        (RemoteError("s", "from_the_future", "what"), 502, "server_error", None, "bad_gateway", None),
    ],
)
def test_each_error_is_answered_as_the_table_says(
    error: GpuplaneError, status: int, type_: str, param: str | None, code: str | None, retry: str | None
) -> None:
    r = error_response(error, retry_after_s=5)

    body = json.loads(bytes(r.body))
    assert r.status_code == status and r.headers.get("Retry-After") == retry
    assert body == {"error": {"message": body["error"]["message"], "type": type_, "param": param, "code": code}}
    assert body["error"]["message"] == (
        error.remote_message
        if isinstance(error, RemoteError)
        else "no router is running"
        if isinstance(error, NoResponders)
        else str(error)
    )


@pytest.mark.parametrize(("hint", "expected"), [("3", 3), ("0", 1), ("2.2", 3), (None, 5), ("soon", 5), ("inf", 5)])
def test_retry_after_is_whole_seconds_of_at_least_one(hint: str | None, expected: int) -> None:
    assert retry_after(hint, 5) == expected


# --------------------------------------------------------------------------- streaming


# --------------------------------------------------------------------------- /v1/models


SLASHED = GroupInfo(
    group_id="hub",
    vram_gb=1.0,
    load_time_s=1.0,
    models=(ModelInfo(id="org/chat-7b", kind=InferenceKind.CHAT),),
)


@asynccontextmanager
async def viewing(bus: MemoryBus, view: RouterState | None) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose data plane shows ``view`` (None: not connected to NATS yet)."""
    async with running_gateway(bus) as (app, client):
        if view is None:
            app.state.gateway.dataplane = None
        else:
            app.dependency_overrides[router_state_route.router_state] = lambda: view
        yield client


async def test_models_lists_every_model_with_its_group_and_where_it_is_loaded(memory_bus: MemoryBus) -> None:
    view = router_state(workers=(worker("w0", 0, loaded=("embed",)), worker("w1", 1, loaded=("embed",))))
    before = int(time.time())

    async with viewing(memory_bus, view) as client:
        r = await client.get("/v1/models")

    assert r.status_code == 200
    body = r.json()
    created = {card.pop("created") for card in body["data"]}
    assert all(isinstance(c, int) and before <= c <= time.time() for c in created)
    assert body == {
        "object": "list",
        "data": [
            {
                "id": "qwen-0.5b",
                "object": "model",
                "owned_by": "gpuplane",
                "group": "chat-small",
                "kind": "chat",
                "loaded_on_devices": [],
            },
            {
                "id": "bge-m3",
                "object": "model",
                "owned_by": "gpuplane",
                "group": "embed",
                "kind": "embedding",
                "loaded_on_devices": ["cuda:0", "cuda:1"],
            },
            {
                "id": "e5-large",
                "object": "model",
                "owned_by": "gpuplane",
                "group": "embed",
                "kind": "embedding",
                "loaded_on_devices": ["cuda:0", "cuda:1"],
            },
        ],
    }


def test_a_models_created_is_when_it_was_first_listed_and_stays() -> None:
    now = [1_700_000_000.7]
    listed = FirstListed(clock=lambda: now[0])

    first = listed.created("a")
    now[0] += 3600

    assert (first, listed.created("a"), listed.created("b")) == (1_700_000_000, 1_700_000_000, 1_700_003_600)


@pytest.mark.parametrize(
    ("model", "status"),
    [("qwen-0.5b", 200), ("e5-large", 200), ("org/chat-7b", 200), ("gpt-4", 404), ("org", 404), ("QWEN-0.5B", 404)],
)
async def test_one_models_card_or_404_naming_the_known_ones(memory_bus: MemoryBus, model: str, status: int) -> None:
    view = router_state(workers=(worker("w0", 0, loaded=("embed",)),), groups=(*GROUPS, SLASHED))

    async with viewing(memory_bus, view) as client:
        r = await client.get(f"/v1/models/{model}")
        listed = {card["id"]: card for card in (await client.get("/v1/models")).json()["data"]}

    assert r.status_code == status
    if status == 200:
        assert r.json() == listed[model]
    else:
        error = openai_error(r)
        assert error["type"] == "not_found_error" and error["param"] == "model" and error["code"] is None
        assert f"{model!r} does not exist" in error["message"]
        assert all(known in error["message"] for known in listed)


def test_a_404_lists_so_many_known_models_then_counts_the_rest() -> None:
    known = [f"m{i}" for i in range(KNOWN_SHOWN + 3)]

    message = str(unknown_model("x", known))

    assert f"m{KNOWN_SHOWN - 1} and 3 more" in message and f"m{KNOWN_SHOWN}," not in message


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/qwen-0.5b"])
async def test_models_before_nats_answers_are_503_in_openai_shape(memory_bus: MemoryBus, path: str) -> None:
    async with viewing(memory_bus, None) as client:
        r = await client.get(path)

    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert openai_error(r)["code"] == "unavailable"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/qwen-0.5b", "/v1/models/org/chat-7b"])
async def test_models_need_a_credential(memory_bus: MemoryBus, path: str) -> None:
    async with running_gateway(memory_bus) as (app, _), client_for(app, token=None) as anonymous:
        r = await anonymous.get(path)

    assert r.status_code == 401 and openai_error(r)["type"] == "authentication_error"


async def test_other_paths_keep_the_gateways_own_error_shape(memory_bus: MemoryBus) -> None:
    async with viewing(memory_bus, None) as client:
        r = await client.get("/api/models")

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
    assert "/v1/models/{model}" in paths
    # The models' own definitions are inlined: an operation cannot add to the document's components.
    assert "$ref" not in json.dumps(body) and "$defs" not in body
    role = body["properties"]["messages"]["items"]["properties"]["role"]
    assert set(role["enum"]) == {"system", "user", "assistant", "tool", "developer", "function"}
    assert body["properties"]["temperature"]["anyOf"][0] == {"maximum": 2.0, "minimum": 0.0, "type": "number"}


# --------------------------------------------------------------------------- lost answers
