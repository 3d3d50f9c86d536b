"""The gateway's data plane: /v1 requests placed in-process and sent over real HTTP to engines on localhost.

The engines are small aiohttp servers that answer as each test says; their workers' statuses come over the
in-memory bus, as they come over NATS in a running stack.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiohttp import web

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.bus.memory import MemoryBus
from shared.contracts import Inventory, InventorySource, WorkerStatus
from shared.subjects import inventory, worker_status
from tests.builders import make_gpu, make_worker_status
from tests.services.api.gateway import ADMIN_TOKEN, gateway_settings, running_gateway
from tests.services.worker.helpers import launch, worker_settings

CHAT = {"model": "chat-x", "messages": [{"role": "user", "content": "hi"}]}
ENGINE_TOKEN = "engine-token-0123456789abcdef"

Handler = Callable[["FakeEngine", web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def answer_of(engine: FakeEngine, body: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body.get("model"),
            "served_by": engine.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
        },
        separators=(",", ":"),
    ).encode()


async def answers(engine: FakeEngine, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    if engine.delay_s:
        await asyncio.sleep(engine.delay_s)
    if request.path.endswith("/embeddings"):
        items = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [float(len(t))]} for i, t in enumerate(items)]
        return web.json_response({"object": "list", "data": data, "usage": {"prompt_tokens": len(items)}})
    return web.Response(body=answer_of(engine, body), content_type="application/json")


def failing(status: int, message: str) -> Handler:
    async def handler(engine: FakeEngine, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        error = {"error": {"message": message, "type": "invalid_request_error"}}
        return web.json_response(error, status=status)

    return handler


def streams(*texts: str, then: str = "done") -> Handler:
    """SSE chunks of ``texts``; then ``done`` ([DONE]), ``error`` (an error event) or ``die`` (the socket closes)."""

    async def handler(engine: FakeEngine, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for text in texts:
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if then == "error":
            await response.write(b'data: {"error": {"message": "the engine ran out of memory"}}\n\n')
            await response.write(b"data: [DONE]\n\n")
        elif then == "die":
            assert request.transport is not None
            request.transport.close()
            return response
        else:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    return handler


@dataclass
class FakeEngine:
    """An OpenAI-compatible engine on a free localhost port, and the worker status that advertises it."""

    bus: MemoryBus
    name: str
    device: str = "cuda:0"
    host: str = "box"
    models: tuple[str, ...] = ("chat-x", "bge-small-en", "e5-x")
    slots: int = 8
    handler: Handler = answers
    delay_s: float = 0.0
    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _beat: asyncio.Task[None] | None = None

    async def start(self) -> FakeEngine:
        app = web.Application()
        app.router.add_post("/v1/{path:.*}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        await self.report()
        self._beat = asyncio.create_task(self._heartbeat())
        return self

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, dict(request.headers), body))
        return await self.handler(self, request, body)

    def status(self) -> WorkerStatus:
        status = make_worker_status(
            self.name, device=self.device, host=self.host, models=self.models, slots=self.slots, request_count=1
        )
        return status.model_copy(update={"engine_url": self.url, "latency_avg_s": 0.01})

    async def report(self) -> None:
        await self.bus.publish(worker_status(self.host, self.name), self.status())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self.report()

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Plane:
    client: httpx.AsyncClient
    bus: MemoryBus
    engines: list[FakeEngine]

    async def engine(self, name: str, **fields: Any) -> FakeEngine:
        engine = await FakeEngine(self.bus, name, **fields).start()
        self.engines.append(engine)
        await self.bus.settle()
        return engine


@pytest.fixture
async def plane(memory_bus: MemoryBus) -> AsyncIterator[Plane]:
    settings = gateway_settings(engine_token=ENGINE_TOKEN, unplaceable_timeout_s=1.0, embedding_batch_window_s=0.05)
    async with running_gateway(memory_bus, settings) as (_, client):
        p = Plane(client, memory_bus, [])
        yield p
        for engine in p.engines:
            await engine.stop()


def sse_events(text: str) -> list[str]:
    return [part.removeprefix("data: ") for part in text.split("\n\n") if part.strip()]


# --------------------------------------------------------------------------- whole answers


async def test_the_engines_bytes_come_back_as_they_were_with_who_served_them(plane: Plane) -> None:
    engine = await plane.engine("w0")

    r = await plane.client.post("/v1/chat/completions", json=CHAT)

    assert r.status_code == 200
    assert r.content == answer_of(engine, CHAT)
    assert r.headers["X-Gpuplane-Worker"] == "w0" and r.headers["X-Gpuplane-Gpu"] == "cuda:0"
    assert r.headers["X-Gpuplane-Engine"] == "simulated"  # the backend its status names
    assert r.headers["X-Gpuplane-Attempts"] == "1" and r.headers["X-Gpuplane-Route"]
    [(path, headers, body)] = engine.seen
    assert path == "/v1/chat/completions" and body == CHAT
    assert headers["Authorization"] == f"Bearer {ENGINE_TOKEN}"
    assert headers["X-Gpuplane-Request-Id"] == r.headers["X-Gpuplane-Request-Id"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "chat-x", "prompt": "once upon"}),
        ("/v1/embeddings", {"model": "e5-x", "input": "a"}),
    ],
)
async def test_each_route_reaches_the_engines_same_route(plane: Plane, path: str, body: dict[str, Any]) -> None:
    engine = await plane.engine("w0")

    r = await plane.client.post(path, json=body)

    assert r.status_code == 200, r.text
    assert engine.seen[0][0] == path


@pytest.mark.parametrize(
    ("header", "in_body", "expected"),
    [(None, None, "normal"), ("low", None, "low"), (" HIGH ", None, "high"), ("low", "high", "high")],
)
async def test_priority_reaches_the_engine_and_gpuplane_fields_do_not(
    plane: Plane, header: str | None, in_body: str | None, expected: str
) -> None:
    engine = await plane.engine("w0")
    body: dict[str, Any] = {**CHAT, "exclusive_gpu": "cuda:0"}
    if in_body is not None:
        body["priority"] = in_body
    headers = {"X-Gpuplane-Priority": header} if header is not None else {}

    r = await plane.client.post("/v1/chat/completions", json=body, headers=headers)

    assert r.status_code == 200
    _, seen_headers, seen_body = engine.seen[0]
    assert seen_headers["X-Gpuplane-Priority"] == expected
    assert seen_headers["X-Gpuplane-Exclusive"] == "1"
    assert seen_body == CHAT


async def test_the_gpu_header_names_the_host_when_several_hosts_reported(plane: Plane) -> None:
    for host in ("a", "box"):
        await plane.bus.publish(
            inventory(host), Inventory(host=host, source=InventorySource.SIMULATED, gpus=(make_gpu(0),))
        )
    await plane.engine("w0", device="cuda:0", host="box")

    r = await plane.client.post("/v1/chat/completions", json=CHAT)

    assert r.headers["X-Gpuplane-Gpu"] == "box/cuda:0"


async def test_embeddings_arriving_together_go_as_one_batch_and_come_back_split(plane: Plane) -> None:
    engine = await plane.engine("w0")
    bodies = [{"model": "e5-x", "input": ["a", "bb"]}, {"model": "e5-x", "input": "ccc"}]

    replies = await asyncio.gather(*(plane.client.post("/v1/embeddings", json=b) for b in bodies))

    assert [r.status_code for r in replies] == [200, 200]
    assert len(engine.seen) == 1 and engine.seen[0][2]["input"] == ["a", "bb", "ccc"]
    assert [[d["embedding"] for d in r.json()["data"]] for r in replies] == [[[1.0], [2.0]], [[3.0]]]
    assert [[d["index"] for d in r.json()["data"]] for r in replies] == [[0, 1], [0]]


async def test_equal_idle_engines_share_a_burst(plane: Plane) -> None:
    engines = [await plane.engine(f"w{i}", device=f"cuda:{i}", delay_s=0.02) for i in range(2)]

    replies = await asyncio.gather(*(plane.client.post("/v1/chat/completions", json=CHAT) for _ in range(40)))

    assert all(r.status_code == 200 for r in replies)
    shares = sorted(len(e.seen) for e in engines)
    assert shares[0] >= 16, f"split {shares}: no worse than 60/40"


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("status", "answered", "kind"),
    [(400, 400, "invalid_request_error"), (404, 404, "not_found_error"), (422, 400, "invalid_request_error")],
)
async def test_the_engines_refusal_is_the_clients_answer_not_retried(
    plane: Plane, status: int, answered: int, kind: str
) -> None:
    refusal = failing(status, "max_tokens is too large for this model")
    first = await plane.engine("w0", handler=refusal)
    other = await plane.engine("w1", device="cuda:1", handler=refusal)

    r = await plane.client.post("/v1/chat/completions", json=CHAT)

    assert r.status_code == answered
    assert r.json()["error"]["type"] == kind and "max_tokens is too large" in r.json()["error"]["message"]
    assert len(first.seen) + len(other.seen) == 1


async def test_an_engine_failure_is_retried_once_on_another_engine(plane: Plane) -> None:
    broken = await plane.engine("w0", handler=failing(500, "CUDA error"))
    healthy = await plane.engine("w1", device="cuda:1")
    broken.delay_s = healthy.delay_s = 0.0
    # Whichever engine is chosen first, the answer comes from the healthy one.
    r = await plane.client.post("/v1/chat/completions", json=CHAT)

    assert r.status_code == 200 and r.json()["served_by"] == "w1"
    if broken.seen:
        assert r.headers["X-Gpuplane-Attempts"] == "2" and r.headers["X-Gpuplane-Route"] == "retry"


async def test_an_engine_that_is_gone_loses_no_request(plane: Plane) -> None:
    gone = await plane.engine("w0")
    await gone.stop()  # its last status still says it is there
    healthy = await plane.engine("w1", device="cuda:1")

    replies = await asyncio.gather(*(plane.client.post("/v1/chat/completions", json=CHAT) for _ in range(6)))

    assert [r.status_code for r in replies] == [200] * 6
    assert len(healthy.seen) == 6


async def test_an_unknown_model_is_404_at_once_naming_the_models(plane: Plane) -> None:
    await plane.engine("w0")

    r = await plane.client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})

    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert "chat-x" in r.json()["error"]["message"]


async def test_an_embedding_model_asked_to_chat_is_400(plane: Plane) -> None:
    await plane.engine("w0")

    r = await plane.client.post("/v1/chat/completions", json={**CHAT, "model": "bge-small-en"})

    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "/v1/embeddings" in r.json()["error"]["message"]


async def test_exclusive_use_of_a_gpu_that_cannot_serve_the_model_is_400_at_once(plane: Plane) -> None:
    await plane.engine("w0", device="cuda:0")
    await plane.engine("w1", device="cuda:1", models=("e5-x",))

    r = await plane.client.post("/v1/chat/completions", json={**CHAT, "exclusive_gpu": "cuda:1"})

    assert r.status_code == 400 and r.json()["error"]["param"] == "exclusive_gpu"
    assert "GPUs that can: cuda:0" in r.json()["error"]["message"]


async def test_no_engine_for_a_known_model_is_503_after_the_wait(plane: Plane) -> None:
    await plane.engine("w0", models=("e5-x",))

    r = await plane.client.post("/v1/chat/completions", json={**CHAT, "model": "llama3-8b-instruct"})

    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert "Retry-After" in r.headers


# --------------------------------------------------------------------------- streams


async def test_a_stream_is_relayed_chunk_by_chunk_with_who_serves_it(plane: Plane) -> None:
    await plane.engine("w0", handler=streams("he", "llo"))

    r = await plane.client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["X-Gpuplane-Worker"] == "w0" and r.headers["X-Gpuplane-Gpu"] == "cuda:0"
    events = sse_events(r.text)
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == ["he", "llo"]
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize("then", ["error", "die"])
async def test_a_stream_broken_off_ends_with_an_error_event_and_is_not_sent_twice(plane: Plane, then: str) -> None:
    first = await plane.engine("w0", handler=streams("he", then=then))
    second = await plane.engine("w1", device="cuda:1", handler=streams("he", then=then))

    r = await plane.client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    events = sse_events(r.text)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "he"
    assert "error" in json.loads(events[-2]) and events[-1] == "[DONE]"
    assert len(first.seen) + len(second.seen) == 1


async def test_an_error_before_the_first_chunk_is_a_plain_http_error(plane: Plane) -> None:
    await plane.engine("w0", handler=failing(400, "bad stop sequence"))

    r = await plane.client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert r.status_code == 400 and "bad stop sequence" in r.json()["error"]["message"]


async def test_a_gateway_without_an_engine_token_sends_none(memory_bus: MemoryBus) -> None:
    async with running_gateway(memory_bus, gateway_settings()) as (_, client):
        engine = await FakeEngine(memory_bus, "w0").start()
        await memory_bus.settle()
        try:
            r = await client.post("/v1/chat/completions", json=CHAT)
        finally:
            await engine.stop()

    assert r.status_code == 200 and "Authorization" not in engine.seen[0][1]


def test_the_gateways_settings_carry_the_routers() -> None:
    settings = gateway_settings(routing_policy="p2c", retry_attempts=2)
    assert isinstance(settings, ApiSettings)
    assert (settings.routing_policy, settings.retry_attempts) == ("p2c", 2)


async def test_a_request_past_the_inference_timeout_is_504(memory_bus: MemoryBus) -> None:
    settings = gateway_settings(inference_timeout_s=0.2)
    async with running_gateway(memory_bus, settings) as (app, client):
        engine = await FakeEngine(memory_bus, "w0", delay_s=1.0).start()
        await memory_bus.settle()
        try:
            r = await client.post("/v1/chat/completions", json=CHAT)
        finally:
            await engine.stop()

    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert "GPUPLANE_INFERENCE_TIMEOUT_S" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- an engine killed under load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def upstream_process(delay_ms: float) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A real engine process (the benchmark's fake OpenAI upstream), killable with SIGKILL."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "bench.path.upstream", "--port", str(port), "--delay-ms", str(delay_ms)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    if (await client.get(f"{url}/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.integration
async def test_an_engine_killed_under_300_requests_loses_none_and_answers_none_twice(memory_bus: MemoryBus) -> None:
    settings = gateway_settings(lost_worker_requeues=3)
    async with (
        running_gateway(memory_bus, settings) as (_, client),
        upstream_process(40) as (victim, victim_url),
        upstream_process(40) as (_, other_url),
    ):
        for i, url in enumerate((victim_url, other_url)):
            status = make_worker_status(f"w{i}", device=f"cuda:{i}", models=("bench-chat",), slots=64, request_count=1)
            await memory_bus.publish(worker_status("box-a", f"w{i}"), status.model_copy(update={"engine_url": url}))
        await memory_bus.settle()
        client.timeout = httpx.Timeout(60)

        async def one(i: int) -> httpx.Response:
            body = {"model": "bench-chat", "messages": [{"role": "user", "content": f"hello {i}"}]}
            return await client.post("/v1/chat/completions", json=body)

        sending = asyncio.gather(*(one(i) for i in range(300)))
        await asyncio.sleep(0.15)
        victim.send_signal(signal.SIGKILL)
        replies = await sending

    assert [r.status_code for r in replies] == [200] * 300, [r.text for r in replies if r.status_code != 200][:3]
    ids = [r.headers["X-Gpuplane-Request-Id"] for r in replies]
    assert len(set(ids)) == 300
    moved = [r for r in replies if int(r.headers["X-Gpuplane-Attempts"]) > 1]
    assert moved and all(r.headers["X-Gpuplane-Worker"] == "w1" for r in moved)


# --------------------------------------------------------------------------- real workers behind the gateway


@pytest.mark.integration
async def test_real_workers_simulated_and_openai_are_served_through_their_engines(
    memory_bus: MemoryBus, tmp_path: Path
) -> None:
    """`gpuplane worker --backend openai --upstream-url URL` puts a running engine behind gpuplane: the gateway
    sends to that URL directly; a simulated worker serves its own engine. Both under the engine token."""
    async with (
        upstream_process(0) as (_, upstream_url),
        running_gateway(memory_bus, gateway_settings(engine_token=ENGINE_TOKEN)) as (_, client),
    ):
        common = {"vram_mb": 24576, "engine_token": ENGINE_TOKEN}
        relay = await launch(
            memory_bus,
            worker_settings(
                tmp_path, device="cuda:0", worker_id="up0", backend="openai", upstream_url=upstream_url, **common
            ),
        )
        simulated = await launch(memory_bus, worker_settings(tmp_path, device="cuda:1", worker_id="sim1", **common))
        try:
            for worker in (relay, simulated):
                await worker.wait_status(lambda s: s.state.value == "ready" and s.engine_url is not None)
            await memory_bus.settle()
            up = await client.post("/v1/chat/completions", json={**CHAT, "model": "bench-chat"})
            sim = await client.post("/v1/chat/completions", json={**CHAT, "model": "big-chat"})
        finally:
            await relay.stop()
            await simulated.stop()

    assert up.status_code == 200 and up.headers["X-Gpuplane-Worker"] == "up0", up.text
    assert up.json()["model"] == "bench-chat" and up.json()["choices"][0]["message"]["content"]
    assert sim.status_code == 200 and sim.headers["X-Gpuplane-Worker"] == "sim1", sim.text
    assert "[simulated big-chat on cuda:1]" in sim.json()["choices"][0]["message"]["content"]


async def test_a_full_queue_is_429_with_retry_after(memory_bus: MemoryBus) -> None:
    settings = gateway_settings(queue_limit=2, worker_queue_limit=0)
    async with running_gateway(memory_bus, settings) as (_, client):
        engine = await FakeEngine(memory_bus, "w0", slots=1, delay_s=0.5).start()
        await memory_bus.settle()
        try:
            replies = await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT) for _ in range(5)))
        finally:
            await engine.stop()

    codes = sorted(r.status_code for r in replies)
    assert codes == [200, 200, 200, 429, 429], codes  # one running, two queued, the rest refused
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) >= 1


# --------------------------------------------------------------------------- a client that leaves a stream


def slow_stream(gap_s: float, chunks: int, ended: asyncio.Event) -> Handler:
    """A long generation; ``ended`` is set when the engine stops writing, its client gone or its answer done."""

    async def handler(engine: FakeEngine, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(chunks):
                chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await asyncio.sleep(gap_s)
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            ended.set()
        return response

    return handler


@pytest.mark.integration
async def test_a_client_that_leaves_a_stream_calls_it_off_at_the_engine(memory_bus: MemoryBus) -> None:
    """Over real HTTP (uvicorn, as `gpuplane api` serves): the engine stops generating within a moment of the
    client leaving, and the data plane holds nothing for it afterwards."""
    ended = asyncio.Event()
    port = free_port()

    async def factory(*_: object) -> MemoryBus:
        return memory_bus

    app = create_app(gateway_settings(allowed_hosts="*"), bus_factory=factory)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    engine: FakeEngine | None = None
    try:
        for _ in range(250):
            if server.started:
                break
            await asyncio.sleep(0.02)
        engine = await FakeEngine(memory_bus, "w0", handler=slow_stream(0.05, 400, ended)).start()
        await memory_bus.settle()
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break  # one chunk, then leave: 20 s of generation remain
        left_at = asyncio.get_running_loop().time()
        await asyncio.wait_for(ended.wait(), 5)
        assert asyncio.get_running_loop().time() - left_at < 2, "the engine went on generating for nobody"
        plane = app.state.gateway.dataplane
        for _ in range(100):
            if not plane.out and plane.pools.workers["w0"].outstanding == 0:
                break
            await asyncio.sleep(0.02)
        assert not plane.out and plane.pools.workers["w0"].outstanding == 0
    finally:
        if engine is not None:
            await engine.stop()
        server.should_exit = True
        await serving
