"""The discrete-event simulation: open-loop arrivals, the real router core placing them, simulated workers.

Virtual time, deterministic for a seed. The router side is what ``services/router/service.py``
does around the core: every request enters a first-come-first-served queue, and the queue is
pumped (each waiting request offered to ``Pools.place`` in order, skipping a model that just found
no room) on every arrival, every answer and every status. Workers report a ``WorkerStatus`` after
every change (or at most every ``status_interval_s``, as the real worker's throttle does), plus a
heartbeat each second.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.router.fleet import BODIES, CATALOG, JITTER, POPULARITY, Fleet
from bench.router.oracle import Oracle
from bench.router.worker import Request, SimWorker
from services.router.core.model import Placement, PlacementRequest, Wait
from services.router.core.policies import RoutingPolicy, make_policy
from services.router.core.policies.affinity import DEFAULT_GIVE_WAY_FACTOR
from services.router.core.pools import Pools, PoolSettings
from services.worker.core.device import MB_PER_GB
from shared.contracts import WorkerStatus
from shared.modelgroups import ModelCatalog

RAMP_FROM = 0.1
"""The first ``ramp`` requests arrive at a rate rising from this fraction of the target to all of it."""
HEARTBEAT_S = 1.0
"""A worker with nothing to report still sends its status this often (routers forget it after 3 s)."""


def make_requests(
    count: int,
    rate: float,
    seed: int,
    *,
    ramp: int = 0,
    catalog: ModelCatalog = CATALOG,
    popularity: Mapping[str, float] = POPULARITY,
) -> list[Request]:
    """Poisson arrivals at ``rate`` per second, groups drawn by ``popularity``.

    The draws depend on ``seed`` only: every policy sees the same requests, and every load the same
    sequence at a different pace (gaps are unit exponentials divided by ``rate``).
    """
    rng = random.Random(f"bench.router arrivals {seed}")
    groups = [g for g in catalog.groups if popularity.get(g.id, 0.0) > 0]
    weights = [popularity[g.id] for g in groups]
    requests = []
    now = 0.0
    for index in range(count):
        pace = rate if index >= ramp else rate * (RAMP_FROM + (1 - RAMP_FROM) * index / ramp)
        now += rng.expovariate(1.0) / pace
        group = rng.choices(groups, weights)[0]
        model = group.models[rng.randrange(len(group.models))]
        placement = PlacementRequest(
            request_id=str(index),
            kind=model.kind,
            model=model.id,
            group=group.id,
            group_load_s=group.load_time_s,
            cpu_reload_fraction=catalog.cpu_reload_fraction,
            expected_latency_s=model.latency_s,
            group_vram_mb=math.ceil(group.vram_gb * MB_PER_GB),
        )
        requests.append(Request(index, now, group.id, model.id, model.kind, BODIES[model.kind],
                                rng.getrandbits(63), placement))
    return requests


@dataclass(frozen=True)
class Variant:
    """One row's router: a policy and the settings it runs with."""

    policy: str
    label: str = ""
    worker_queue_limit: int = PoolSettings.worker_queue_limit
    status_interval_s: float = 0.0
    give_way_factor: float = DEFAULT_GIVE_WAY_FACTOR

    @property
    def name(self) -> str:
        return self.label or self.policy


@dataclass
class RunResult:
    variant: Variant
    fleet: str
    load: float
    rate: float
    seed: int
    warmup: int
    latencies: list[float]
    """Arrival to answer, seconds, of every measured request."""
    window_s: float
    completed_in_window: int
    arrived_in_window: int
    switches_in_window: int
    router_wait: list[float] = field(default_factory=list)
    """Time each measured request waited in the router's queue."""
    served: dict[str, list[int]] = field(default_factory=dict)
    """Measured requests per group, per worker (index = GPU)."""


class Simulation:
    def __init__(
        self,
        fleet: Fleet,
        variant: Variant,
        requests: Sequence[Request],
        *,
        seed: int,
        warmup: int,
        load: float = 0.0,
        rate: float = 0.0,
        catalog: ModelCatalog = CATALOG,
        jitter: float = JITTER,
    ) -> None:
        self.fleet = fleet
        self.variant = variant
        self.requests = requests
        self.warmup = warmup
        self.load = load
        self.rate = rate
        self.workers = [SimWorker(i, spec, catalog, jitter=jitter) for i, spec in enumerate(fleet.gpus)]
        self.by_id = {w.worker_id: w for w in self.workers}
        self.pools = Pools(PoolSettings(worker_queue_limit=variant.worker_queue_limit))
        self.now = 0.0
        self.policy: RoutingPolicy
        if variant.policy == Oracle.NAME:
            self.policy = Oracle(self.by_id, lambda request_id: self.requests[int(request_id)], lambda: self.now)
        else:
            self.policy = make_policy(variant.policy, variant.give_way_factor)
        self.rng = random.Random(f"bench.router policy {seed}")
        self.seed = seed
        self.queues: dict[str, deque[Request]] = {}
        self.queued = 0
        self.sent_at = [math.nan] * len(requests)
        self.done_at = [math.nan] * len(requests)
        self.where = [-1] * len(requests)
        self.completed = 0
        self.events: list[tuple[float, int, int, WorkerStatus | None]] = []
        """(time, seq, worker index, status to deliver or None for a throttled send), a heap."""
        self._seq = 0

    # ------------------------------------------------------------------ router side

    def pump(self) -> None:
        """Offer waiting requests to the core, oldest first; a model that found no room is skipped."""
        if not self.queued:
            return
        waiting: set[str] = set()
        while True:
            heads = [q[0] for model, q in self.queues.items() if q and model not in waiting]
            if not heads:
                return
            request = min(heads, key=lambda r: r.index)
            decision = self.pools.place(request.placement, self.now, self.policy, self.rng)
            if isinstance(decision, Wait):
                waiting.add(request.model)
                continue
            if not isinstance(decision, Placement):
                raise RuntimeError(f"request {request.index} cannot be placed: {decision}")
            self.queues[request.model].popleft()
            self.queued -= 1
            self._send(request, decision.worker_id)

    def _send(self, request: Request, worker_id: str) -> None:
        worker = self.by_id[worker_id]
        self.pools.on_sent(worker_id, self.now, request=request.placement)
        self.sent_at[request.index] = self.now
        self.where[request.index] = worker.index
        worker.submit(request, self.now)
        self._changed(worker)

    def _deliver(self, status: WorkerStatus) -> None:
        self.pools.on_status(status, self.now)

    # ------------------------------------------------------------------ worker side

    def _changed(self, worker: SimWorker) -> None:
        """The worker's state changed: it reports now, or when its throttle allows."""
        interval = self.variant.status_interval_s
        if interval <= 0 or self.now - worker.last_status_at >= interval:
            self._emit(worker)
        elif not worker.status_scheduled:
            worker.status_scheduled = True
            self._push(worker.last_status_at + interval, worker.index, None)

    def _emit(self, worker: SimWorker) -> None:
        worker.last_status_at = self.now
        worker.status_scheduled = False
        self._deliver(worker.status())

    def _push(self, at: float, worker: int, status: WorkerStatus | None) -> None:
        self._seq += 1
        heapq.heappush(self.events, (at, self._seq, worker, status))

    # ------------------------------------------------------------------ the loop

    def run(self) -> RunResult:
        requests = self.requests
        for worker in self.workers:
            self._emit(worker)
        next_heartbeat = HEARTBEAT_S
        arrival = 0
        switches_start = switches_end = 0
        while self.completed < len(requests):
            next_arrival = requests[arrival].arrival if arrival < len(requests) else math.inf
            worker = min(self.workers, key=lambda w: w.next_event_at())
            next_worker = worker.next_event_at()
            next_event = self.events[0][0] if self.events else math.inf
            soonest = min(next_worker, next_arrival, next_event, next_heartbeat)
            self.now = soonest
            if next_worker == soonest:
                for done in worker.step():
                    self.done_at[done.request.index] = self.now
                    self.completed += 1
                    self.pools.on_done(worker.worker_id, self.now, ok=True,
                                       request_id=done.request.placement.request_id, service_s=done.service_s)
                self._changed(worker)
            elif next_event == soonest:
                _, _, index, status = heapq.heappop(self.events)
                if status is None:
                    self._emit(self.workers[index])
            elif next_arrival == soonest:
                request = requests[arrival]
                if arrival == self.warmup:
                    switches_start = sum(w.gpu.switches for w in self.workers)
                if arrival == len(requests) - 1:
                    switches_end = sum(w.gpu.switches for w in self.workers)
                arrival += 1
                self.queues.setdefault(request.model, deque()).append(request)
                self.queued += 1
            else:
                next_heartbeat += HEARTBEAT_S
                for worker in self.workers:
                    if self.now - worker.last_status_at >= HEARTBEAT_S:
                        self._emit(worker)
            self.pump()
        return self._result(switches_end - switches_start)

    def _result(self, switches: int) -> RunResult:
        requests = self.requests
        measured = requests[self.warmup:]
        start, end = measured[0].arrival, measured[-1].arrival
        served: dict[str, list[int]] = {}
        for r in measured:
            served.setdefault(r.group, [0] * len(self.workers))[self.where[r.index]] += 1
        return RunResult(
            variant=self.variant,
            fleet=self.fleet.name,
            load=self.load,
            rate=self.rate,
            seed=self.seed,
            warmup=self.warmup,
            latencies=[self.done_at[r.index] - r.arrival for r in measured],
            window_s=end - start,
            completed_in_window=sum(1 for t in self.done_at if start <= t <= end),
            arrived_in_window=len(measured),
            switches_in_window=switches,
            router_wait=[self.sent_at[r.index] - r.arrival for r in measured],
            served=served,
        )
