"""A simulated worker on a virtual clock: the worker's real ``Pool`` (admission, slots, latency
average) and ``SimGpu`` (VRAM, switches, service times), scheduled as the simulated backend does.

The backend's rules (``services/worker/backends/simulated.py``), reproduced event by event:

- a request holding a slot serves at once when its group is loaded and nothing is loading;
- a request whose group is not loaded starts the load at once, evicting least recently used
  groups no request is serving; while any load runs, nothing else starts serving (requests already
  serving go on);
- a load that would have to evict a group still serving waits (a *switch waiting*) until those
  requests end; while any switch waits, requests for loaded groups wait too, so a busy group cannot
  starve a switch;
- waiters are re-examined in the order they began to wait, after every load and every request end.

What differs from the real backend: each request's service time is drawn from its own seeded
generator (``Request.seed``) rather than from one generator per worker, so the time a request takes
on a given GPU does not depend on the order of draws; that is what lets the oracle know it exactly.
"""

from __future__ import annotations

import copy
import heapq
import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.router.fleet import GpuSpec, make_gpu
from services.router.core.model import PlacementRequest
from services.worker.core.pool import Pool
from services.worker.core.simgpu import MustWait
from services.worker.core.status import BackendState, WorkerIdentity, build_status
from shared.contracts import InferenceKind, Priority, WorkerState, WorkerStatus
from shared.modelgroups import ModelCatalog

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
"""The ``at`` of every simulated status (nothing reads it; a fixed value keeps runs identical)."""


@dataclass(frozen=True)
class Request:
    """One client request: what it asks for and when, and the seed of its service-time noise."""

    index: int
    arrival: float
    group: str
    model: str
    kind: InferenceKind
    body: Mapping[str, Any]
    seed: int
    placement: PlacementRequest


@dataclass(frozen=True)
class Completion:
    request: Request
    at: float
    loaded_group: bool
    service_s: float
    """Its service alone, group load excluded: what the simulated engine's ``X-Gpuplane-Service-Ms`` says."""


class SimWorker:
    """One worker on one simulated GPU. Driven by ``submit`` and ``step``; reads no clock."""

    def __init__(self, index: int, spec: GpuSpec, catalog: ModelCatalog, *, jitter: float, now: float = 0.0) -> None:
        self.index = index
        self.worker_id = f"bench-cuda{index}"
        self.spec = spec
        self.slots = spec.worker_slots
        self.jitter = jitter
        self.pool = Pool(self.slots, now=now)
        self.gpu = make_gpu(spec, catalog)
        self.identity = WorkerIdentity(
            worker_id=self.worker_id, host="bench", device=f"cuda:{index}", backend="simulated",
            slots=self.slots, gpu_index=index, vram_total_mb=spec.vram_mb, speed=spec.speed,
        )
        self.models = self.gpu.holdable_models()
        self.sequence = 0
        self.tickets: dict[int, Request] = {}
        self.loaded_for: set[int] = set()
        self.service: dict[int, float] = {}
        self.serving: list[tuple[float, int]] = []
        """(end, ticket), a heap."""
        self.loading: int | None = None
        self.loading_until = math.inf
        self.switches_waiting = 0
        self.in_use: Counter[str] = Counter()
        self.waiters: list[list[Any]] = []
        """[ticket, is a switch waiting], in the order they began to wait."""
        self._notify = False
        self.last_status_at = -math.inf
        self.status_scheduled = False

    # ------------------------------------------------------------------ the shell

    def submit(self, request: Request, now: float) -> None:
        ticket = self.pool.submit(Priority.NORMAL, now=now)
        self.tickets[ticket] = request
        self._start_ready(now)

    def next_event_at(self) -> float:
        return min(self.serving[0][0] if self.serving else math.inf, self.loading_until)

    def step(self) -> list[Completion]:
        """Handle the next event (a load or a request ending); returns the requests it completed."""
        now = self.next_event_at()
        if now == math.inf:
            return []
        if self.loading_until <= now:
            ticket = self.loading
            assert ticket is not None
            self.loading, self.loading_until = None, math.inf
            self.in_use[self.tickets[ticket].group] += 1
            self._serve(ticket, now)
            self._wake(now)
            return []
        _, ticket = heapq.heappop(self.serving)
        request = self.tickets.pop(ticket)
        self.in_use[request.group] -= 1
        if self.in_use[request.group] <= 0:
            del self.in_use[request.group]
        self._wake(now)
        loaded = ticket in self.loaded_for
        self.loaded_for.discard(ticket)
        service_s = self.service.pop(ticket)
        self.pool.finish(ticket, now, ok=True, service_s=service_s, loaded_group=loaded)
        self._start_ready(now)
        return [Completion(request, now, loaded, service_s)]

    def status(self) -> WorkerStatus:
        self.sequence += 1
        backend = BackendState(
            groups_loaded=self.gpu.loaded, current_group=self.gpu.current_group,
            cpu_cached_groups=self.gpu.cpu_cached, models=self.models, vram_used_mb=self.gpu.vram_used_mb,
        )
        return build_status(self.identity, WorkerState.READY, self.pool, backend, sequence=self.sequence,
                            utilization_percent=None, at=EPOCH)

    def _start_ready(self, now: float) -> None:
        for ticket in self.pool.start_ready(now):
            go, waiting = self._try(ticket, False, now)
            if not go:
                self.waiters.append([ticket, waiting])
            if self._notify:
                self._wake(now)

    # ------------------------------------------------------------------ the backend

    def _try(self, ticket: int, waiting: bool, now: float) -> tuple[bool, bool]:
        """One turn of the backend's ``_acquire`` loop: (goes ahead, is a switch waiting)."""
        group = self.tickets[ticket].group
        if self.loading is not None:
            return False, waiting
        try:
            plan = self.gpu.plan_load(group, in_use=set(self.in_use))
        except MustWait:
            if not waiting:
                self.switches_waiting += 1
            return False, True
        others_waiting = self.switches_waiting - (1 if waiting else 0)
        if plan.already_loaded and others_waiting > 0:
            return False, waiting
        if waiting:
            self.switches_waiting -= 1
            self._notify = True
        if plan.already_loaded:
            self.gpu.touch(group)
            self.in_use[group] += 1
            self._serve(ticket, now)
        else:
            self.gpu.commit(plan)
            self.loaded_for.add(ticket)
            self.loading, self.loading_until = ticket, now + plan.load_s
        return True, waiting

    def _wake(self, now: float) -> None:
        """``notify_all``: every waiter tries again, in order; again while someone's exit notified."""
        self._notify = True
        while self._notify and self.waiters:
            self._notify = False
            still = []
            for entry in self.waiters:
                go, entry[1] = self._try(entry[0], entry[1], now)
                if not go:
                    still.append(entry)
            self.waiters = still
        self._notify = False

    def _serve(self, ticket: int, now: float) -> None:
        request = self.tickets[ticket]
        service_s = self.gpu.service_s(request.model, request.kind, request.body, 1,
                                       random.Random(request.seed), self.jitter)
        self.service[ticket] = service_s
        heapq.heappush(self.serving, (now + service_s, ticket))

    # ------------------------------------------------------------------ what the oracle asks

    def clone(self) -> SimWorker:
        twin = copy.copy(self)
        twin.pool = copy.deepcopy(self.pool)
        twin.gpu = copy.deepcopy(self.gpu, {id(self.gpu.catalog): self.gpu.catalog})
        twin.tickets = dict(self.tickets)
        twin.loaded_for = set(self.loaded_for)
        twin.service = dict(self.service)
        twin.serving = list(self.serving)
        twin.in_use = Counter(self.in_use)
        twin.waiters = [list(w) for w in self.waiters]
        return twin

    def finish_time(self, request: Request, now: float) -> float:
        """When ``request`` would complete if submitted now, nothing else arriving (exact: the
        worker is first come first served, so later arrivals cannot delay it)."""
        twin = self.clone()
        twin.submit(request, now)
        while True:
            if twin.next_event_at() == math.inf:
                raise RuntimeError(f"request {request.index} never completes on {self.worker_id}")
            for done in twin.step():
                if done.request is request:
                    return done.at
