"""The worker pools as one router sees them, and placement over them: filter, then a policy picks.

Everything here is driven by the caller: statuses and inventories in, ``now`` (monotonic seconds)
passed to every call. Load figures come from the workers themselves, so routers agree.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.router.core.circuit import CircuitBreaker
from services.router.core.estimates import BATCHING_SLOWDOWN, CHARS_PER_TOKEN, EWMA_WEIGHT, Estimates
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
from services.router.core.prefix import TABLE_ENTRIES, TTL_S, PrefixTable
from shared.contracts import Inventory, Route, WorkerState, WorkerStatus

DeviceKey = tuple[str, str]
"""(host, device), e.g. ("box", "cuda:1")."""


def device_label(host: str, device: str, many_hosts: bool) -> str:
    return f"{host}/{device}" if many_hosts else device


@dataclass(frozen=True)
class Task:
    """One request this router sent a worker and has no answer for yet, as the estimate sees it."""

    model: str
    group: str
    group_vram_mb: int
    alone_s: float
    """Its expected time alone when sent."""
    load_s: float
    """What loading its group there costs (0 when held when sent)."""
    sent_at: float
    concurrency: int
    """Requests running there when it started, it included (slots when it had to queue)."""
    queued: bool
    """It found no free slot: the time to its answer includes a wait."""
    prompt_tokens: float


@dataclass
class WorkerRecord:
    status: WorkerStatus
    seen_at: float
    circuit: CircuitBreaker
    sent_since_status: int = 0
    outstanding: int = 0
    """Tasks this router sent and has no answer for yet."""
    tasks: dict[str, Task] = field(default_factory=dict)
    """The outstanding tasks sent with their request (by request id, oldest first)."""
    work_s: float = 0.0
    """Sum of ``tasks``' ``alone_s``: this router's backlog there."""
    groups_out: Counter[str] = field(default_factory=Counter)
    """Groups of ``tasks``, counted."""
    batching_learned: float | None = None
    """Slowdown per neighbour measured on this worker (answers that ran beside others); None: not yet."""
    batching_samples: int = 0

    @property
    def key(self) -> DeviceKey:
        return (self.status.host, self.status.device)

    def load(self) -> int:
        """Reported (running plus queued; the engine's own figures when higher, since other clients count
        there too) plus what this router sent since, never below what it has out there itself."""
        status = self.status
        reported = status.in_flight + status.queue_depth
        engine = status.engine
        if engine is not None:
            reported = max(reported, (engine.requests_running or 0) + (engine.requests_waiting or 0))
        return max(reported + self.sent_since_status, self.outstanding)

    def slots(self) -> int:
        engine = self.status.engine
        return engine.slots_total if engine is not None and engine.slots_total else self.status.slots

    def batching(self) -> float:
        """Slowdown per neighbour: the simulated backend's slots are independent servers; real engines batch
        their slots, by ``BATCHING_SLOWDOWN`` until this worker's own answers say (a GPU batches almost for
        free, a CPU engine on one thread shares it: about 1)."""
        if self.slots() <= 1 or self.status.backend == "simulated":
            return 0.0
        if self.batching_learned is not None and self.batching_samples >= BATCHING_MIN_SAMPLES:
            return self.batching_learned
        return BATCHING_SLOWDOWN

    def learn_batching(self, seconds: float, alone_s: float, concurrency: int) -> None:
        """One answer that started beside ``concurrency - 1`` others, against what it was expected to take alone."""
        if concurrency <= 1 or alone_s <= 0 or self.status.backend == "simulated":
            return
        seen = min(BATCHING_MAX, max(0.0, (seconds / alone_s - 1.0) / (concurrency - 1)))
        self.batching_samples += 1
        if self.batching_learned is None:
            self.batching_learned = seen
        else:
            self.batching_learned += max(EWMA_WEIGHT, 1.0 / self.batching_samples) * (seen - self.batching_learned)


BATCHING_MIN_SAMPLES = 5
"""Answers that ran beside others before a worker's own slowdown replaces the default."""
BATCHING_MAX = 1.5
"""Above 1 a neighbour costs more than running one after the other: noise, or a thrashing engine."""


@dataclass
class PoolSettings:
    worker_timeout_s: float = 3.0
    worker_queue_limit: int = 1000
    """Requests a worker may have waiting beyond its slots before the router keeps them instead."""
    failure_threshold: int = 5
    reset_s: float = 60.0
    forget_after_s: float = 300.0
    prefix_affinity: bool = True
    """Send a request whose prompt starts like a recent one's to the worker that served that one."""
    prefix_entries: int = TABLE_ENTRIES
    prefix_ttl_s: float = TTL_S


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
    estimates: Estimates = field(default_factory=Estimates)
    """Per (worker, model) service times, learned from the answers."""
    prefixes: PrefixTable = field(init=False)

    def __post_init__(self) -> None:
        self.prefixes = PrefixTable(self.settings.prefix_entries, self.settings.prefix_ttl_s)

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
        if lost is not None:
            self.prefixes.forget(status.worker_id)  # a new process, or none: the engine's cache is gone
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
                self.prefixes.forget(worker_id)
                self.estimates.forget(worker_id)
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

    def _speed_of(self, worker_id: str) -> float | None:
        record = self.workers.get(worker_id)
        return None if record is None else record.status.speed or 1.0

    def alone_s(self, record: WorkerRecord, request: PlacementRequest, cached_chars: int = 0) -> float:
        """``request``'s expected time alone on the worker (``cached_chars`` of its prompt not prefilled again)."""
        status = record.status
        return self.estimates.alone_s(
            status.worker_id,
            request.model,
            status.speed or 1.0,
            self._speed_of,
            prompt_tokens=max(0.0, request.prompt_tokens - cached_chars / CHARS_PER_TOKEN),
            max_tokens=request.max_tokens,
            catalog_s=request.expected_latency_s,
        )

    def _coming(self, record: WorkerRecord) -> tuple[float, frozenset[str]]:
        """Loads due for the groups of requests sent there, and those of them that fit beside what it holds."""
        status = record.status
        loaded = status.groups_loaded
        coming = [g for g, n in record.groups_out.items() if n > 0 and g not in loaded]
        if not coming:
            return 0.0, frozenset()
        load_s = 0.0
        vram: dict[str, int] = {}
        for task in record.tasks.values():
            if task.group in coming and task.group not in vram:
                load_s += task.load_s
                vram[task.group] = task.group_vram_mb
        free = self._vram_free_mb(status) or 0
        fitting = frozenset(vram) if all(vram.values()) and sum(vram.values()) <= free else frozenset()
        return load_s, fitting

    @staticmethod
    def _vram_free_mb(status: WorkerStatus) -> int | None:
        if status.vram_total_mb is None or status.vram_used_mb is None or status.backend != "simulated":
            return None  # only the simulated backend's VRAM is what its groups take; an engine's is its own
        return status.vram_total_mb - status.vram_used_mb

    def snapshot(
        self, record: WorkerRecord, request: PlacementRequest | None = None, *, prefix_chars: int = 0
    ) -> WorkerSnapshot:
        """The worker as a policy sees it; with ``request``, this request's estimates there too."""
        status = record.status
        load = record.load()
        alone = backlog = None
        coming_s, coming = 0.0, frozenset[str]()
        if request is not None:
            # The prefix's saving is left out: a prompt everyone shares (one system prompt) is cached on one
            # engine first, and counting it there sent a benchmark's every request to that engine. Prefix
            # affinity is a preference among estimates made alike (policies/affinity.py).
            alone = self.alone_s(record, request)
            # Others' requests (other routers, direct clients) at the worker's own average, else this one's.
            foreign = max(0, load - len(record.tasks))
            backlog = record.work_s + foreign * (status.latency_avg_s or alone)
            coming_s, coming = self._coming(record)
        engine = status.engine
        return WorkerSnapshot(
            worker_id=status.worker_id,
            host=status.host,
            device=status.device,
            slots=record.slots(),
            load=load,
            groups_loaded=frozenset(status.groups_loaded),
            cpu_cached_groups=frozenset(status.cpu_cached_groups),
            current_group=status.current_group,
            latency_avg_s=status.latency_avg_s,
            speed=status.speed or 1.0,
            error_rate=status.error_count / status.request_count if status.request_count else 0.0,
            has_room=self.room(record),
            service_s=alone or 0.0,
            backlog_s=backlog,
            coming_load_s=coming_s,
            groups_coming=coming,
            batching=record.batching(),
            kv_cache_usage=engine.kv_cache_usage if engine is not None else None,
            vram_free_mb=self._vram_free_mb(status),
            prefix_chars=prefix_chars,
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
        cached = self.prefixes.lookup(request.prefix, now) if request.prefix and self.settings.prefix_affinity else None
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
                chars = cached.get(record.status.worker_id, 0) if cached else 0
                candidates.append(self.snapshot(record, request, prefix_chars=chars))
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

    def on_sent(
        self,
        worker_id: str,
        now: float,
        *,
        exclusive_for: str | None = None,
        request: PlacementRequest | None = None,
    ) -> None:
        """A task went to the worker; with ``request``, its estimate joins the worker's backlog here and
        its answer will teach the estimates."""
        record = self.workers[worker_id]
        if request is not None:
            load, slots = record.load(), record.slots()
            status = record.status
            held = request.group in status.groups_loaded
            cached = request.group in status.cpu_cached_groups
            task = Task(
                model=request.model,
                group=request.group,
                group_vram_mb=request.group_vram_mb,
                alone_s=self.alone_s(record, request),
                load_s=0.0 if held else request.group_load_s * (request.cpu_reload_fraction if cached else 1.0),
                sent_at=now,
                concurrency=min(load + 1, slots),
                queued=load >= slots,
                prompt_tokens=request.prompt_tokens,
            )
            previous = record.tasks.pop(request.request_id, None)
            if previous is not None:
                self._drop(record, previous)
            record.tasks[request.request_id] = task
            record.work_s += task.alone_s
            record.groups_out[task.group] += 1
            if request.prefix and self.settings.prefix_affinity:
                self.prefixes.remember(request.prefix, worker_id, now)
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

    @staticmethod
    def _drop(record: WorkerRecord, task: Task) -> None:
        record.work_s = max(0.0, record.work_s - task.alone_s) if record.tasks else 0.0
        record.groups_out[task.group] -= 1
        if record.groups_out[task.group] <= 0:
            del record.groups_out[task.group]

    def on_done(
        self,
        worker_id: str,
        now: float,
        *,
        ok: bool | None,
        request_id: str | None = None,
        service_s: float | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> str | None:
        """Record an answer (``ok`` None: the client's own error, neither success nor failure).

        ``request_id`` names the task (else the oldest sent); ``service_s`` is the service time the worker
        or engine reported (None: the time since it was sent, learned from only when it did not queue);
        token counts come from the answer's ``usage``. Returns a circuit change in words, if any.
        """
        record = self.workers.get(worker_id)
        if record is None:
            return None
        tasks = record.tasks
        key = request_id if request_id in tasks else next(iter(tasks), None) if request_id is None else None
        task = tasks.pop(key) if key is not None else None
        if task is not None:
            self._drop(record, task)
            if ok is True:
                # The time since it was sent is its service only when it neither queued nor loaded a group.
                waited = task.queued or task.load_s > 0
                seconds = service_s if service_s is not None else None if waited else now - task.sent_at
                if seconds is not None:
                    record.learn_batching(seconds, task.alone_s, task.concurrency)
                    self.estimates.observe(
                        worker_id,
                        task.model,
                        seconds,
                        concurrency=task.concurrency,
                        batching=record.batching(),
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        prior_s=task.alone_s,
                    )
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
