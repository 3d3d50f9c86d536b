"""How a placed request reaches its engine: straight over HTTP, or through the worker over NATS.

The core decides where a request goes; a transport only carries it there and brings the answer back.
The dispatcher picks per worker: ``HttpEngine`` to the engine's ``engine_url`` when the worker advertises
one (one hop, bytes passed through), else ``NatsWorker``: a ``WorkerTask`` to the worker over NATS (an
engine the data plane cannot reach, or one whose key must not travel). Both raise ``WorkerLost``,
``OperationFailed`` (the worker's failure) or ``InvalidRequest``/``NotFound`` (the client's mistake, as the
engine judged it).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from services.router.core.lifecycle import Delivered, Send
from shared.answers import AnswerWatch
from shared.bus.base import Bus, Delivery
from shared.contracts import (
    InferenceKind,
    Route,
    ServiceName,
    StreamChunk,
    WorkerHeld,
    WorkerHeldQuery,
    WorkerResult,
    WorkerTask,
)
from shared.errors import (
    BusError,
    GpuplaneError,
    InvalidRequest,
    NoResponders,
    NotFound,
    OperationFailed,
    RemoteError,
)
from shared.subjects import stream_chunks, worker_held, worker_task

PATHS = {
    InferenceKind.CHAT: "/chat/completions",
    InferenceKind.COMPLETION: "/completions",
    InferenceKind.EMBEDDING: "/embeddings",
}
CLIENT_ERROR_CODES = frozenset({"bad_request", "not_found"})
SSE_PREFIX = b"data:"
SSE_DONE = b"[DONE]"


class WorkerLost(GpuplaneError):
    """The worker or its engine stopped, or fell silent, with the request still out."""

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone
        """Nothing listens at its address: not alive until it reports again."""


@dataclass(frozen=True)
class StreamMeta:
    """Who serves a streamed answer: known when its first chunk arrives."""

    request_id: str
    worker_id: str
    device: str
    host: str
    route: Route
    attempt: int


class ChunkSink(Protocol):
    """Where a streamed answer's chunks go, as the engine's JSON text of each chunk."""

    async def begin(self, meta: StreamMeta) -> None: ...

    async def data(self, payload: bytes) -> None: ...

    async def end(self, error: str | None) -> None:
        """The stream is over: after its last chunk (``None``), or broken off with ``error``."""
        ...


def meta_of(send: Send) -> StreamMeta:
    status = send.record.status
    return StreamMeta(
        request_id=send.pending.first.request_id,
        worker_id=status.worker_id,
        device=status.device,
        host=status.host,
        route=send.placement.route,
        attempt=send.pending.attempt,
    )


# --------------------------------------------------------------------------- HTTP, straight to the engine


def batch_body(send: Send) -> tuple[dict[str, Any], list[int]]:
    """One embeddings body for a batch of requests, and how many inputs each brought."""
    inputs: list[Any] = []
    counts: list[int] = []
    for request in send.pending.requests:
        text = request.body.get("input")
        items = text if isinstance(text, list) else [text]
        inputs.extend(items)
        counts.append(len(items))
    first = dict(send.pending.first.body)
    first["input"] = inputs
    return first, counts


def split_batch(answer: dict[str, Any], counts: list[int]) -> tuple[dict[str, Any], ...]:
    """Each request's share of one batched embeddings answer, indexed from 0 again."""
    data = sorted(answer.get("data") or [], key=lambda d: d.get("index", 0))
    if len(data) != sum(counts):
        raise OperationFailed(f"the engine answered {len(data)} embeddings for {sum(counts)} inputs")
    usage = answer.get("usage") or {}
    total = max(1, sum(counts))
    bodies = []
    start = 0
    for count in counts:
        part = [dict(d, index=i) for i, d in enumerate(data[start : start + count])]
        start += count
        share = {k: round(v * count / total) for k, v in usage.items() if isinstance(v, int)}
        bodies.append({**answer, "data": part, "usage": share})
    return tuple(bodies)


_USAGE = re.compile(rb'"(prompt_tokens|completion_tokens)"\s*:\s*(\d+)')


def usage_of(body: Any) -> tuple[int | None, int | None]:
    """``prompt_tokens`` and ``completion_tokens`` of an answer's OpenAI ``usage`` (raw JSON or a dict),
    found without parsing the whole answer; None where it does not say."""
    found: dict[str, Any] = {}
    if isinstance(body, dict):
        usage = body.get("usage")
        found = usage if isinstance(usage, dict) else {}
    elif isinstance(body, bytes | bytearray) and (at := body.rfind(b'"usage"')) >= 0:
        found = {m.group(1).decode(): int(m.group(2)) for m in _USAGE.finditer(body, at, at + 300)}
    prompt, completion = found.get("prompt_tokens"), found.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)


def _usage(bodies: Sequence[Any]) -> dict[str, int | None]:
    prompt, completion = usage_of(bodies[0]) if len(bodies) == 1 else (None, None)
    return {"prompt_tokens": prompt, "completion_tokens": completion}


def _engine_message(raw: bytes, status: int) -> str:
    try:
        parsed = json.loads(raw)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        message = error.get("message") if isinstance(error, dict) else (parsed.get("detail") if parsed else None)
        if isinstance(message, str) and message:
            return message
    except (ValueError, AttributeError):
        pass
    text = raw[:200].decode("utf-8", "replace").strip()
    return text or f"HTTP {status}"


class HttpEngine:
    """Requests straight to an engine's OpenAI-compatible API over one shared keep-alive pool."""

    def __init__(
        self, *, token: str | None, timeout_s: float, connect_timeout_s: float = 3.0, tracing: bool = False
    ) -> None:
        self._tracer = trace.get_tracer("gpuplane.router.http")
        # Untraced, a request goes straight to _call: one await level less, paid at every resumption.
        self.call: Callable[[Send, ChunkSink | None], Awaitable[Delivered]] = self._traced if tracing else self._call
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
            # No cookies, no proxy lookups from the environment: an engine is addressed directly.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _traced(self, send: Send, sink: ChunkSink | None) -> Delivered:
        status = send.record.status
        with self._tracer.start_as_current_span(
            f"POST {PATHS[send.pending.first.kind]}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "gpuplane.worker": status.worker_id},
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            return await self._call(send, sink, carrier)

    async def _call(self, send: Send, sink: ChunkSink | None, trace_headers: dict[str, str] | None = None) -> Delivered:
        pending = send.pending
        status = send.record.status
        assert status.engine_url is not None
        first = pending.first
        counts: list[int] | None = None
        if len(pending.requests) > 1:
            body, counts = batch_body(send)
        else:
            body = first.body
        headers = {
            **self._headers,
            **(trace_headers or {}),
            "X-Gpuplane-Request-Id": first.request_id,
            "X-Gpuplane-Priority": pending.priority.value,
            "X-Gpuplane-Attempt": str(pending.attempt),
        }
        if send.placement.exclusive_device is not None:
            headers["X-Gpuplane-Exclusive"] = "1"
        url = status.engine_url.rstrip("/") + PATHS[first.kind]
        started = time.perf_counter()
        try:
            async with self._client().post(url, data=json.dumps(body).encode(), headers=headers) as response:
                if response.status >= 300:
                    raw = await response.read()
                    self._refused(response.status, raw, status.worker_id)
                if sink is not None:
                    await self._relay(response, sink, send)
                    return self._delivered(send, response, ({},), started)
                raw = await response.read()
        except aiohttp.ClientConnectorError as exc:
            raise WorkerLost(f"engine of {status.worker_id} at {url} is not answering: {exc}", gone=True) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
            raise WorkerLost(f"engine of {status.worker_id} dropped the request: {exc}") from exc
        except TimeoutError as exc:
            raise OperationFailed(f"engine of {status.worker_id} took longer than {self._timeout.total:g} s") from exc
        except aiohttp.ClientError as exc:
            raise OperationFailed(f"engine of {status.worker_id}: {exc}") from exc
        if counts is not None:
            return self._delivered(send, response, split_batch(json.loads(raw), counts), started)
        return self._delivered(send, response, (raw,), started)

    @staticmethod
    def _refused(code: int, raw: bytes, worker_id: str) -> None:
        message = _engine_message(raw, code)
        if code == 404:
            raise NotFound(message, field="model")
        if 400 <= code < 500 and code not in (408, 429):
            raise InvalidRequest(message)
        raise OperationFailed(f"engine of {worker_id} answered {code}: {message}")

    @staticmethod
    async def _relay(response: aiohttp.ClientResponse, sink: ChunkSink, send: Send) -> None:
        begun = False
        async for line in response.content:
            if not line.startswith(SSE_PREFIX):
                continue
            payload = line[len(SSE_PREFIX) :].strip()
            if payload == SSE_DONE:
                await sink.end(None)
                return
            if payload.startswith(b'{"error"'):
                if not begun:
                    raise OperationFailed(_engine_message(payload, 500))
                await sink.end(_engine_message(payload, 500))
                return
            if not begun:
                begun = True
                await sink.begin(meta_of(send))
            await sink.data(payload)
        if not begun:
            raise WorkerLost(f"engine of {send.record.status.worker_id} ended the stream before its first chunk")
        await sink.end("the engine ended the stream without its last chunk")

    @staticmethod
    def _delivered(send: Send, response: aiohttp.ClientResponse, bodies: tuple[Any, ...], started: float) -> Delivered:
        status = send.record.status
        service_ms = response.headers.get("X-Gpuplane-Service-Ms")
        load_ms = response.headers.get("X-Gpuplane-Load-Ms")
        measured = bool(service_ms)
        try:
            service_s = float(service_ms) / 1000 if service_ms else time.perf_counter() - started
            load_s = float(load_ms) / 1000 if load_ms else 0.0
        except ValueError:
            service_s, load_s, measured = time.perf_counter() - started, 0.0, False
        return Delivered(
            bodies=bodies,
            worker_id=status.worker_id,
            device=status.device,
            host=status.host,
            group=response.headers.get("X-Gpuplane-Group") or send.pending.placement.group,
            service_s=service_s,
            load_s=load_s,
            measured=measured,
            **_usage(bodies),
        )


# --------------------------------------------------------------------------- NATS, through the worker


@dataclass
class _NatsOut:
    host: str
    worker_id: str
    sent_at: float
    lost: asyncio.Event


class NatsWorker:
    """A ``WorkerTask`` to the worker over NATS; streamed chunks come back on a subject of this router's."""

    def __init__(
        self,
        bus: Bus,
        service: ServiceName,
        instance: str,
        *,
        timeout_s: float,
        stream_tail_s: float,
        answers: AnswerWatch,
        clock: Callable[[], float],
    ) -> None:
        self._bus = bus
        self._service = service
        self._instance = instance
        self._timeout_s = timeout_s
        self._stream_tail_s = stream_tail_s
        self.answers = answers
        self._clock = clock
        self.out: dict[str, _NatsOut] = {}
        """Tasks out, for the lost-answer watch."""

    async def check_answers(self) -> int:
        """One round of the lost-answer watch: a task whose worker no longer holds it and whose answer has not
        come is lost (sent again by the shell). Returns how many were found lost."""
        by_worker: dict[tuple[str, str], list[str]] = {}
        for task_id in self.answers.due({t: o.sent_at for t, o in self.out.items()}, self._clock()):
            out = self.out[task_id]
            by_worker.setdefault((out.host, out.worker_id), []).append(task_id)
        for (host, worker_id), task_ids in by_worker.items():
            try:
                reply = await self._bus.request(
                    worker_held(host, worker_id),
                    WorkerHeldQuery(task_ids=tuple(task_ids)),
                    WorkerHeld,
                    timeout_s=self.answers.grace_s,
                )
                held: tuple[str, ...] = reply.task_ids
            except NoResponders:
                held = ()  # the process is gone, and its tasks with it
            except BusError:
                continue  # no verdict this round
            self.answers.heard(task_ids, held, self._clock())
        found = 0
        for task_id in self.answers.lost(self.out, self._clock()):
            out = self.out[task_id]
            if not out.lost.is_set():
                found += 1
                out.lost.set()
        return found

    async def call(self, send: Send, sink: ChunkSink | None) -> Delivered:
        pending, record = send.pending, send.record
        task_id = uuid.uuid4().hex
        subject = stream_chunks(self._service, self._instance, task_id)
        ended = asyncio.Event()
        relay = None
        if sink is not None:
            relay = await self._bus.subscribe(subject, StreamChunk, self._relay(send, sink, ended))
        task = WorkerTask(
            task_id=task_id,
            request_ids=tuple(r.request_id for r in pending.requests),
            kind=pending.first.kind,
            model=pending.placement.model,
            group=pending.placement.group,
            bodies=tuple(r.body for r in pending.requests),
            priority=pending.placement.priority,
            exclusive=send.placement.exclusive_device is not None,
            stream_subject=subject if sink is not None else None,
            attempt=pending.attempt,
        )
        lost = asyncio.Event()
        self.out[task_id] = _NatsOut(record.status.host, record.status.worker_id, self._clock(), lost)
        call = asyncio.ensure_future(
            self._bus.request(
                worker_task(record.status.host, record.status.worker_id), task, WorkerResult, timeout_s=self._timeout_s
            )
        )
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({call, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                call.cancel()
                raise WorkerLost(f"worker {record.status.worker_id}: its answer was lost on the way back")
            result = call.result()
            if sink is not None:
                try:
                    await asyncio.wait_for(ended.wait(), self._stream_tail_s)
                except TimeoutError:
                    await sink.end("the stream ended without its last chunk")
        except NoResponders as exc:
            # Nobody subscribes to its task subject: the process is gone, whatever its last status said.
            raise WorkerLost(f"worker {record.status.worker_id} is not running", gone=True) from exc
        except RemoteError as exc:
            if exc.code == "not_found":
                raise NotFound(exc.remote_message, field=exc.field) from exc
            if exc.code in CLIENT_ERROR_CODES:
                raise InvalidRequest(exc.remote_message, field=exc.field) from exc
            raise OperationFailed(exc.remote_message) from exc
        except BusError as exc:
            raise OperationFailed(str(exc)) from exc
        finally:
            call.cancel()
            lost_wait.cancel()
            self.out.pop(task_id, None)
            self.answers.forget(task_id)
            if relay is not None:
                await relay.unsubscribe()
        return Delivered(
            bodies=tuple(result.bodies),
            worker_id=result.worker_id,
            device=result.device,
            host=result.host,
            group=result.group,
            service_s=result.service_s,
            load_s=result.load_s,
            measured=result.service_s > 0,
            **_usage(result.bodies),
        )

    def _relay(self, send: Send, sink: ChunkSink, ended: asyncio.Event) -> Callable[[StreamChunk, Delivery], Any]:
        begun = False
        expected = 0
        held: dict[int, StreamChunk] = {}

        async def on_chunk(chunk: StreamChunk, _: Delivery) -> None:
            nonlocal begun, expected
            if ended.is_set() or chunk.seq < expected:
                return
            held[chunk.seq] = chunk
            while expected in held:
                ready = held.pop(expected)
                expected += 1
                if ready.data is not None:
                    if not begun:
                        begun = True
                        await sink.begin(meta_of(send))
                    await sink.data(json.dumps(ready.data, separators=(",", ":")).encode())
                if ready.done or ready.error is not None:
                    ended.set()
                    await sink.end(ready.error)
                    return

        return on_chunk
