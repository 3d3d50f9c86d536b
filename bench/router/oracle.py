"""The bound: a policy that knows every worker's exact remaining work (the simulator's ground truth).

For each candidate with room it replays the worker's future (running requests' remaining service,
the queue's exact service and load times, the evictions) with this request added, and picks the
worker where the request would finish first, its own switch included. It sees through stale
statuses, the latency average and the catalog's guesses. It never holds a request back for a full
worker (``Pools`` shows those too): when a request sent later would finish depends on the requests
waiting in the router ahead of it and on decisions not made yet, so no exact figure exists. And it
is greedy (it does not reserve a worker for the requests still to come), so it bounds what a
router can do for each request given the present, not every router.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from bench.router.worker import Request, SimWorker
from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot
from shared.contracts import Route


class Oracle:
    NAME: ClassVar[str] = "oracle"

    def __init__(self, workers: Mapping[str, SimWorker], request_of: Callable[[str], Request],
                 now: Callable[[], float]) -> None:
        self._workers = workers
        self._request_of = request_of
        self._now = now

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot], rng: random.Random
    ) -> Choice | None:
        candidates = [w for w in candidates if w.has_room]
        if not candidates:
            return None
        now = self._now()
        exact = self._request_of(request.request_id)
        finish = {w.worker_id: self._workers[w.worker_id].finish_time(exact, now) for w in candidates}
        best = min(finish, key=lambda worker_id: (finish[worker_id], worker_id))
        return Choice(best, Route.LEAST_LOADED, f"finishes first (in {finish[best] - now:.2f} s)")
