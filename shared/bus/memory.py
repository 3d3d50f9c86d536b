"""An in-process bus with NATS semantics (wildcards, queue groups, no-responders) for unit tests."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict, deque
from dataclasses import dataclass

from shared.bus.base import Handler, M, R
from shared.bus.core import Dispatcher, Reply, decode_reply, decode_stored, encode, outgoing_headers
from shared.contracts import Message
from shared.errors import BusUnavailable, NoResponders, RequestTimeout
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


class MemoryBus:
    """Delivers messages to subscribers in this process, through the same dispatcher as NATS."""

    def __init__(self, service: str = "test", *, default_timeout_s: float = 1.0, seed: int = 0) -> None:
        self._dispatcher = Dispatcher(service, bus_metrics())
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
        headers = outgoing_headers(message)
        data = encode(message)
        self.published.append((subject, message))
        self._metrics.published.labels(self._service, message.type).inc()
        spec = stream_for(subject)
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
        self, subject: str, message_type: type[M], handler: Handler[M], *, queue: str | None = None
    ) -> _Sub:
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
        try:
            reply = await asyncio.wait_for(
                self._deliver(targets[0], subject, encode(message), outgoing_headers(message), reply_expected=True),
                timeout,
            )
        except TimeoutError as exc:
            raise RequestTimeout(subject, timeout) from exc
        if reply is None:
            raise RequestTimeout(subject, timeout)
        return decode_reply(encode(reply.message), reply_type, subject)

    async def latest(self, subject_filter: str, message_type: type[M]) -> list[M]:
        stored = ((s, kept[-1]) for s, kept in sorted(self._stored.items()) if kept and matches(subject_filter, s))
        return decode_stored(
            stored, message_type, metrics=self._metrics, service=self._service, pattern=subject_filter
        )

    async def settle(self) -> None:
        """Wait until every delivery started so far has finished (tests only)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def drain(self) -> None:
        await self.settle()
        self._closed = True
        self._subs.clear()
