"""The gateway's data plane: /v1 requests placed by a router core in this process and sent straight to engines.

The routing core (``services.router.dispatcher``) learns the workers from their reports over NATS like every
router; the answer's bytes go from the engine to the client through this process only. This module turns an
answer into an HTTP response: a whole body passed through as the engine wrote it, or server-sent events
relayed chunk by chunk as they arrive.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from services.router.core.lifecycle import Answer
from services.router.dispatcher import Dispatcher
from services.router.transports import StreamMeta
from shared.contracts import InferenceRequest
from shared.errors import OperationFailed

SSE_DONE = b"data: [DONE]\n\n"


def sse_error(message: str) -> bytes:
    body = {"error": {"message": message, "type": "server_error"}}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


class SseSink:
    """A streamed answer's chunks as server-sent event bytes, queued for the response to send.

    One queue and no extra waits per chunk: the request's end (answered or failed) closes the queue too.
    """

    def __init__(self) -> None:
        self.meta: StreamMeta | None = None
        self.begun: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.ended = False

    async def begin(self, meta: StreamMeta) -> None:
        self.meta = meta
        if not self.begun.done():
            self.begun.set_result(None)

    async def data(self, payload: bytes) -> None:
        if not self.ended:
            self.queue.put_nowait(b"data: " + payload + b"\n\n")

    async def end(self, error: str | None) -> None:
        self._end(error)

    def _end(self, error: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        if error is not None:
            self.queue.put_nowait(sse_error(error))
        self.queue.put_nowait(SSE_DONE)
        self.queue.put_nowait(None)

    def request_done(self, request: asyncio.Task[Answer]) -> None:
        """The request ended: whoever waits for the first chunk or the next one hears of it."""
        if not self.begun.done():
            self.begun.set_result(None)
        if not self.ended and self.meta is not None:
            self._end(_failure(request))

    async def events(self) -> AsyncIterator[bytes]:
        """The events in order until ``[DONE]`` (a request that ends without ending the stream ends it through
        ``request_done``)."""
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item


def _failure(request: asyncio.Task[Answer]) -> str:
    if request.cancelled():
        return "the request was cancelled"
    exc = request.exception()
    return str(exc) if exc is not None else "the stream ended without its last chunk"


async def open_stream(plane: Dispatcher, request: InferenceRequest) -> tuple[SseSink, asyncio.Task[Answer]]:
    """Start a streamed request; returns once its first chunk arrived (``sink.meta`` says who serves it).

    An error before the first chunk is raised here, so the client gets a plain error answer.
    """
    sink = SseSink()
    task = asyncio.create_task(plane.submit(request, sink), name=f"stream {request.request_id}")
    task.add_done_callback(sink.request_done)
    try:
        await sink.begun
    except asyncio.CancelledError:
        task.cancel()
        raise
    if sink.meta is None:
        task.result()  # raises the placement's or the engine's error
        raise OperationFailed(f"request {request.request_id} was answered without streaming any chunk")
    return sink, task


def body_bytes(answer: Answer) -> bytes:
    """The answer's body as bytes: passed through when the engine's bytes came, else serialized once."""
    body: Any = answer.body
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if body is None:
        raise OperationFailed(f"request {answer.request_id} was answered without a body")
    return json.dumps(body, separators=(",", ":")).encode()


def usage_of(raw: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of an answer, without parsing it when it has none."""
    if b'"usage"' not in raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return usage if isinstance(usage, dict) else None
