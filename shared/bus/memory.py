"""An in-process bus with NATS semantics (wildcards, queue groups, no-responders) for unit tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import defaultdict, deque
from dataclasses import dataclass

from shared.bus.base import Handler, M, R
from shared.bus.core import Dispatcher, Reply, Tracing, decode_reply, decode_stored, encode, work_stream
from shared.contracts import ErrorReply, Message
from shared.errors import BusError, BusUnavailable, NoResponders, RequestTimeout
from shared.subjects import matches, stream_for
from shared.telemetry import bus_metrics


@dataclass
class _Sub:
    id: int
    pattern: str
    queue: str | None
    message_type: type[Message]
    handler: Handler
    bus: MemoryBus

    async def unsubscribe(self) -> None:
        self.bus._subs.pop(self.id, None)


@dataclass
class _WorkItem:
    subject: str
    data: bytes
    headers: dict[str, str]
    deliveries: int = 0


@dataclass
class _Consumer:
    bus: MemoryBus
    loop: asyncio.Task[None] | None = None

    async def unsubscribe(self) -> None:
        if self.loop is not None:
            self.loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop


class MemoryBus:
    """Delivers messages to subscribers in this process, through the same dispatcher as NATS."""

    def __init__(self, service: str = "test", *, default_timeout_s: float = 1.0, seed: int = 0) -> None:
        self._tracing = Tracing()
        self._dispatcher = Dispatcher(service, bus_metrics(), self._tracing)
        self._metrics = bus_metrics()
        self._service = service
        self._subs: dict[int, _Sub] = {}
        self._ids = itertools.count()
        self._stored: dict[str, deque[bytes]] = {}
        self._tasks: set[asyncio.Task[Reply | None]] = set()
        self._timeout_s = default_timeout_s
        self._random = random.Random(seed)
        self._closed = False
        self.published: list[tuple[str, Message]] = []
        # Work-queue items outlive a consumer (as JetStream's do), so a test can "restart" one.
        self._work: list[_WorkItem] = []
        self._work_ready = asyncio.Event()
        self._consumers: list[_Consumer] = []

    @property
    def is_connected(self) -> bool:
        return not self._closed

    def _targets(self, subject: str) -> list[_Sub]:
        plain: list[_Sub] = []
        groups: dict[str, list[_Sub]] = defaultdict(list)
        for sub in self._subs.values():
            if matches(sub.pattern, subject):
                if sub.queue is None:
                    plain.append(sub)
                else:
                    groups[sub.queue].append(sub)
        return plain + [self._random.choice(members) for members in groups.values()]

    async def publish(self, subject: str, message: Message) -> None:
        if self._closed:
            raise BusUnavailable("memory bus is closed")
        with self._tracing.sending(subject, message) as headers:
            self._publish(subject, message, headers)

    def _publish(self, subject: str, message: Message, headers: dict[str, str]) -> None:
        data = encode(message)
        self.published.append((subject, message))
        self._metrics.published.labels(self._service, message.type).inc()
        spec = stream_for(subject)
        if spec is not None and spec.work_queue:
            self._work.append(_WorkItem(subject, data, headers))
            self._work_ready.set()
            return
        if spec is not None:
            self._stored.setdefault(subject, deque(maxlen=spec.max_msgs_per_subject)).append(data)
        for sub in self._targets(subject):
            task = asyncio.create_task(self._deliver(sub, subject, data, headers, reply_expected=False))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, sub: _Sub, subject: str, data: bytes, headers: dict[str, str], *, reply_expected: bool
    ) -> Reply | None:
        return await self._dispatcher.dispatch(
            pattern=sub.pattern,
            subject=subject,
            data=data,
            headers=headers,
            message_type=sub.message_type,
            handler=sub.handler,
            reply_expected=reply_expected,
        )

    async def subscribe(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        queue: str | None = None,
        max_in_flight: int = 1,
    ) -> _Sub:
        """Every delivery runs in its own task here, so ``max_in_flight`` needs no enforcing."""
        sub = _Sub(next(self._ids), subject, queue, message_type, handler, self)
        self._subs[sub.id] = sub
        return sub

    async def request(
        self, subject: str, message: Message, reply_type: type[R], *, timeout_s: float | None = None
    ) -> R:
        if self._closed:
            raise BusUnavailable("memory bus is closed")
        targets = self._targets(subject)
        if not targets:
            raise NoResponders(subject)
        timeout = timeout_s or self._timeout_s
        with self._tracing.sending(subject, message, request=True) as headers:
            try:
                reply = await asyncio.wait_for(
                    self._deliver(targets[0], subject, encode(message), headers, reply_expected=True), timeout
                )
            except TimeoutError as exc:
                raise RequestTimeout(subject, timeout) from exc
        if reply is None:
            raise RequestTimeout(subject, timeout)
        return decode_reply(encode(reply.message), reply_type, subject)

    async def gather(
        self, subject: str, message: Message, reply_type: type[R], *, timeout_s: float, max_replies: int | None = None
    ) -> list[R]:
        if self._closed:
            raise BusUnavailable("memory bus is closed")
        targets = self._targets(subject)
        if not targets:
            raise NoResponders(subject)
        with self._tracing.sending(subject, message, request=True) as headers:
            pending = {
                asyncio.ensure_future(self._deliver(t, subject, encode(message), headers, reply_expected=True))
                for t in targets
            }
        replies: list[R] = []
        done, late = await asyncio.wait(pending, timeout=timeout_s)
        for task in late:
            task.cancel()
        for task in done:
            reply = task.result()
            if reply is None or (max_replies is not None and len(replies) >= max_replies):
                continue
            with contextlib.suppress(BusError):  # an error reply counts as no reply, as on NATS
                replies.append(decode_reply(encode(reply.message), reply_type, subject))
        return replies

    async def latest(self, subject_filter: str, message_type: type[M]) -> list[M]:
        stored = ((s, kept[-1]) for s, kept in sorted(self._stored.items()) if kept and matches(subject_filter, s))
        return decode_stored(stored, message_type, metrics=self._metrics, service=self._service, pattern=subject_filter)

    async def consume(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        durable: str,
        ack_wait_s: float = 30.0,
        max_deliver: int = 5,
        retry_delay_s: float = 5.0,
    ) -> _Consumer:
        work_stream(subject)  # refuses a subject outside a work queue, as NATS does
        consumer = _Consumer(self)

        async def loop() -> None:
            while True:
                item = next((w for w in self._work if matches(subject, w.subject)), None)
                if item is None:
                    self._work_ready.clear()
                    await self._work_ready.wait()
                    continue
                item.deliveries += 1
                self._work.remove(item)
                try:
                    reply = await self._dispatcher.dispatch(
                        pattern=subject,
                        subject=item.subject,
                        data=item.data,
                        headers=item.headers,
                        message_type=message_type,
                        handler=handler,
                        reply_expected=True,
                    )
                except asyncio.CancelledError:
                    self._work.insert(0, item)  # not acknowledged: the next consumer gets it
                    raise
                if reply is not None and isinstance(reply.message, ErrorReply) and item.deliveries < max_deliver:
                    await asyncio.sleep(retry_delay_s)
                    self._work.append(item)

        consumer.loop = asyncio.create_task(loop(), name=f"consume {subject}")
        self._consumers.append(consumer)
        return consumer

    def pending_work(self) -> int:
        """Work-queue items not yet acknowledged (tests only)."""
        return len(self._work)

    async def settle(self) -> None:
        """Wait until every delivery started so far has finished (tests only)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def drain(self) -> None:
        for consumer in self._consumers:
            await consumer.unsubscribe()
        self._consumers.clear()
        await self.settle()
        self._closed = True
        self._subs.clear()

    def reopen(self) -> None:
        """Connect again after ``drain`` (tests: a service restarting on the same bus and its stored work)."""
        self._closed = False
