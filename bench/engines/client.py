"""The client: streamed chat requests over aiohttp, conversations run turn by turn, open loop or closed loop.

A request's time to first token (TTFT) is from just before the request is written to the first server-sent
event whose delta holds content; its latency runs to the ``[DONE]`` event (or the stream's end). The last
event (``stream_options.include_usage``) gives the prompt, cached and completion tokens as the engine counted
them; the gateway's ``X-Gpuplane-Worker`` header says who served it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.engines.workload import Conversation, Turn, Workload, messages

REQUEST_TIMEOUT_S = 300.0


@dataclass
class Result:
    """One turn's request as the client saw it."""

    conversation: int
    turn: int
    sent_s: float
    """From the start of the run."""
    status: int = 0
    """HTTP status; 0 when no answer came (connection error, timeout, cut at the end)."""
    ttft_s: float | None = None
    latency_s: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    worker: str | None = None
    error: str | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300 and self.ttft_s is not None

    @property
    def done_s(self) -> float | None:
        return None if self.latency_s is None else self.sent_s + self.latency_s


def chat_body(model: str, chat: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": chat,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def parse_event(line: bytes) -> dict[str, Any] | str | None:
    """One SSE line: its JSON, ``"[DONE]"``, or None for anything else (comments, blank lines, other fields)."""
    text = line.strip()
    if not text.startswith(b"data:"):
        return None
    payload = text[5:].strip()
    if payload == b"[DONE]":
        return "[DONE]"
    try:
        found = json.loads(payload)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def delta_text(event: Mapping[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else ""


def take_usage(result: Result, event: Mapping[str, Any]) -> None:
    usage = event.get("usage")
    if not isinstance(usage, dict):
        return
    result.completion_tokens = int(usage.get("completion_tokens") or 0)
    result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        result.cached_tokens = int(details.get("cached_tokens") or 0)


async def stream_chat(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    body: dict[str, Any],
    result: Result,
    clock: Callable[[], float],
) -> None:
    """Send one streamed request and fill ``result`` (never raises for the server's or the network's faults)."""
    started = clock()
    result.sent_s = started
    pieces: list[str] = []
    try:
        async with session.post(url, json=body, headers=dict(headers)) as response:
            result.status = response.status
            result.worker = response.headers.get("X-Gpuplane-Worker")
            if response.status >= 300:
                result.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                result.latency_s = clock() - started
                return
            async for line in response.content:
                event = parse_event(line)
                if event == "[DONE]":
                    break
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    result.error = f"stream error: {str(event['error'])[:200]}"
                    break
                text = delta_text(event)
                if text:
                    if result.ttft_s is None:
                        result.ttft_s = clock() - started
                    pieces.append(text)
                take_usage(result, event)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    result.latency_s = clock() - started
    result.text = "".join(pieces)
    if result.error is None and result.ttft_s is None:
        result.error = "no content in the answer"


@dataclass(frozen=True)
class Target:
    """Where chat requests go: the gateway's (or an engine's) ``/v1/chat/completions`` and the headers it needs."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class RunLog:
    results: list[Result] = field(default_factory=list)
    unsent: int = 0
    """Turns never sent (open loop): their conversation's earlier turn failed, or the run ended first."""
    cut: int = 0
    """Requests still open when the drain limit ran out (counted as failed too)."""
    started_at: float = 0.0
    """``time.perf_counter()`` at the run's start."""


async def run_conversation(
    session: aiohttp.ClientSession,
    target: Target,
    model: str,
    system: str,
    conversation: Conversation,
    max_tokens: int,
    log: RunLog,
    clock: Callable[[], float],
    *,
    start_s: float | None = None,
    stop_s: float | None = None,
) -> None:
    """Each turn after the previous answer and the turn's think time; the first at ``start_s`` (default its own);
    no turn is sent after ``stop_s``."""
    at = conversation.start_s if start_s is None else start_s
    delay = at - clock()
    if delay > 0:
        await asyncio.sleep(delay)
    history: list[tuple[str, str]] = []
    for number, turn in enumerate(conversation.turns):
        if number and turn.think_s > 0:
            await asyncio.sleep(turn.think_s)
        if stop_s is not None and clock() >= stop_s:
            return
        result = Result(conversation.index, number, clock())
        log.results.append(result)
        body = chat_body(model, messages(system, history, turn.user), max_tokens)
        try:
            await stream_chat(session, target.url, target.headers, body, result, clock)
        except asyncio.CancelledError:
            result.error = "cut: still open when the drain limit ran out"
            result.latency_s = None
            log.cut += 1
            raise
        if not result.ok:
            return
        history.append((turn.user, result.text))


def _session() -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=10)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout)


async def open_loop(target: Target, model: str, workload: Workload, max_tokens: int, drain_s: float) -> RunLog:
    """Every conversation starts at its arrival time whatever the others do (open loop); after the arrival
    window, those still going get ``drain_s`` to finish, then the rest is cut."""
    log = RunLog(started_at=time.perf_counter())

    def clock() -> float:
        return time.perf_counter() - log.started_at

    async with _session() as session:
        tasks = [
            asyncio.create_task(run_conversation(session, target, model, workload.system, c, max_tokens, log, clock))
            for c in workload.conversations
        ]
        deadline = workload.window_s + drain_s
        done, pending = await asyncio.wait(tasks, timeout=max(deadline - clock(), 0.1))
        while pending and clock() < deadline:
            more, pending = await asyncio.wait(pending, timeout=max(deadline - clock(), 0.1))
            done |= more
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    log.unsent = workload.requests - len(log.results)
    return log


async def closed_loop(
    targets: Sequence[Target],
    model: str,
    system: str,
    conversations: Sequence[Conversation],
    max_tokens: int,
    users_per_target: int,
    duration_s: float,
) -> RunLog:
    """``users_per_target`` users per target, each running conversations back to back without think time
    (its conversations stay on its target) until ``duration_s``; the capacity calibration."""
    log = RunLog(started_at=time.perf_counter())

    def clock() -> float:
        return time.perf_counter() - log.started_at

    queue = list(conversations)

    async def user(target: Target) -> None:
        while queue and clock() < duration_s:
            conversation = queue.pop(0)
            quick = Conversation(conversation.index, 0.0, tuple(Turn(t.user, 0.0) for t in conversation.turns))
            await run_conversation(
                session, target, model, system, quick, max_tokens, log, clock, start_s=0.0, stop_s=duration_s
            )

    async with _session() as session:
        users = [user(t) for t in targets for _ in range(users_per_target)]
        await asyncio.gather(*users)
    return log
