"""bench/engines' client against a fake streaming engine on localhost (an aiohttp server in this process):
events parsed, usage and the serving worker read, history carried from turn to turn, failures counted, the
open loop cut at its drain limit. Correctness only, no timing asserted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.engines import client
from bench.engines.client import Result, Target, delta_text, parse_event, take_usage
from bench.engines.workload import Conversation, Turn, Workload


@dataclass
class FakeEngine:
    """Streams ``answer <n>`` word by word with a final usage event; ``fail_on`` turns answer 503."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    fail_on: set[int] = field(default_factory=set)
    """Request numbers (1-based) that fail."""
    error_event_on: set[int] = field(default_factory=set)
    hang: bool = False
    """Send the headers, then nothing until ``release`` is set (the fixture sets it at the end)."""
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        number = len(self.bodies)
        if number in self.fail_on:
            return web.json_response({"error": {"message": "busy"}}, status=503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Gpuplane-Worker": "engine-1"})
        await response.prepare(request)
        if self.hang:
            await self.release.wait()
        role = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        await response.write(b"data: " + json.dumps(role).encode() + b"\n\n")
        if number in self.error_event_on:
            await response.write(b'data: {"error": {"message": "out of memory"}}\n\n')
        for word in ("answer ", str(number)):
            chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        usage = {
            "choices": [],
            "usage": {"completion_tokens": 2, "prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 90}},
        }
        await response.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/v1/chat/completions"
    yield fake
    fake.release.set()
    await runner.cleanup()


def test_parse_event() -> None:
    assert parse_event(b'data: {"a": 1}\n') == {"a": 1}
    assert parse_event(b"data: [DONE]") == "[DONE]"
    assert parse_event(b": keep-alive") is None
    assert parse_event(b"data: not json") is None
    assert parse_event(b"data: [1, 2]") is None


def test_delta_text_and_usage() -> None:
    assert delta_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert delta_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert delta_text({"choices": []}) == ""
    result = Result(0, 0, 0.0)
    take_usage(
        result, {"usage": {"completion_tokens": 5, "prompt_tokens": 7, "prompt_tokens_details": {"cached_tokens": 3}}}
    )
    assert (result.completion_tokens, result.prompt_tokens, result.cached_tokens) == (5, 7, 3)
    take_usage(result, {"usage": None})
    assert result.completion_tokens == 5


def test_chat_body_streams_with_usage() -> None:
    body = client.chat_body("m", [{"role": "user", "content": "q"}], 32)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0 and body["max_tokens"] == 32


async def test_a_streamed_answer_is_read_whole(engine: FakeEngine) -> None:
    result = Result(0, 0, 0.0)
    async with aiohttp.ClientSession() as session:
        await client.stream_chat(session, engine.url, {"Authorization": "Bearer x"}, {"model": "m"}, result, _clock())
    assert result.ok and result.status == 200
    assert result.text == "answer 1"
    assert result.worker == "engine-1"
    assert (result.completion_tokens, result.prompt_tokens, result.cached_tokens) == (2, 100, 90)
    assert result.ttft_s is not None and result.latency_s is not None and result.ttft_s <= result.latency_s


async def test_an_error_status_and_an_error_event_are_failures(engine: FakeEngine) -> None:
    engine.fail_on = {1}
    engine.error_event_on = {2}
    first, second = Result(0, 0, 0.0), Result(0, 1, 0.0)
    async with aiohttp.ClientSession() as session:
        await client.stream_chat(session, engine.url, {}, {}, first, _clock())
        await client.stream_chat(session, engine.url, {}, {}, second, _clock())
    assert not first.ok and first.status == 503 and first.error is not None and first.error.startswith("HTTP 503")
    assert not second.ok and second.error is not None and "out of memory" in second.error


async def test_a_refused_connection_is_a_failure_not_an_exception() -> None:
    result = Result(0, 0, 0.0)
    async with aiohttp.ClientSession() as session:
        await client.stream_chat(session, "http://127.0.0.1:9/v1/chat/completions", {}, {}, result, _clock())
    assert not result.ok and result.status == 0 and result.error


async def test_each_turn_carries_the_previous_answers(engine: FakeEngine) -> None:
    conversation = Conversation(4, 0.0, (Turn("q1", 0.0), Turn("q2", 0.01), Turn("q3", 0.01)))
    log = client.RunLog()
    async with aiohttp.ClientSession() as session:
        await client.run_conversation(session, Target(engine.url), "m", "SYS", conversation, 8, log, _clock())
    assert [(r.conversation, r.turn, r.ok) for r in log.results] == [(4, 0, True), (4, 1, True), (4, 2, True)]
    last = engine.bodies[-1]["messages"]
    assert [m["content"] for m in last] == ["SYS", "q1", "answer 1", "q2", "answer 2", "q3"]
    assert all(b["model"] == "m" and b["max_tokens"] == 8 for b in engine.bodies)


async def test_a_failed_turn_ends_its_conversation(engine: FakeEngine) -> None:
    engine.fail_on = {2}
    conversation = Conversation(0, 0.0, (Turn("q1", 0.0), Turn("q2", 0.0), Turn("q3", 0.0), Turn("q4", 0.0)))
    log = client.RunLog()
    async with aiohttp.ClientSession() as session:
        await client.run_conversation(session, Target(engine.url), "m", "S", conversation, 8, log, _clock())
    assert [r.ok for r in log.results] == [True, False]


async def test_the_open_loop_runs_every_conversation(engine: FakeEngine) -> None:
    conversations = tuple(Conversation(i, 0.01 * i, (Turn(f"a{i}", 0.0), Turn(f"b{i}", 0.01))) for i in range(5))
    workload = Workload(0, "S", conversations, 100.0, 0.05)
    log = await client.open_loop(Target(engine.url), "m", workload, 8, drain_s=10)
    assert len(log.results) == 10 and all(r.ok for r in log.results)
    assert log.unsent == 0 and log.cut == 0


async def test_turns_after_a_failure_or_the_end_are_counted_unsent(engine: FakeEngine) -> None:
    engine.fail_on = {1}
    conversations = (
        Conversation(0, 0.0, (Turn("a", 0.0), Turn("b", 0.0), Turn("c", 0.0))),
        Conversation(1, 0.2, (Turn("a", 0.0), Turn("b", 30.0))),
    )
    log = await client.open_loop(Target(engine.url), "m", Workload(0, "S", conversations, 1.0, 0.3), 8, drain_s=0.5)
    # Conversation 0 fails at once (2 turns unsent); conversation 1 is still thinking at the end (1 unsent).
    assert len(log.results) == 2 and log.unsent == 3 and log.cut == 0


async def test_the_open_loop_cuts_what_is_open_at_the_drain_limit(engine: FakeEngine) -> None:
    engine.hang = True
    conversations = (Conversation(0, 0.0, (Turn("a", 0.0), Turn("b", 0.0))),)
    log = await client.open_loop(Target(engine.url), "m", Workload(0, "S", conversations, 1.0, 0.01), 8, drain_s=0.3)
    assert log.cut == 1 and log.unsent == 1
    assert [r.error for r in log.results] == ["cut: still open when the drain limit ran out"]


async def test_the_closed_loop_keeps_users_on_their_target_and_stops(engine: FakeEngine) -> None:
    conversations = [Conversation(i, 5.0, (Turn("a", 3.0), Turn("b", 3.0))) for i in range(100)]
    log = await client.closed_loop([Target(engine.url)], "m", "S", conversations, 8, 2, duration_s=0.3)
    assert log.results and all(r.ok for r in log.results)
    # Think times and start times are dropped: the users ran conversations back to back.
    assert {r.turn for r in log.results} == {0, 1}


def _clock() -> Callable[[], float]:
    started = time.perf_counter()
    return lambda: time.perf_counter() - started
