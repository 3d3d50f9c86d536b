"""Classic load balancers, for comparison and for users who want them: they ignore groups and speed,
and take any worker with room rather than wait for a better one."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot
from services.router.core.policies.ties import least
from shared.contracts import Route


class RoundRobin:
    NAME: ClassVar[str] = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot], rng: random.Random
    ) -> Choice | None:
        candidates = [w for w in candidates if w.has_room]
        if not candidates:
            return None
        ordered = sorted(candidates, key=lambda w: w.worker_id)
        worker = ordered[self._turn % len(ordered)]
        self._turn += 1
        return Choice(worker.worker_id, Route.LEAST_LOADED, "round robin")


class RandomChoice:
    NAME: ClassVar[str] = "random"

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot], rng: random.Random
    ) -> Choice | None:
        candidates = [w for w in candidates if w.has_room]
        if not candidates:
            return None
        worker = rng.choice(sorted(candidates, key=lambda w: w.worker_id))
        return Choice(worker.worker_id, Route.LEAST_LOADED, "random")


class LeastConnections:
    NAME: ClassVar[str] = "least_connections"

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot], rng: random.Random
    ) -> Choice | None:
        # Equal loads are a tie for ``rng`` to break: by id, equal workers would not share the work.
        best = least([w for w in candidates if w.has_room], lambda w: (w.load,), rng)
        if best is None:
            return None
        worker = best[0]
        return Choice(worker.worker_id, Route.LEAST_LOADED, f"fewest requests ({worker.load})")
