"""The console's live events: the NATS events a page shows, fanned out to each open event stream.

Pure asyncio (no NATS, no HTTP): the app factory feeds ``EventHub.publish`` from its subscriptions and
``routes/events.py`` turns a ``Subscription`` into server-sent events. A reader too slow to keep up
loses events, never the gateway's memory: its queue is bounded and it is told to re-read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shared.contracts import (
    AuditRecord,
    ConfigChanged,
    GpuHealthChanged,
    Inventory,
    Message,
    RunProgress,
    WorkerStatus,
)
from shared.subjects import (
    AUDIT_ALL,
    CONFIG_CHANGED,
    GPU_HEALTH_ALL,
    INVENTORY_ALL,
    ORCHESTRATOR_PROGRESS,
    WORKER_STATUS_ALL,
)

EVENT_KINDS: dict[str, tuple[str, type[Message]]] = {
    "inventory": (INVENTORY_ALL, Inventory),
    "gpu_health": (GPU_HEALTH_ALL, GpuHealthChanged),
    "config": (CONFIG_CHANGED, ConfigChanged),
    "progress": (ORCHESTRATOR_PROGRESS, RunProgress),
    "worker": (WORKER_STATUS_ALL, WorkerStatus),
    "audit": (AUDIT_ALL, AuditRecord),
}
"""Event name on the stream → the NATS subject it comes from and its contract."""

RESYNC = "resync"
"""Sent to a reader that missed events: re-read the state over HTTP."""


class TooManyStreams(Exception):
    """Every event-stream slot is taken."""


@dataclass(eq=False)
class Subscription:
    """One open event stream: what it has not read yet."""

    queue: asyncio.Queue[tuple[str, str]]
    overflowed: bool = False

    async def next(self, timeout_s: float) -> tuple[str, str] | None:
        """The next (event, JSON) pair; ``(RESYNC, "{}")`` once after a loss; None when ``timeout_s`` passed."""
        if self.overflowed:
            self.overflowed = False
            return (RESYNC, "{}")
        try:
            return await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return None


@dataclass
class EventHub:
    """Fans events out to every open stream; at most ``streams_max`` streams, ``queue_max`` events each."""

    streams_max: int = 64
    queue_max: int = 512
    _streams: set[Subscription] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self._streams)

    def open(self) -> Subscription:
        if len(self._streams) >= self.streams_max:
            raise TooManyStreams(f"{self.streams_max} event streams are open already (GPUPLANE_EVENT_STREAMS_MAX)")
        subscription = Subscription(asyncio.Queue(self.queue_max))
        self._streams.add(subscription)
        return subscription

    def close(self, subscription: Subscription) -> None:
        self._streams.discard(subscription)

    def publish(self, kind: str, message: Message) -> None:
        if not self._streams:
            return
        data = message.model_dump_json()
        for subscription in self._streams:
            try:
                subscription.queue.put_nowait((kind, data))
            except asyncio.QueueFull:
                # Dropping the oldest keeps the newest state, which is what a page shows.
                subscription.queue.get_nowait()
                subscription.queue.put_nowait((kind, data))
                subscription.overflowed = True


def sse_frame(event: str, data: str) -> bytes:
    """One server-sent event. ``data`` is one line of JSON (no newline can split it)."""
    return f"event: {event}\ndata: {data}\n\n".encode()
