"""The router's bounded priority queue: high before normal before low, first come first served within."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.contracts import Priority

T = TypeVar("T")

ORDER = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


class QueueFull(Exception):
    """The queue holds ``limit`` items already."""


@dataclass
class Entry(Generic[T]):
    item: T
    priority: Priority
    enqueued_at: float
    seq: int


class PriorityQueue(Generic[T]):
    """Bounded across all priorities. A retried request goes back to the front of its priority."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lanes: dict[Priority, deque[Entry[T]]] = {p: deque() for p in ORDER}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def depths(self) -> dict[str, int]:
        return {p.value: len(self._lanes[p]) for p in ORDER}

    def push(self, item: T, priority: Priority, now: float, *, front: bool = False) -> Entry[T]:
        """Add ``item``; ``QueueFull`` when the queue is at its limit (a retry at the front is never refused)."""
        if not front and len(self) >= self.limit:
            raise QueueFull(f"{len(self)} requests are queued already (limit {self.limit})")
        entry = Entry(item, priority, now, next(self._seq))
        if front:
            self._lanes[priority].appendleft(entry)
        else:
            self._lanes[priority].append(entry)
        return entry

    def __iter__(self) -> Iterator[Entry[T]]:
        """Entries in the order they should be served."""
        for priority in ORDER:
            yield from list(self._lanes[priority])

    def remove(self, entry: Entry[T]) -> None:
        self._lanes[entry.priority].remove(entry)


def retry_after_s(queued: int, slots: int, latency_s: float) -> float:
    """A client's sensible wait before retrying: how long the queue ahead takes to drain, at least 1 s."""
    return max(1.0, queued * max(latency_s, 0.01) / max(slots, 1))
