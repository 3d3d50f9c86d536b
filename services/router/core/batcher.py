"""Dynamic batching of embedding requests: up to ``max_size`` for one model within ``window_s``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Batch(Generic[T]):
    model: str
    opened_at: float
    items: list[T] = field(default_factory=list)


class Batcher(Generic[T]):
    """Collects items per model; a batch is ready when full or when its window has passed."""

    def __init__(self, max_size: int = 4, window_s: float = 0.1) -> None:
        self.max_size = max_size
        self.window_s = window_s
        self._open: dict[str, Batch[T]] = {}

    def add(self, model: str, item: T, now: float) -> Batch[T] | None:
        """Add ``item``; returns the batch if this filled it."""
        batch = self._open.get(model)
        if batch is None:
            batch = self._open[model] = Batch(model, now)
        batch.items.append(item)
        if len(batch.items) >= self.max_size:
            del self._open[model]
            return batch
        return None

    def due(self, now: float) -> list[Batch[T]]:
        """Batches whose window has passed, removed from the batcher."""
        ready = [b for b in self._open.values() if now - b.opened_at >= self.window_s]
        for batch in ready:
            del self._open[batch.model]
        return ready

    def next_due_at(self) -> float | None:
        return min((b.opened_at + self.window_s for b in self._open.values()), default=None)

    def items(self) -> list[T]:
        """Every item waiting in an open batch."""
        return [item for batch in self._open.values() for item in batch.items]

    def flush(self) -> list[Batch[T]]:
        ready = list(self._open.values())
        self._open.clear()
        return ready
