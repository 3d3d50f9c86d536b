"""The worker's engine: real HTTP on localhost into the worker's pool (the bus is the in-memory one)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from services.stack.embedded import free_port
from services.worker.backends.simulated import SimulatedBackend
from services.worker.core.responses import joined_stream_text, simulated_text
from services.worker.main import child_specs
from services.worker.settings import WorkerSettings
from shared.bus.memory import MemoryBus
from shared.contracts import WorkerState, WorkerTask
from shared.errors import ConfigError, OperationFailed
from tests.services.worker.backends.upstream import FakeUpstream
from tests.services.worker.helpers import RunningWorker, launch, make_task, worker_settings

TOKEN = "engine-token-0123456789"
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    server.start()
    yield server
    server.stop()


def chat(text: str = "hello", model: str = "big-chat", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def events(raw: bytes) -> list[bytes]:
    """The events of an SSE body, each without its blank line."""
    return [event for event in raw.split(b"\n\n") if event]


def data_of(event: bytes) -> Any:
    assert event.startswith(b"data: "), event
    return json.loads(event[len(b"data: ") :])


def after(worker: RunningWorker) -> Callable[[Callable[[Any], bool]], Callable[[Any], bool]]:
    """A status check that only looks at statuses newer than the worker's latest one now."""
    mark = worker.statuses()[-1].sequence

    def newer(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
        return lambda s: s.sequence > mark and check(s)

    return newer


def tasks_counted(worker: RunningWorker, kind: str, outcome: str) -> float:
    labels = {"worker": worker.worker_id, "device": "cuda:0", "kind": kind, "outcome": outcome}
    return REGISTRY.get_sample_value("gpuplane_worker_tasks_total", labels) or 0.0


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


# --------------------------------------------------------------- answers


async def test_a_chat_answer_through_the_engine(start: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    worker: RunningWorker = await start()
    url = worker.engine_url
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
    assert all(s.engine_url == url for s in worker.statuses())

    status, body, headers = await post(
        http, f"{url}/chat/completions", chat("What is a GPU?"), **{"X-Gpuplane-Request-Id": "req-1"}
    )
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "[simulated big-chat on cuda:0] You said: What is a GPU?"
    assert body["id"] == "chatcmpl-req-1" and headers["X-Gpuplane-Request-Id"] == "req-1"
    assert (headers["X-Gpuplane-Worker"], headers["X-Gpuplane-Group"]) == (worker.worker_id, "big")
    assert float(headers["X-Gpuplane-Load-Ms"]) == pytest.approx(20, abs=2)
    assert float(headers["X-Gpuplane-Service-Ms"]) == pytest.approx(10, abs=5)

    status, body, headers = await post(http, f"{url}/completions", {"model": "big-text", "prompt": "once"})
    assert status == 200 and body["object"] == "text_completion" and headers["X-Gpuplane-Load-Ms"] == "0.0"
    assert headers["X-Gpuplane-Request-Id"].startswith("req-")  # one was made

    done = await worker.wait_status(lambda s: s.request_count == 2)
    assert done.error_count == 0 and done.group_switches == 1 and done.in_flight == 0
    assert tasks_counted(worker, "chat", "ok") == 1 and tasks_counted(worker, "completion", "ok") == 1


async def test_models_lists_what_the_backend_serves(start: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    worker: RunningWorker = await start()
    async with http.get(f"{worker.engine_url}/models") as response:
        assert response.status == 200
        listed = await response.json()
    ids = [m["id"] for m in listed["data"]]
    assert listed["object"] == "list" and "big-chat" in ids and "embed-a" in ids and "huge-chat" not in ids
    assert all(m["object"] == "model" for m in listed["data"])


async def test_a_streamed_answer_arrives_as_server_sent_events_in_order(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    worker: RunningWorker = await start(speed=0.1, default_group="big")  # 0.1 s, spread over the chunks
    body = chat("stream me", stream=True)
    arrived: list[float] = []
    raw = b""
    async with http.post(f"{worker.engine_url}/chat/completions", json=body) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        assert response.headers["X-Gpuplane-Worker"] == worker.worker_id
        assert response.headers["X-Gpuplane-Group"] == "big"
        async for line in response.content:
            raw += line
            if line.startswith(b"data: {"):
                arrived.append(time.monotonic())
    *chunks, figures, done = events(raw)
    assert done == b"data: [DONE]"
    assert re.fullmatch(rb": gpuplane service_ms=\d+\.\d load_ms=0\.0", figures)
    data = [data_of(c) for c in chunks]
    assert 3 <= len(data) <= 10 and all(d["object"] == "chat.completion.chunk" for d in data)
    assert joined_stream_text(data) == simulated_text("big-chat", "cuda:0", body)
    assert arrived[-1] - arrived[0] > 0.03  # written as they came, not all at the end
    await worker.wait_status(lambda s: s.request_count == 1 and s.in_flight == 0)


async def test_embeddings(start: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    worker: RunningWorker = await start()
    status, body, headers = await post(
        http, f"{worker.engine_url}/embeddings", {"model": "embed-a", "input": ["a", "bb"]}
    )
    assert status == 200 and headers["X-Gpuplane-Group"] == "embed"
    assert body["object"] == "list" and body["model"] == "embed-a"
    assert [d["index"] for d in body["data"]] == [0, 1] and all(d["embedding"] for d in body["data"])


# --------------------------------------------------------------- errors


async def test_requests_it_cannot_serve_get_openai_shaped_errors(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    worker: RunningWorker = await start()
    url = worker.engine_url

    status, body, _ = await post(http, f"{url}/chat/completions", chat(model="gpt-17"))
    assert status == 404 and set(body["error"]) == ERROR_KEYS
    assert body["error"]["param"] == "model" and body["error"]["code"] == "model_not_found"
    assert "'gpt-17'" in body["error"]["message"]
    status, body, _ = await post(http, f"{url}/chat/completions", chat(model="huge-chat"))
    assert status == 404 and "needs 40960 MiB" in body["error"]["message"]

    async with http.post(f"{url}/chat/completions", data=b"{not json") as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    status, body, _ = await post(http, f"{url}/chat/completions", {"model": "big-chat"})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body, _ = await post(http, f"{url}/chat/completions", chat(), **{"X-Gpuplane-Priority": "urgent"})
    assert status == 400 and body["error"]["param"] == "X-Gpuplane-Priority"
    status, body, _ = await post(http, f"{url}/chat/completions", chat(), **{"X-Gpuplane-Attempt": "0"})
    assert status == 400 and body["error"]["param"] == "X-Gpuplane-Attempt"
    status, body, _ = await post(http, f"{url}/embeddings", {"model": "embed-a", "input": "x", "stream": True})
    assert status == 400 and body["error"]["param"] == "stream"
    status, body, _ = await post(http, f"{url}/no/such/route", chat())
    assert status == 404 and set(body["error"]) == ERROR_KEYS

    # None of these reached the pool.
    assert worker.statuses()[-1].request_count == 0


async def test_a_failure_before_the_first_chunk_is_a_plain_http_error(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    worker: RunningWorker = await start(fail_rate=1.0)
    for body in (chat("x"), chat("x", stream=True)):
        status, answer, headers = await post(http, f"{worker.engine_url}/chat/completions", body)
        assert status == 500 and answer["error"]["type"] == "server_error"
        assert "simulated failure" in answer["error"]["message"] and headers["X-Gpuplane-Worker"] == worker.worker_id
    done = await worker.wait_status(lambda s: s.error_count == 2)
    assert done.in_flight == 0


async def test_a_failure_after_the_stream_started_ends_it_with_an_error_event(
    start: Callable[..., Any], http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fail_midway(self: SimulatedBackend, task: WorkerTask, emit: Any) -> Any:
        assert emit is not None
        await emit({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "par"}}]})
        raise OperationFailed("the GPU fell off the bus")

    monkeypatch.setattr(SimulatedBackend, "execute", fail_midway)
    worker: RunningWorker = await start()
    async with http.post(f"{worker.engine_url}/chat/completions", json=chat(stream=True)) as response:
        assert response.status == 200
        first, error, done = events(await response.read())
    assert data_of(first)["choices"][0]["delta"]["content"] == "par"
    assert data_of(error) == {
        "error": {"message": "the GPU fell off the bus", "type": "server_error", "param": None, "code": "internal"}
    }
    assert done == b"data: [DONE]"
    assert (await worker.wait_status(lambda s: s.error_count == 1)).in_flight == 0


# --------------------------------------------------------------- access


async def test_a_token_is_asked_on_every_route_but_health(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    worker: RunningWorker = await start(engine_token=TOKEN)
    url = worker.engine_url
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        async with http.get(f"{url}/models", headers=headers) as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
            assert (await response.json())["error"]["code"] == "invalid_api_key"
        async with http.post(f"{url}/chat/completions", json=chat(), headers=headers) as response:
            assert response.status == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(f"{url}/models", headers=bearer) as response:
        assert response.status == 200
    status, _, _ = await post(http, f"{url}/chat/completions", chat(), **bearer)
    assert status == 200
    async with http.get(url.removesuffix("/v1") + "/health") as response:
        assert response.status == 200
        health = await response.json()
    assert health["status"] == "ok" and health["worker_id"] == worker.worker_id and health["engine_url"] == url
    assert worker.statuses()[-1].request_count == 1


async def test_the_token_can_come_from_a_file(
    start: Callable[..., Any], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "engine-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    worker: RunningWorker = await start(engine_token_file=path)
    async with http.get(f"{worker.engine_url}/models") as response:
        assert response.status == 401
    async with http.get(f"{worker.engine_url}/models", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200


def test_a_weak_or_exposed_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        WorkerSettings(engine_token="short").engine_bearer()
    path = tmp_path / "engine-token"
    path.write_text(TOKEN)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="can be read by other users"):
        WorkerSettings(engine_token_file=path).engine_bearer()
    assert WorkerSettings().engine_bearer() is None


# --------------------------------------------------------------- scheduling


async def test_priorities_are_honoured_when_the_slots_are_full(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    worker: RunningWorker = await start(slots=1, default_group="big", speed=0.25)
    url = f"{worker.engine_url}/chat/completions"
    order: list[str] = []

    async def ask(name: str, priority: str, max_tokens: int) -> None:
        status, _, _ = await post(http, url, chat(name, max_tokens=max_tokens), **{"X-Gpuplane-Priority": priority})
        assert status == 200
        order.append(name)

    asking = [asyncio.create_task(ask("blocker", "normal", 128 * 16))]  # 0.64 s
    await worker.wait_status(lambda s: s.in_flight == 1)
    for depth, (name, priority) in enumerate([("low-1", "low"), ("low-2", "low"), ("high", "high")], start=1):
        asking.append(asyncio.create_task(ask(name, priority, 32)))
        await worker.wait_status(lambda s, depth=depth: s.queue_depth == depth)
    await asyncio.gather(*asking)
    assert order == ["blocker", "high", "low-1", "low-2"]


async def test_an_exclusive_request_runs_alone(start: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    worker: RunningWorker = await start(slots=3, default_group="big", speed=0.25)
    url = f"{worker.engine_url}/chat/completions"
    finished: list[str] = []

    async def ask(name: str, max_tokens: int, **headers: str) -> None:
        status, _, _ = await post(http, url, chat(name, max_tokens=max_tokens), **headers)
        assert status == 200
        finished.append(name)

    long_a = asyncio.create_task(ask("a", 128 * 8))  # 0.32 s
    long_b = asyncio.create_task(ask("b", 128 * 8))
    await worker.wait_status(lambda s: s.in_flight == 2)
    exclusive = asyncio.create_task(ask("x", 32, **{"X-Gpuplane-Exclusive": "1", "X-Gpuplane-Request-Id": "excl-1"}))
    await worker.wait_status(lambda s: s.queue_depth == 1)
    short = asyncio.create_task(ask("c", 32))
    await asyncio.gather(long_a, long_b, exclusive, short)
    assert finished[2:] == ["x", "c"]  # c had a free slot but waited behind the exclusive one
    holding = [s for s in worker.statuses() if s.exclusive_request is not None]
    assert holding and all(s.in_flight == 1 for s in holding)
    assert {s.exclusive_request for s in holding} == {"excl-1"}


async def test_draining_refuses_new_requests_with_503_and_finishes_the_others(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    worker: RunningWorker = await start(speed=0.25, default_group="big")
    url = worker.engine_url
    running = asyncio.create_task(post(http, f"{url}/chat/completions", chat("long", max_tokens=128 * 8)))
    await worker.wait_status(lambda s: s.in_flight == 1)
    worker.ctx.stopping.set()
    await worker.wait_status(lambda s: s.state is WorkerState.DRAINING)

    status, body, headers = await post(http, f"{url}/chat/completions", chat("late"))
    assert status == 503 and headers["Retry-After"] == "1"
    assert body["error"]["type"] == "server_error" and "draining" in body["error"]["message"]
    async with http.get(url.removesuffix("/v1") + "/health") as response:
        assert response.status == 503 and (await response.json())["status"] == "draining"

    status, body, _ = await running
    assert status == 200 and body["object"] == "chat.completion"
    await asyncio.wait_for(worker.task, 10)
    assert worker.statuses()[-1].state is WorkerState.STOPPED and worker.statuses()[-1].request_count == 1
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, f"{url}/chat/completions", chat("after"))


async def test_a_client_that_disconnects_frees_its_slot(start: Callable[..., Any], http: aiohttp.ClientSession) -> None:
    worker: RunningWorker = await start(slots=1, default_group="big", speed=0.1)  # 128 x 16 tokens: 1.6 s
    url = f"{worker.engine_url}/chat/completions"
    running = asyncio.create_task(post(http, url, chat("long", max_tokens=128 * 16)))
    await worker.wait_status(lambda s: s.in_flight == 1)
    queued = asyncio.create_task(post(http, url, chat("queued", max_tokens=128 * 16)))
    await worker.wait_status(lambda s: s.queue_depth == 1)

    newer = after(worker)
    queued.cancel()
    await worker.wait_status(newer(lambda s: s.queue_depth == 0 and s.in_flight == 1), timeout_s=1.0)
    gave_up = time.monotonic()
    running.cancel()
    await worker.wait_status(newer(lambda s: s.in_flight == 0 and s.queue_depth == 0), timeout_s=1.0)
    assert time.monotonic() - gave_up < 0.5  # freed at once, not when the 1.6 s were up

    # A streamed answer whose reader goes away mid-stream frees its slot too.
    newer = after(worker)
    async with http.post(url, json=chat("stream", max_tokens=128 * 16, stream=True)) as response:
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"data: {")
        response.close()
    await worker.wait_status(newer(lambda s: s.in_flight == 0), timeout_s=1.0)

    status, _, _ = await post(http, url, chat("next", max_tokens=32))
    assert status == 200
    done = await worker.wait_status(lambda s: s.request_count == 1)
    assert done.error_count == 0 and done.in_flight == 0 and done.queue_depth == 0  # the cancelled ones count neither
    assert tasks_counted(worker, "chat", "cancelled") == 2


# --------------------------------------------------------------- where the engine is


async def test_the_engine_can_be_placed_advertised_or_turned_off(
    start: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    port = free_port()
    worker: RunningWorker = await start(engine_port=port, engine_advertise_host="gpu-box.example")
    assert worker.engine_url == f"http://gpu-box.example:{port}/v1"
    status, _, _ = await post(http, f"http://127.0.0.1:{port}/v1/chat/completions", chat())
    assert status == 200

    off: RunningWorker = await start(engine_enabled=False)
    assert all(s.engine_url is None for s in off.statuses())
    assert (await off.ask(make_task("big-chat"))).bodies[0]["object"] == "chat.completion"  # NATS still works


async def test_a_port_in_use_fails_the_start_naming_the_setting(bus: MemoryBus, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = await launch(bus, worker_settings(tmp_path, engine_port=port))
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}.*GPUPLANE_ENGINE_PORT"):
            await asyncio.wait_for(worker.task, 5)


async def test_the_openai_backend_advertises_its_upstream(start: Callable[..., Any], upstream: FakeUpstream) -> None:
    worker: RunningWorker = await start(backend="openai", upstream_url=upstream.url.removesuffix("/v1") + "/")
    assert worker.engine_url == upstream.url  # normalized to end in /v1
    result = await worker.ask(make_task("up-chat", group="up-chat", bodies=(chat("hi"),)))
    assert result.bodies[0]["choices"][0]["message"]["content"] == "upstream heard: hi"  # NATS still works

    keyed: RunningWorker = await start(backend="openai", upstream_url=upstream.url, upstream_api_key="sekrit")
    assert all(s.engine_url is None for s in keyed.statuses())  # the key stays with the worker
    result = await keyed.ask(make_task("up-chat", group="up-chat", bodies=(chat("hi"),)))
    assert result.bodies[0]["choices"][0]["message"]["content"] == "upstream heard: hi"
    assert {s.authorization for s in upstream.seen if s.method == "POST"} == {None, "Bearer sekrit"}


def test_each_device_child_gets_its_own_engine_port(tmp_path: Path) -> None:
    settings = WorkerSettings(devices="cuda:0,cuda:1", engine_port=9400, engine_token=TOKEN)
    first, second = child_specs(settings, settings.device_list(), python="/py")
    assert (first.env["GPUPLANE_ENGINE_PORT"], second.env["GPUPLANE_ENGINE_PORT"]) == ("9400", "9401")
    assert first.env["GPUPLANE_ENGINE_TOKEN"] == TOKEN  # the value, not pydantic's stars
    assert os.environ.get("GPUPLANE_ENGINE_TOKEN") is None
