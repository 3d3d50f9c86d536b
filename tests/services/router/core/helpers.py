"""Small helpers shared by the pool tests: pools built from statuses, and a recording fake policy."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot
from services.router.core.pools import Pools, PoolSettings, WorkerRecord
from shared.contracts import Route, WorkerStatus


def pools_of(*statuses: WorkerStatus, now: float = 0.0, **settings: Any) -> Pools:
    # A shallow worker queue (the router's default is deep) makes "full" easy to set up.
    pools = Pools(PoolSettings(**{"worker_queue_limit": 8, **settings}))
    for status in statuses:
        pools.on_status(status, now)
    return pools


def record(pools: Pools, worker_id: str = "w0") -> WorkerRecord:
    return pools.workers[worker_id]


def rng() -> random.Random:
    return random.Random(1)


@dataclass
class RecordingPolicy:
    """A fake policy: remembers the candidates it was shown and picks the first worker with room (or none)."""

    NAME: ClassVar[str] = "recording"
    pick: str | None = "first"
    seen: list[list[WorkerSnapshot]] = field(default_factory=list)

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot], rng: random.Random
    ) -> Choice | None:
        self.seen.append(list(candidates))
        roomy = [w for w in candidates if w.has_room]
        if self.pick is None or not roomy:
            return None
        worker = min(roomy, key=lambda w: w.worker_id)
        return Choice(worker.worker_id, Route.AFFINITY, "the fake's pick")

    @property
    def ids(self) -> list[str]:
        return sorted(w.worker_id for w in self.seen[-1])
