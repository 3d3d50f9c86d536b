"""A request's life in a router, pure: admitted, batched, queued, placed, retried, answered or given up.

No I/O and no clock of its own: the shell passes ``now`` (monotonic seconds) to every call, carries out the
``Send``s returned, and reports each outcome back. The same core serves the router service (requests over
NATS) and the gateway's data plane (requests over HTTP), so both follow one set of rules.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from services.router.core.batcher import Batch, Batcher
from services.router.core.estimates import CHARS_PER_TOKEN
from services.router.core.model import Infeasible, Placement, PlacementRequest, Wait
from services.router.core.policies import RoutingPolicy
from services.router.core.pools import Pools, PoolSettings, WorkerRecord, device_label
from services.router.core.prefix import request_shape
from services.router.core.queue import Entry, PriorityQueue, QueueFull, retry_after_s
from shared.contracts import InferenceKind, InferenceRequest, Priority, Route, utc_now
from shared.errors import GpuplaneError, InvalidRequest, NotFound, OperationFailed, Overloaded
from shared.modelgroups import ModelCatalog

PRIORITY_RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
MB_PER_GB = 1024
"""As the workers count the catalog's ``vram_gb``."""


class NoWorker(GpuplaneError):
    """No worker that serves the request came up in time."""

    reply_code = "unavailable"


class Waiter(Protocol):
    """Where one request's answer goes (an ``asyncio.Future`` in the shells, a plain object in tests)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, exception: BaseException) -> None: ...


class Observer(Protocol):
    """What the core tells the shell's metrics; every label value is from a fixed set."""

    def rejected(self, reason: str) -> None:
        """A request answered with an error by the router itself: queue_full, not_found, bad_request, no_worker."""

    def retried(self, why: str) -> None:
        """A request sent again: worker_lost or failure."""

    def queue_changed(self, depths: dict[str, int]) -> None: ...

    def placed(self, route: Route, device: str, waited_s: float, priority: Priority, batch: int) -> None: ...

    def circuit(self, worker_id: str, closed: bool, text: str) -> None:
        """A worker's circuit opened or closed again (``text`` says so in words)."""


class SilentObserver:
    def rejected(self, reason: str) -> None:
        """Nobody counts."""

    def retried(self, why: str) -> None:
        """Nobody counts."""

    def queue_changed(self, depths: dict[str, int]) -> None:
        """Nobody counts."""

    def placed(self, route: Route, device: str, waited_s: float, priority: Priority, batch: int) -> None:
        """Nobody counts."""

    def circuit(self, worker_id: str, closed: bool, text: str) -> None:
        """Nobody counts."""


@dataclass(frozen=True)
class LifecycleRules:
    """The budgets a request lives by (from the router's settings)."""

    retry_attempts: int = 1
    """Retries on another worker after a failure."""
    lost_worker_requeues: int = 2
    """Sends again after the worker died with the request (the same worker may come back)."""
    unplaceable_timeout_s: float = 15.0
    """How long a request may wait while no worker that could take it is up."""
    queue_limit: int = 2048
    embedding_batch_max: int = 4
    embedding_batch_window_s: float = 0.1


@dataclass
class Pending:
    """One unit of placement: a request, or an embedding batch of several."""

    requests: list[InferenceRequest]
    waiters: list[Waiter]
    placement: PlacementRequest
    exclusive_gpu: str | None
    arrived_at: float
    sink: Any = None
    """Where a streamed answer's chunks go (the shell's own object); None for a whole answer."""
    failures: int = 0
    requeues: int = 0
    committed: bool = False
    """Part of a streamed answer reached the client: it can no longer be sent elsewhere."""
    last_wait: Wait | None = None
    last_error: GpuplaneError | None = None
    waiting_since: float | None = None
    done: bool = False

    @property
    def first(self) -> InferenceRequest:
        return self.requests[0]

    @property
    def streaming(self) -> bool:
        return self.sink is not None

    @property
    def attempt(self) -> int:
        return self.failures + self.requeues + 1

    @property
    def priority(self) -> Priority:
        if len(self.requests) == 1:
            return self.requests[0].priority
        return min((r.priority for r in self.requests), key=PRIORITY_RANK.__getitem__)

    def fail(self, error: GpuplaneError) -> None:
        self.done = True
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(error)


@dataclass(frozen=True)
class Send:
    """Send ``pending`` to ``placement.worker_id`` now (the shell's transport carries it)."""

    pending: Pending
    placement: Placement
    record: WorkerRecord


@dataclass(frozen=True)
class Delivered:
    """A worker's (or engine's) answer: one body per request (raw JSON bytes or a dict), and what it took."""

    bodies: tuple[Any, ...]
    worker_id: str
    device: str
    host: str
    group: str
    service_s: float = 0.0
    load_s: float = 0.0
    measured: bool = False
    """``service_s`` is what the worker or engine said it served for (else the time the router waited)."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    """From the answer's OpenAI ``usage``, where it has one."""


@dataclass(frozen=True)
class Answer:
    """One request's answer and how it was placed: what the shells turn into headers and replies."""

    request_id: str
    model: str
    body: Any
    worker_id: str
    device: str
    host: str
    route: Route
    group: str
    reason: str
    attempts: int
    batch_size: int
    queued_s: float


OUTCOMES = ("ok", "lost", "failed", "client_error")


@dataclass
class Lifecycle:
    """The router's requests from admission to answer; see the module's docstring."""

    catalog: ModelCatalog
    policy: RoutingPolicy
    rules: LifecycleRules = field(default_factory=LifecycleRules)
    pools: Pools = field(default_factory=Pools)
    rng: random.Random = field(default_factory=random.Random)
    observer: Observer = field(default_factory=SilentObserver)
    decisions_kept: int = 50
    wall: Callable[[], datetime] = utc_now
    """Wall-clock time for the decisions kept (placement itself only uses the ``now`` passed in)."""

    def __post_init__(self) -> None:
        self._models = {m.id: (g, m) for g in self.catalog.groups for m in g.models}
        """Model id -> its group and entry: looked up for every request."""
        self.queue: PriorityQueue[Pending] = PriorityQueue(self.rules.queue_limit)
        self.batcher: Batcher[tuple[InferenceRequest, Waiter]] = Batcher(
            self.rules.embedding_batch_max, self.rules.embedding_batch_window_s
        )
        self.decisions: deque[tuple[datetime, Answer]] = deque(maxlen=self.decisions_kept)
        """The last answers, newest first (the console's view of where requests went)."""

    @classmethod
    def build(
        cls,
        catalog: ModelCatalog,
        policy: RoutingPolicy,
        rules: LifecycleRules,
        pool_settings: PoolSettings,
        *,
        seed: int | None = None,
        observer: Observer | None = None,
    ) -> Lifecycle:
        return cls(catalog, policy, rules, Pools(pool_settings), random.Random(seed), observer or SilentObserver())

    # ------------------------------------------------------------------ admission

    def submit(self, request: InferenceRequest, waiter: Waiter, now: float, *, sink: Any = None) -> bool:
        """Admit one request; True when a batch is open and the shell's timer should wake for it.

        ``InvalidRequest`` or ``NotFound`` when it can never be served as asked, ``Overloaded`` when the queue is full.
        """
        if sink is not None and request.kind is InferenceKind.EMBEDDING:
            raise InvalidRequest("embeddings cannot be streamed", field="stream")
        self.check_kind(request)
        batching = (
            request.kind is InferenceKind.EMBEDDING
            and request.exclusive_gpu is None
            and self.rules.embedding_batch_max > 1
        )
        if batching:
            self._check_room(1, now)
            batch = self.batcher.add(request.model, (request, waiter), now)
            if batch is None:
                return True
            self._enqueue_batch(batch)
            return False
        placement = self.placement_request(request, ())
        self._enqueue(Pending([request], [waiter], placement, request.exclusive_gpu, now, sink=sink), now)
        return False

    def check_kind(self, request: InferenceRequest) -> None:
        """A chat model is not asked for embeddings, nor an embedding model for chat (models in the catalog)."""
        found = self._models.get(request.model)
        if found is None:
            return
        model = found[1]
        wants_embedding = request.kind is InferenceKind.EMBEDDING
        if (model.kind is InferenceKind.EMBEDDING) == wants_embedding:
            return
        fitting = sorted(
            m.id
            for g in self.catalog.groups
            for m in g.models
            if (m.kind is InferenceKind.EMBEDDING) == wants_embedding
        )
        path = "/v1/embeddings" if model.kind is InferenceKind.EMBEDDING else "/v1/chat/completions"
        raise InvalidRequest(
            f"{request.model} is a{'n' if model.kind is InferenceKind.EMBEDDING else ''} {model.kind.value} model: "
            f"send it to {path}; models for this route: {', '.join(fitting) or 'none'}",
            field="model",
        )

    def placement_request(self, request: InferenceRequest, avoid: Iterable[str], attempt: int = 1) -> PlacementRequest:
        group, model = self._models.get(request.model, (None, None))
        shape = request_shape(request.body, request.kind, request.model, prefix=self.pools.settings.prefix_affinity)
        return PlacementRequest(
            request_id=request.request_id,
            kind=request.kind,
            model=request.model,
            group=group.id if group else request.model,
            priority=request.priority,
            group_load_s=group.load_time_s if group else 5.0,
            cpu_reload_fraction=self.catalog.cpu_reload_fraction,
            expected_latency_s=model.latency_s if model else 0.5,
            small=model.small if model else False,
            avoid=frozenset(avoid),
            attempt=attempt,
            prompt_tokens=shape.prompt_chars / CHARS_PER_TOKEN,
            max_tokens=shape.max_tokens,
            prefix=shape.prefix,
            group_vram_mb=math.ceil(group.vram_gb * MB_PER_GB) if group else 0,
        )

    def _check_room(self, extra: int, now: float) -> None:
        if len(self.queue) + extra > self.queue.limit:
            raise self._queue_full(now)

    def _queue_full(self, now: float) -> Overloaded:
        """The one 429 answer, counted once, whichever way the queue was found full."""
        self.observer.rejected("queue_full")
        return Overloaded(
            f"the router's queue is full ({len(self.queue)} requests waiting, limit {self.queue.limit}); "
            "try again later",
            retry_after_s=self.retry_after(now),
        )

    def retry_after(self, now: float) -> float:
        """How long a client should wait before trying again: the queue ahead over the live slots."""
        alive = [r for r in self.pools.workers.values() if self.pools.alive(r, now)]
        slots = sum(r.status.slots for r in alive)
        latencies = [r.status.latency_avg_s for r in alive if r.status.latency_avg_s > 0]
        latency = sum(latencies) / len(latencies) if latencies else 1.0
        return retry_after_s(len(self.queue), slots, latency)

    def _enqueue(self, pending: Pending, now: float, *, front: bool = False) -> None:
        try:
            self.queue.push(pending, pending.priority, now, front=front)
        except QueueFull:
            pending.fail(self._queue_full(now))
        self.observer.queue_changed(self.queue.depths())

    def _enqueue_batch(self, batch: Batch[tuple[InferenceRequest, Waiter]]) -> None:
        requests = [r for r, _ in batch.items]
        waiters = [w for _, w in batch.items]
        placement = self.placement_request(requests[0], ())
        self._enqueue(Pending(requests, waiters, placement, None, batch.opened_at), batch.opened_at)

    # ------------------------------------------------------------------ placement

    def pump(self, now: float) -> list[Send]:
        """Place every queued request that can go somewhere now, in priority order."""
        sends: list[Send] = []
        if not len(self.queue):
            return sends
        waiting: dict[tuple[str, str | None], Wait] = {}
        for entry in self.queue:
            pending = entry.item
            if pending.done:
                self.queue.remove(entry)
                continue
            key = (pending.placement.model, pending.exclusive_gpu)
            if key in waiting and not pending.placement.avoid:
                decision: Placement | Wait | Infeasible = waiting[key]  # an identical request found no room
            else:
                decision = self.pools.place(
                    pending.placement,
                    now,
                    self.policy,
                    self.rng,
                    exclusive_gpu=pending.exclusive_gpu,
                    known_model=pending.placement.model in self._models,
                )
            if isinstance(decision, Wait):
                self._wait(entry, decision, now, waiting, key)
                continue
            self.queue.remove(entry)
            if isinstance(decision, Infeasible):
                self._reject(pending, decision)
                continue
            sends.append(self._sent(entry, decision, now))
        self.observer.queue_changed(self.queue.depths())
        return sends

    def _wait(
        self,
        entry: Entry[Pending],
        decision: Wait,
        now: float,
        waiting: dict[tuple[str, str | None], Wait],
        key: tuple[str, str | None],
    ) -> None:
        pending = entry.item
        if decision.stuck and pending.placement.avoid and pending.last_error:
            # A retry with nowhere else to go: answer with the failure now rather than wait.
            self.queue.remove(entry)
            self.pools.release(pending.first.request_id)
            pending.fail(pending.last_error)
            return
        pending.last_wait = decision
        pending.waiting_since = (pending.waiting_since or now) if decision.stuck else None
        waiting.setdefault(key, decision)

    def _sent(self, entry: Entry[Pending], placement: Placement, now: float) -> Send:
        pending = entry.item
        record = self.pools.workers[placement.worker_id]
        exclusive_for = pending.first.request_id if placement.exclusive_device else None
        self.pools.on_sent(placement.worker_id, now, exclusive_for=exclusive_for, request=pending.placement)
        label = device_label(record.status.host, record.status.device, self.pools.many_hosts())
        self.observer.placed(placement.route, label, now - entry.enqueued_at, entry.priority, len(pending.requests))
        return Send(pending, placement, record)

    def _reject(self, pending: Pending, decision: Infeasible) -> None:
        self.pools.release(pending.first.request_id)
        self.observer.rejected("not_found" if decision.not_found else "bad_request")
        error: GpuplaneError = (
            NotFound(decision.reason, field=decision.field)
            if decision.not_found
            else InvalidRequest(decision.reason, field=decision.field)
        )
        pending.fail(error)

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> tuple[list[str], list[Send]]:
        """Close due batches, find workers fallen silent, give up stuck requests, place what can go.

        Returns the silent workers (the shell moves their requests) and the sends.
        """
        for batch in self.batcher.due(now):
            self._enqueue_batch(batch)
        silent = self.pools.expired(now)
        self.give_up_stuck(now)
        return silent, self.pump(now)

    def next_due_at(self) -> float | None:
        return self.batcher.next_due_at()

    def flush(self) -> None:
        """Stopping: every open batch goes to the queue now."""
        for batch in self.batcher.flush():
            self._enqueue_batch(batch)

    def give_up_stuck(self, now: float) -> None:
        """Answer the requests that have waited ``unplaceable_timeout_s`` with no worker up that could take them."""
        limit = self.rules.unplaceable_timeout_s
        for entry in self.queue:
            pending = entry.item
            since = pending.waiting_since
            if since is None or now - since < limit:
                continue
            self.queue.remove(entry)
            self.pools.release(pending.first.request_id)
            self.observer.rejected("no_worker")
            reasons = "; ".join(pending.last_wait.reasons) if pending.last_wait else "no worker"
            pending.fail(NoWorker(f"no worker could take {pending.placement.model} for {limit:g} s: {reasons}"))
        self.observer.queue_changed(self.queue.depths())

    # ------------------------------------------------------------------ outcomes

    def answered(self, send: Send, delivered: Delivered, now: float) -> None:
        """The worker answered: every waiter gets its body, and the worker's circuit hears of a success."""
        pending, placement = send.pending, send.placement
        pending.done = True
        self._done(placement.worker_id, now, ok=True, request_id=pending.placement.request_id, delivered=delivered)
        self.pools.release(pending.first.request_id)
        for i, (request, waiter) in enumerate(zip(pending.requests, pending.waiters, strict=True)):
            if waiter.done():
                continue
            answer = Answer(
                request_id=request.request_id,
                model=request.model,
                body=delivered.bodies[i] if i < len(delivered.bodies) else None,
                worker_id=delivered.worker_id,
                device=delivered.device,
                host=delivered.host,
                route=placement.route,
                group=delivered.group,
                reason=placement.reason,
                attempts=pending.attempt,
                batch_size=len(pending.requests),
                queued_s=max(0.0, now - pending.arrived_at - delivered.service_s - delivered.load_s),
            )
            waiter.set_result(answer)
            self.decisions.appendleft((self.wall(), answer))

    def refused(self, send: Send, error: GpuplaneError, now: float) -> None:
        """The worker refused the request as the client's mistake: answer so, say nothing of the worker."""
        self._done(send.placement.worker_id, now, ok=None, request_id=send.pending.placement.request_id)
        send.pending.done = True
        self.pools.release(send.pending.first.request_id)
        send.pending.fail(error)

    def failed(self, send: Send, error: GpuplaneError, now: float, *, lost: bool) -> str | None:
        """The worker failed (``lost``: died or went silent with it). Send it elsewhere when that is safe and
        within budget, else answer with the failure. Returns what the shell should log."""
        pending, worker = send.pending, send.placement.worker_id
        # A dead process says nothing about the next one under its name: no circuit failure when lost.
        self._done(worker, now, ok=None if lost else False, request_id=pending.placement.request_id)
        self.pools.release(pending.first.request_id)
        if pending.committed:
            pending.fail(OperationFailed(f"worker {worker} failed after streaming began: {error}"))
            return None
        allowed = (
            pending.requeues < self.rules.lost_worker_requeues if lost else pending.failures < self.rules.retry_attempts
        )
        if not allowed:
            pending.fail(
                OperationFailed(
                    f"{pending.placement.model} failed on {worker} after {pending.attempt} attempt(s): {error}"
                )
            )
            return None
        avoid = set(pending.placement.avoid)
        if lost:
            # Not avoided: the supervisor may bring the same worker back as a new process.
            pending.requeues += 1
        else:
            pending.failures += 1
            avoid.add(worker)
            pending.last_error = OperationFailed(
                f"{pending.placement.model} failed on {worker} and no other worker can take it: {error}"
            )
        self.observer.retried("worker_lost" if lost else "failure")
        pending.placement = self.placement_request(pending.first, sorted(avoid), attempt=pending.attempt)
        self._enqueue(pending, now, front=True)
        return f"request {pending.first.request_id} failed on {worker} ({error}); sending it to another worker"

    def _done(
        self, worker_id: str, now: float, *, ok: bool | None, request_id: str, delivered: Delivered | None = None
    ) -> None:
        if delivered is None:
            change = self.pools.on_done(worker_id, now, ok=ok, request_id=request_id)
        else:
            change = self.pools.on_done(
                worker_id,
                now,
                ok=ok,
                request_id=request_id,
                service_s=delivered.service_s if delivered.measured else None,
                prompt_tokens=delivered.prompt_tokens,
                completion_tokens=delivered.completion_tokens,
            )
        if change is not None:
            self.observer.circuit(worker_id, bool(ok), change)

    def held_request_ids(self) -> set[str]:
        """Requests this router holds: batched, queued (the shell adds those out at workers)."""
        mine = {r.request_id for entry in self.queue for r in entry.item.requests}
        mine.update(r.request_id for r, _ in self.batcher.items())
        return mine
