"""The worker's admission and scheduling: a priority queue in front of ``slots`` execution slots.

Pure: time comes in as ``now`` (seconds on any monotonic clock). The async shell submits a
ticket per task, starts whatever ``start_ready`` returns, and reports each end with ``finish``.

Rules: high before normal before low, first come first served within a priority; at most
``slots`` tickets run at once; an exclusive ticket starts only when nothing runs, and while it
runs nothing else starts. An exclusive ticket at the head of the queue holds back those behind
it, so a busy worker cannot starve it.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from shared.contracts import Priority

PRIORITY_RANK: dict[Priority, int] = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
DEFAULT_LATENCY_ALPHA = 0.2


@dataclass(frozen=True)
class Ticket:
    id: int
    priority: Priority
    exclusive: bool
    label: str
    """What status reports for an exclusive ticket (the request id)."""
    requests: int
    submitted_at: float


class Pool:
    """Queue, slots and the counters a worker's status reports."""

    def __init__(self, slots: int, *, now: float = 0.0, latency_alpha: float = DEFAULT_LATENCY_ALPHA) -> None:
        if slots < 1:
            raise ValueError(f"a pool needs at least one slot, not {slots}")
        self.slots = slots
        self._alpha = latency_alpha
        self._ids = itertools.count(1)
        self._heap: list[tuple[int, int, int]] = []
        self._queued: dict[int, Ticket] = {}
        self._running: dict[int, Ticket] = {}
        self.request_count = 0
        self.error_count = 0
        self.group_switches = 0
        self.latency_avg_s = 0.0
        self._latency_samples = 0
        self._busy_s = 0.0
        self._last_s = now
        self._window_start_s = now

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def queue_depth(self) -> int:
        return len(self._queued)

    @property
    def idle(self) -> bool:
        return not self._running and not self._queued

    @property
    def exclusive_label(self) -> str | None:
        """The label of the exclusive ticket running, if one is."""
        return next((t.label for t in self._running.values() if t.exclusive), None)

    def running(self, ticket: int) -> bool:
        return ticket in self._running

    def submit(
        self, priority: Priority, *, now: float, exclusive: bool = False, label: str = "", requests: int = 1
    ) -> int:
        """Queue a ticket; returns its id. Call ``start_ready`` next."""
        self._advance(now)
        ticket = Ticket(next(self._ids), priority, exclusive, label, max(1, requests), now)
        self._queued[ticket.id] = ticket
        heapq.heappush(self._heap, (PRIORITY_RANK[priority], ticket.id, ticket.id))
        return ticket.id

    def withdraw(self, ticket: int) -> bool:
        """Drop a ticket still queued (its sender gave up); False if it is not queued."""
        return self._queued.pop(ticket, None) is not None

    def cancel(self, ticket: int, now: float) -> None:
        """Forget a ticket, queued or running, without counting it (its sender went away)."""
        self._advance(now)
        self._queued.pop(ticket, None)
        self._running.pop(ticket, None)

    def start_ready(self, now: float) -> list[int]:
        """Move every ticket that may start now from the queue to the slots, in order."""
        self._advance(now)
        started: list[int] = []
        while self._heap:
            _, _, head = self._heap[0]
            ticket = self._queued.get(head)
            if ticket is None:
                heapq.heappop(self._heap)
                continue
            if any(t.exclusive for t in self._running.values()):
                break
            if ticket.exclusive:
                if self._running:
                    break
            elif len(self._running) >= self.slots:
                break
            heapq.heappop(self._heap)
            del self._queued[head]
            self._running[head] = ticket
            started.append(head)
            if ticket.exclusive:
                break
        return started

    def finish(
        self, ticket: int, now: float, *, ok: bool, service_s: float | None = None, loaded_group: bool = False
    ) -> None:
        """A running ticket ended. ``service_s`` (group load excluded) feeds the latency average."""
        self._advance(now)
        done = self._running.pop(ticket)
        self.request_count += done.requests
        if not ok:
            self.error_count += done.requests
        if loaded_group:
            self.group_switches += 1
        if ok and service_s is not None:
            self._observe_latency(max(0.0, service_s))

    def _observe_latency(self, sample_s: float) -> None:
        self._latency_samples += 1
        if self._latency_samples == 1:
            self.latency_avg_s = sample_s
        else:
            self.latency_avg_s += self._alpha * (sample_s - self.latency_avg_s)

    def _advance(self, now: float) -> None:
        if now > self._last_s:
            if self._running:
                self._busy_s += now - self._last_s
            self._last_s = now

    def take_utilization(self, now: float) -> float:
        """Percent of the time since the previous call that at least one ticket ran; starts a new window."""
        self._advance(now)
        window = now - self._window_start_s
        if window > 0:
            percent = 100.0 * self._busy_s / window
        else:
            percent = 100.0 if self._running else 0.0
        self._busy_s = 0.0
        self._window_start_s = now
        return min(100.0, max(0.0, percent))
