"""A fake OpenAI-compatible upstream, cheap enough that the path in front of it is what gets measured.

``python -m bench.path.upstream --port P [--model M] [--delay-ms D]`` serves, over keep-alive HTTP/1.1:

- ``POST /v1/chat/completions``: a fixed 8-token answer with ``usage``, after the delay; with
  ``"stream": true`` the same answer as server-sent events (a role chunk, four chunks of two tokens,
  a last chunk with ``finish_reason`` and ``usage``, then ``data: [DONE]``).
- ``GET /v1/models``: the one model. ``GET /health``: 200 (what vllm-router polls).
- ``POST /_bench/delay`` ``{"ms": N}``: the delay of later answers. ``GET /_bench/stats``: the chat
  requests answered so far, so the benchmark can tell how a path split its requests.

Raw asyncio protocol (uvloop when installed) with httptools' parser: no framework between the socket
and the answer, so one process keeps up with far more than any proxy in front of it sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

MODEL = "bench-chat"
ANSWER_TOKENS = ("Hello", " from", " the", " fake", " upstream", ",", " friend", ".")
"""The answer, one token each: eight, like a short real one."""
TOKENS_PER_CHUNK = 2
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


# ---------------------------------------------------------------------------------------------- answers


def prompt_tokens(body: dict[str, Any]) -> int:
    """A rough token count of the prompt (words), so ``usage`` is plausible; never under 1."""
    messages = body.get("messages")
    words = 0
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                words += len(str(message.get("content", "")).split())
    return max(1, words)


def usage(prompt: int) -> dict[str, int]:
    completion = len(ANSWER_TOKENS)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(model: str, number: int, prompt: int, created: int) -> dict[str, Any]:
    """The answer to a non-streamed chat completion."""
    return {
        "id": f"chatcmpl-bench-{number}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(ANSWER_TOKENS)},
                "finish_reason": "stop",
            }
        ],
        "usage": usage(prompt),
    }


def stream_chunks(model: str, number: int, prompt: int, created: int) -> list[dict[str, Any]]:
    """The chunks of a streamed answer, in order (without the closing ``[DONE]``)."""

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-bench-{number}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    for start in range(0, len(ANSWER_TOKENS), TOKENS_PER_CHUNK):
        chunks.append(chunk({"content": "".join(ANSWER_TOKENS[start : start + TOKENS_PER_CHUNK])}))
    last = chunk({}, "stop")
    last["usage"] = usage(prompt)
    chunks.append(last)
    return chunks


def sse_event(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def models_list(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "bench"}]}


def http_response(status: int, body: bytes, *, keep_alive: bool, content_type: str = "application/json") -> bytes:
    """A whole HTTP/1.1 response with a Content-Length."""
    close = "" if keep_alive else "connection: close\r\n"
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n{close}\r\n"
    )
    return head.encode() + body


def chunked_head(*, keep_alive: bool) -> bytes:
    close = "" if keep_alive else "connection: close\r\n"
    return (
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        f"transfer-encoding: chunked\r\n{close}\r\n"
    ).encode()


def chunk_frame(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (an empty ``data`` ends the body)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# ---------------------------------------------------------------------------------------------- server


@dataclass
class Counters:
    served: int = 0
    """Chat completions answered (streamed or not)."""
    streamed: int = 0
    other: int = 0
    """Everything else: model lists, health checks, control calls, errors."""


@dataclass
class UpstreamState:
    model: str
    delay_s: float
    stream_gap_s: float
    counters: Counters = field(default_factory=Counters)
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass(frozen=True)
class Reply:
    """What to write, as steps of (seconds to wait first, bytes)."""

    steps: tuple[tuple[float, bytes], ...]
    keep_alive: bool
    chat: bool = False
    streamed: bool = False


def route(state: UpstreamState, method: str, path: str, body: bytes, keep_alive: bool) -> Reply:
    """The reply to one request."""
    path = path.split("?", 1)[0]

    def plain(status: int, payload: dict[str, Any], wait_s: float = 0.0) -> Reply:
        data = json.dumps(payload, separators=(",", ":")).encode()
        return Reply(((wait_s, http_response(status, data, keep_alive=keep_alive)),), keep_alive)

    if path in ("/v1/chat/completions", "/chat/completions"):
        if method != "POST":
            return plain(405, {"error": {"message": "POST only", "type": "invalid_request_error"}})
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            return plain(400, {"error": {"message": "the body is not a JSON object", "type": "invalid_request_error"}})
        number = state.counters.served + 1
        model = str(request.get("model") or state.model)
        prompt = prompt_tokens(request)
        if request.get("stream") is True:
            events = [sse_event(c) for c in stream_chunks(model, number, prompt, state.created)]
            events.append(sse_event("[DONE]"))
            steps = [(state.delay_s, chunked_head(keep_alive=keep_alive) + chunk_frame(events[0]))]
            # A gap between chunks, as a model's tokens come: a proxy that buffers the whole answer
            # shows up as a later first chunk.
            steps += [(state.stream_gap_s, chunk_frame(event)) for event in events[1:]]
            steps.append((0.0, chunk_frame(b"")))
            return Reply(tuple(steps), keep_alive, chat=True, streamed=True)
        answer = plain(200, completion(model, number, prompt, state.created), state.delay_s)
        return Reply(answer.steps, keep_alive, chat=True)
    if path in ("/v1/models", "/models") and method == "GET":
        return plain(200, models_list(state.model, state.created))
    if path in ("/health", "/healthz", "/v1/health") and method in ("GET", "HEAD"):
        return plain(200, {"status": "ok"})
    if path == "/_bench/delay" and method == "POST":
        try:
            state.delay_s = max(0.0, float(json.loads(body)["ms"]) / 1000)
        except (ValueError, KeyError, TypeError):
            return plain(400, {"error": {"message": 'send {"ms": N}'}})
        return plain(200, {"delay_ms": state.delay_s * 1000})
    if path == "/_bench/stats" and method == "GET":
        counters = state.counters
        return plain(200, {"served": counters.served, "streamed": counters.streamed, "other": counters.other})
    return plain(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})


class _Connection(asyncio.Protocol):
    """One client connection: requests answered one after another, in order (pipelining included)."""

    def __init__(self, state: UpstreamState) -> None:
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._pending: deque[Reply] = deque()
        self._playing: Reply | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but offer the same methods.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(http_response(400, b"{}", keep_alive=False))
                self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode()
        keep_alive = bool(self._parser.should_keep_alive())
        self._pending.append(route(self._state, method, self._url.decode(), b"".join(self._body), keep_alive))
        if self._playing is None:
            self._next()

    def _next(self) -> None:
        if not self._pending or self._transport is None:
            self._playing = None
            return
        self._playing = self._pending.popleft()
        self._play(0)

    def _play(self, index: int) -> None:
        reply = self._playing
        assert reply is not None
        while index < len(reply.steps):
            wait_s, data = reply.steps[index]
            if wait_s > 0:
                # Come back after the wait (``_resume`` writes this step and goes on).
                self._timer = asyncio.get_running_loop().call_later(wait_s, self._resume, index)
                return
            if self._transport is None:
                return
            self._transport.write(data)
            index += 1
        counters = self._state.counters
        if reply.chat:
            counters.served += 1
            counters.streamed += reply.streamed
        else:
            counters.other += 1
        if not reply.keep_alive and self._transport is not None:
            self._transport.close()
            return
        self._next()

    def _resume(self, index: int) -> None:
        self._timer = None
        if self._transport is None or self._playing is None:
            return
        reply = self._playing
        _, data = reply.steps[index]
        self._transport.write(data)
        self._play(index + 1)


async def serve(state: UpstreamState, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(state), host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream on http://{host}:{port}/v1 serving {state.model}", flush=True)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.path.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait this long before each answer")
    parser.add_argument("--stream-gap-ms", type=float, default=1.0, help="wait this long between streamed chunks")
    args = parser.parse_args(argv)
    state = UpstreamState(args.model, args.delay_ms / 1000, args.stream_gap_ms / 1000)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(state, args.host, args.port))
    else:
        uvloop.run(serve(state, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
