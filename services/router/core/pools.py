"""The worker pools as one router sees them, and placement over them: filter, then a policy picks.

Everything here is driven by the caller: statuses and inventories in, ``now`` (monotonic seconds)
passed to every call. Load figures come from the workers themselves, so routers agree.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.router.core.circuit import CircuitBreaker
from services.router.core.filters import DEFAULT_FILTERS, Exclusion, Filter, first_refusal
from services.router.core.model import (
    CPU_DEVICE,
    Decision,
    Infeasible,
    Placement,
    PlacementRequest,
    Wait,
    WorkerSnapshot,
)
from services.router.core.policies.base import RoutingPolicy
from shared.contracts import Inventory, Route, WorkerState, WorkerStatus

DeviceKey = tuple[str, str]
"""(host, device), e.g. ("box", "cuda:1")."""


def device_label(host: str, device: str, many_hosts: bool) -> str:
    return f"{host}/{device}" if many_hosts else device


@dataclass
class WorkerRecord:
    status: WorkerStatus
    seen_at: float
    circuit: CircuitBreaker
    sent_since_status: int = 0
    outstanding: int = 0
    """Tasks this router sent and has no answer for yet."""

    @property
    def key(self) -> DeviceKey:
        return (self.status.host, self.status.device)

    def load(self) -> int:
        reported = self.status.in_flight + self.status.queue_depth
        return max(reported + self.sent_since_status, self.outstanding)


@dataclass
class PoolSettings:
    worker_timeout_s: float = 3.0
    worker_queue_limit: int = 1000
    """Requests a worker may have waiting beyond its slots before the router keeps them instead."""
    failure_threshold: int = 5
    reset_s: float = 60.0
    forget_after_s: float = 300.0


@dataclass
class Pools:
    settings: PoolSettings = field(default_factory=PoolSettings)
    workers: dict[str, WorkerRecord] = field(default_factory=dict)
    gpu_health: dict[tuple[str, int], tuple[bool, str | None]] = field(default_factory=dict)
    held: dict[DeviceKey, str] = field(default_factory=dict)
    """Devices an exclusive request runs on, and its id."""
    reserved: dict[DeviceKey, str] = field(default_factory=dict)
    """Devices an exclusive request waits for: nothing new starts there meanwhile."""
    filters: tuple[Filter, ...] = DEFAULT_FILTERS
    """Which workers a request may go to, in order (``services.router.core.filters``)."""

    # ------------------------------------------------------------------ inputs

    def on_status(self, status: WorkerStatus, now: float) -> str | None:
        """Record a worker's status. Returns why the tasks it had are lost, if they are: it stopped, or
        it restarted (its statuses come in order over one connection, so a lower sequence is a new process)."""
        record = self.workers.get(status.worker_id)
        lost: str | None = None
        if record is not None and status.sequence < record.status.sequence:
            lost = "it restarted"
        if status.state is WorkerState.STOPPED:
            lost = "it stopped"
        if record is None:
            record = self.workers[status.worker_id] = WorkerRecord(
                status, now, CircuitBreaker(self.settings.failure_threshold, self.settings.reset_s)
            )
        record.status = status
        record.seen_at = now
        record.sent_since_status = 0
        return lost

    def on_inventory(self, inv: Inventory) -> list[str]:
        """Take GPU health from a detector; returns the changes, in words."""
        changes = []
        seen = set()
        for gpu in inv.gpus:
            key = (inv.host, gpu.index)
            seen.add(key)
            before = self.gpu_health.get(key, (True, None))[0]
            self.gpu_health[key] = (gpu.healthy, gpu.health_reason)
            if before != gpu.healthy:
                changes.append(
                    f"{inv.host} cuda:{gpu.index} is {'healthy again' if gpu.healthy else 'unhealthy'}"
                    + (f" ({gpu.health_reason})" if gpu.health_reason else "")
                )
        gone = (False, "the detector no longer sees it")
        for key in [k for k in self.gpu_health if k[0] == inv.host and k not in seen]:
            if self.gpu_health[key] != gone:
                self.gpu_health[key] = gone
                changes.append(f"{key[0]} cuda:{key[1]} disappeared")
        return changes

    def expired(self, now: float) -> list[str]:
        """Workers that stopped or fell silent (their outstanding tasks are lost); forgets old ones."""
        lost = []
        for worker_id, record in list(self.workers.items()):
            silent = now - record.seen_at
            if silent > self.settings.forget_after_s:
                del self.workers[worker_id]
            if record.outstanding and not self.alive(record, now):
                lost.append(worker_id)
        return lost

    # ------------------------------------------------------------------ judgement

    def alive(self, record: WorkerRecord, now: float) -> bool:
        return record.status.state is not WorkerState.STOPPED and now - record.seen_at <= self.settings.worker_timeout_s

    def gpu_ok(self, record: WorkerRecord) -> tuple[bool, str | None]:
        index = record.status.gpu_index
        if record.status.device == CPU_DEVICE or index is None:
            return True, None
        return self.gpu_health.get((record.status.host, index), (True, None))

    def why_broken(self, record: WorkerRecord, now: float) -> str | None:
        """Why this worker cannot take work at all now (gone, not ready, sick GPU, open circuit), else None."""
        down = tuple(f for f in self.filters if f.EXCLUDES is Exclusion.DOWN)
        refusal = first_refusal(down, self, record, None, now)
        return None if refusal is None else refusal[1]

    def why_not(self, record: WorkerRecord, now: float) -> str | None:
        """Why this worker takes no new work now (None: it may), ignoring the model asked for."""
        refusal = first_refusal(self.filters, self, record, None, now)
        return None if refusal is None else refusal[1]

    def held_by(self, record: WorkerRecord) -> str | None:
        """The exclusive request that holds or waits for this worker's GPU, if any (busy, not broken)."""
        return self.held.get(record.key) or self.reserved.get(record.key) or record.status.exclusive_request

    def serves(self, record: WorkerRecord, request: PlacementRequest) -> bool:
        status = record.status
        return request.model in status.models or request.group in status.groups_loaded

    def room(self, record: WorkerRecord) -> bool:
        """Below slots plus the allowed queue; a worker that has not measured a request yet gets no
        queue, so a burst cannot bury a card whose speed nobody knows (the first answer tells)."""
        measured = record.status.request_count > 0 or record.status.latency_avg_s > 0
        queue = self.settings.worker_queue_limit if measured else 0
        return record.load() < record.status.slots + queue

    def snapshot(self, record: WorkerRecord) -> WorkerSnapshot:
        status = record.status
        return WorkerSnapshot(
            worker_id=status.worker_id,
            host=status.host,
            device=status.device,
            slots=status.slots,
            load=record.load(),
            groups_loaded=frozenset(status.groups_loaded),
            cpu_cached_groups=frozenset(status.cpu_cached_groups),
            current_group=status.current_group,
            latency_avg_s=status.latency_avg_s,
            speed=status.speed or 1.0,
            error_rate=status.error_count / status.request_count if status.request_count else 0.0,
            has_room=self.room(record),
        )

    def many_hosts(self) -> bool:
        return len({r.status.host for r in self.workers.values()}) > 1

    def devices(self) -> list[DeviceKey]:
        return sorted({r.key for r in self.workers.values() if r.status.device != CPU_DEVICE})

    # ------------------------------------------------------------------ placement

    def place(
        self,
        request: PlacementRequest,
        now: float,
        policy: RoutingPolicy,
        rng: random.Random,
        *,
        exclusive_gpu: str | None = None,
        known_model: bool = True,
    ) -> Decision:
        """Filter the workers, then let ``policy`` pick; exclusivity and CPU fallback are handled here."""
        serving = [r for r in self.workers.values() if self.serves(r, request)]
        if not serving and not known_model:
            offered = sorted({m for r in self.workers.values() for m in r.status.models})
            return Infeasible(
                f"no worker serves model {request.model!r}; models: {', '.join(offered) or 'none yet'}", "model"
            )
        if exclusive_gpu is not None:
            return self._place_exclusive(request, exclusive_gpu, now)

        reasons: list[str] = []
        # GPU workers that serve the model and are not down (they may be held or have failed this
        # request): while there is one, a wait has no deadline, unless every one failed it already.
        up: list[WorkerRecord] = []
        candidates: list[WorkerSnapshot] = []
        for record in self.workers.values():
            if record.status.device == CPU_DEVICE:
                continue  # CPU workers are only a fallback, below
            refusal = first_refusal(self.filters, self, record, request, now)
            if refusal is None:
                up.append(record)
                # Full workers stay in view: a policy may rather wait for the one that holds the group.
                candidates.append(self.snapshot(record))
                if not self.room(record):
                    reasons.append(
                        f"{record.status.worker_id}: full ({record.load()} requests for {record.status.slots} slots)"
                    )
                continue
            rule, why = refusal
            if rule.EXCLUDES is Exclusion.UNRELATED:
                continue
            if rule.EXCLUDES is Exclusion.BUSY:
                up.append(record)
            reasons.append(f"{record.status.worker_id}: {why}")
        if not serving:
            reasons.append(f"no worker serves {request.model} yet")

        if candidates:
            choice = policy.choose(request, candidates, rng)
            chosen = next((c for c in candidates if choice is not None and c.worker_id == choice.worker_id), None)
            if choice is None or chosen is None or not chosen.has_room:
                why_wait = f"waits for {choice.worker_id} ({choice.reason})" if choice is not None else "no room"
                return Wait((*reasons, why_wait))
            retry = request.attempt > 1 or bool(request.avoid)
            route = Route.RETRY if retry else choice.route
            reason = f"{choice.reason}; earlier attempt failed" if retry else choice.reason
            return Placement(choice.worker_id, route, reason)
        retry_exhausted = bool(up) and all(r.status.worker_id in request.avoid for r in up)
        if not up or retry_exhausted:
            fallback = self._cpu_fallback(request, serving, now)
            if fallback is not None:
                return fallback
        if retry_exhausted:
            reasons.append(f"every worker up that serves {request.model} failed this request already")
        return Wait(tuple(reasons), stuck=not up or retry_exhausted)

    def _cpu_fallback(self, request: PlacementRequest, serving: Iterable[WorkerRecord], now: float) -> Placement | None:
        if not request.small:
            return None
        cpus = [
            r
            for r in serving
            if r.status.device == CPU_DEVICE
            and self.room(r)
            and first_refusal(self.filters, self, r, request, now) is None
        ]
        if not cpus:
            return None
        record = min(cpus, key=lambda r: (r.load(), r.status.worker_id))
        if request.attempt > 1 or request.avoid:
            return Placement(record.status.worker_id, Route.RETRY, "earlier attempt failed; small model on CPU")
        return Placement(record.status.worker_id, Route.CPU_FALLBACK, "no healthy GPU worker; small model on CPU")

    def resolve_device(self, label: str) -> DeviceKey | Infeasible:
        host, _, device = label.rpartition("/")
        known = self.devices()
        matches = [k for k in known if k[1] == device and (not host or k[0] == host)]
        listing = ", ".join(device_label(h, d, self.many_hosts()) for h, d in known) or "none"
        if not device.startswith("cuda:"):
            return Infeasible(
                f"exclusive_gpu must look like cuda:N or host/cuda:N, not {label!r}", "exclusive_gpu", not_found=False
            )
        if not matches:
            return Infeasible(f"no worker runs on {label}; devices with workers: {listing}", "exclusive_gpu")
        if len(matches) > 1:
            return Infeasible(
                f"{label} exists on several hosts; name one of: {listing}", "exclusive_gpu", not_found=False
            )
        return matches[0]

    def _place_exclusive(self, request: PlacementRequest, label: str, now: float) -> Decision:
        key = self.resolve_device(label)
        if isinstance(key, Infeasible):
            return key
        owner = self.reserved.get(key)
        if owner is not None and owner != request.request_id:
            return Wait((f"{label} is reserved for exclusive request {owner}",))
        if key in self.held:
            return Wait((f"{label} runs exclusive request {self.held[key]}",))
        on_device = [r for r in self.workers.values() if r.key == key and self.alive(r, now)]
        if on_device and not any(self.serves(r, request) for r in on_device):
            # Waiting cannot help: what runs there cannot load the model (too little memory, or not placed there).
            others = sorted(
                {
                    device_label(r.status.host, r.status.device, self.many_hosts())
                    for r in self.workers.values()
                    if r.key != key and r.status.device != CPU_DEVICE and self.alive(r, now) and self.serves(r, request)
                }
            )
            names = ", ".join(r.status.worker_id for r in on_device)
            return Infeasible(
                f"{label} cannot serve {request.model}: its worker ({names}) cannot load {request.group} there; "
                f"GPUs that can: {', '.join(others) or 'none up now'}",
                "exclusive_gpu",
                not_found=False,
            )
        usable = []
        reasons = []
        for record in on_device:
            why = self.why_not(record, now)
            mine = self.why_broken(record, now) is None and self.held_by(record) == request.request_id
            if why is not None and not mine:
                reasons.append(f"{record.status.worker_id}: {why}")
            elif not self.serves(record, request):
                reasons.append(f"{record.status.worker_id}: cannot load {request.group}")
            else:
                usable.append(record)
        self.reserved[key] = request.request_id
        busy = [r for r in on_device if r.load() > 0]
        if busy:
            return Wait(tuple(f"{r.status.worker_id}: {r.load()} requests still running" for r in busy))
        if not usable:
            return Wait(tuple(reasons) or (f"no live worker on {label}",), stuck=True)
        record = min(usable, key=lambda r: r.status.worker_id)
        return Placement(
            record.status.worker_id, Route.EXCLUSIVE, f"exclusive use of {label} requested", exclusive_device=label
        )

    def release(self, request_id: str) -> None:
        """Forget a reservation or hold of ``request_id`` (it finished, failed or gave up)."""
        for table in (self.reserved, self.held):
            for key in [k for k, v in table.items() if v == request_id]:
                del table[key]

    # ------------------------------------------------------------------ bookkeeping

    def on_sent(self, worker_id: str, now: float, *, exclusive_for: str | None = None) -> None:
        record = self.workers[worker_id]
        record.sent_since_status += 1
        record.outstanding += 1
        record.circuit.on_dispatch(now)
        if exclusive_for is not None:
            self.reserved.pop(record.key, None)
            self.held[record.key] = exclusive_for

    def mark_gone(self, worker_id: str) -> None:
        """Nothing answers on the worker's task subject: not alive until it reports again."""
        record = self.workers.get(worker_id)
        if record is not None:
            record.seen_at = float("-inf")

    def forget_failures(self, worker_id: str) -> None:
        """A new process under an old name starts with a closed circuit."""
        record = self.workers.get(worker_id)
        if record is not None:
            record.circuit = CircuitBreaker(self.settings.failure_threshold, self.settings.reset_s)

    def on_done(self, worker_id: str, now: float, *, ok: bool | None) -> str | None:
        """Record an answer (``ok`` None: the client's own error, neither success nor failure).

        Returns a circuit change in words, if any.
        """
        record = self.workers.get(worker_id)
        if record is None:
            return None
        record.outstanding = max(0, record.outstanding - 1)
        if record.sent_since_status > 0:
            record.sent_since_status -= 1
        if ok is None:
            # The client's own error says nothing about the worker: a probe that got one is void.
            record.circuit.probing = False
        if ok is True and record.circuit.on_success():
            return f"circuit of {worker_id} closed again"
        if ok is False and record.circuit.on_failure(now):
            return (
                f"circuit of {worker_id} opened after {record.circuit.failures} failures in a row; "
                f"probing again in {record.circuit.reset_s:g} s"
            )
        return None
