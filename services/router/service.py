"""The router controller: takes requests from the bus, places them with the pure core, sends them
to workers, retries, relays streams and answers. All placement logic lives in ``core``."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from services.router.core.batcher import Batch, Batcher
from services.router.core.model import Infeasible, Placement, PlacementRequest, Wait
from services.router.core.policies import RoutingPolicy, make_policy
from services.router.core.pools import Pools, PoolSettings, WorkerRecord, device_label
from services.router.core.queue import PriorityQueue, QueueFull, retry_after_s
from services.router.metrics import router_metrics
from services.router.settings import RouterSettings
from shared.answers import AnswerWatch
from shared.bus.base import Bus, Delivery, Subscription
from shared.contracts import (
    DeviceStats,
    GroupInfo,
    InferenceKind,
    InferenceRequest,
    InferenceResult,
    Inventory,
    InventorySource,
    ModelInfo,
    Priority,
    RouterHeld,
    RouterHeldQuery,
    RouterState,
    RouterStateRequest,
    RoutingDecision,
    ServiceName,
    StreamChunk,
    WorkerHeld,
    WorkerHeldQuery,
    WorkerResult,
    WorkerStatus,
    WorkerTask,
    WorkerView,
    utc_now,
)
from shared.errors import (
    BusError,
    GpuplaneError,
    InvalidRequest,
    NoResponders,
    NotFound,
    OperationFailed,
    Overloaded,
    RemoteError,
)
from shared.fleet import LatestInventories
from shared.modelgroups import ModelCatalog
from shared.subjects import (
    INVENTORY_ALL,
    ROUTER_HELD,
    ROUTER_INFER,
    ROUTER_STATE,
    WORKER_STATUS_ALL,
    queue_group,
    stream_chunks,
    worker_held,
    worker_task,
)

log = logging.getLogger("gpuplane.router")
decisions_log = logging.getLogger("gpuplane.router.decisions")

MB_PER_GB = 1024.0
DECISIONS_KEPT = 50
"""Answered requests' placements kept for the console (RouterState.decisions)."""
CLIENT_ERROR_CODES = frozenset({"bad_request", "not_found"})
PRIORITY_RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


class WorkerLost(GpuplaneError):
    """The worker stopped or fell silent with the task still out."""


class NoWorker(GpuplaneError):
    """No worker that serves the request came up in time."""

    reply_code = "unavailable"


@dataclass
class Pending:
    """One unit of placement: a request, or an embedding batch of several."""

    requests: list[InferenceRequest]
    futures: list[asyncio.Future[InferenceResult]]
    placement: PlacementRequest
    exclusive_gpu: str | None
    arrived_at: float
    failures: int = 0
    requeues: int = 0
    committed: bool = False
    """A streamed chunk reached the client: the request can no longer be sent elsewhere."""
    relay_seq: int = 0
    last_wait: Wait | None = None
    last_error: GpuplaneError | None = None
    waiting_since: float | None = None
    done: bool = False

    @property
    def first(self) -> InferenceRequest:
        return self.requests[0]

    @property
    def streaming(self) -> bool:
        return self.first.stream_subject is not None

    def fail(self, error: GpuplaneError) -> None:
        self.done = True
        for future in self.futures:
            if not future.done():
                future.set_exception(error)


@dataclass
class OutTask:
    pending: Pending
    worker_id: str
    host: str
    sent_at: float
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_why: str = "it went away with the request"
    stream_done: asyncio.Event = field(default_factory=asyncio.Event)


class Router:
    """One router instance. Several may run; they share no state but what workers report."""

    def __init__(
        self,
        bus: Bus,
        settings: RouterSettings,
        catalog: ModelCatalog,
        instance: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: RoutingPolicy | None = None,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.catalog = catalog
        self.instance = instance
        self.clock = clock
        self.policy = policy or make_policy(settings.routing_policy, settings.give_way_factor)
        self.rng = random.Random(settings.seed)
        self.pools = Pools(
            PoolSettings(
                worker_timeout_s=settings.worker_timeout_s,
                worker_queue_limit=settings.worker_queue_limit,
                failure_threshold=settings.circuit_failure_threshold,
                reset_s=settings.circuit_reset_s,
            )
        )
        self.queue: PriorityQueue[Pending] = PriorityQueue(settings.queue_limit)
        self.batcher: Batcher[tuple[InferenceRequest, asyncio.Future[InferenceResult]]] = Batcher(
            settings.embedding_batch_max, settings.embedding_batch_window_s
        )
        self.inventories = LatestInventories()
        self.out: dict[str, OutTask] = {}
        self.answers = AnswerWatch(settings.answer_check_after_s, settings.answer_grace_s)
        self.peaks: dict[tuple[str, str], float] = {}
        self.decisions: deque[tuple[datetime, str, InferenceResult]] = deque(maxlen=DECISIONS_KEPT)
        self.metrics = router_metrics()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ wiring

    async def start(self) -> None:
        await self.bus.subscribe(WORKER_STATUS_ALL, WorkerStatus, self._on_status)
        await self.bus.subscribe(INVENTORY_ALL, Inventory, self._on_inventory)
        for inv in await self.bus.latest(INVENTORY_ALL, Inventory):
            await self._on_inventory(inv, Delivery(subject=INVENTORY_ALL))
        await self.bus.subscribe(
            ROUTER_INFER,
            InferenceRequest,
            self.handle,
            queue=queue_group_router(),
            max_in_flight=self.settings.max_in_flight_requests,
        )
        await self.bus.subscribe(ROUTER_STATE, RouterStateRequest, self._on_state, queue=queue_group_router())
        # No queue group: a gateway asks every router which of its requests it holds.
        await self.bus.subscribe(ROUTER_HELD, RouterHeldQuery, self._on_held)

    async def run_timers(self) -> None:
        """Sweep for lost workers, due batches and stuck requests; wake early when asked."""
        while True:
            due = self.batcher.next_due_at()
            delay = 0.25 if due is None else max(0.0, min(0.25, due - self.clock()))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            self._wake.clear()
            self.tick()

    def tick(self) -> None:
        now = self.clock()
        for batch in self.batcher.due(now):
            self._enqueue_batch(batch)
        for worker_id in self.pools.expired(now):
            self._worker_lost(worker_id, "it fell silent")
        self._give_up_stuck(now)
        self.pump()

    async def watch_answers(self) -> None:
        """Every ``answer_check_interval_s``, ask the workers about tasks out for a while; send the lost ones again."""
        while True:
            await asyncio.sleep(self.settings.answer_check_interval_s)
            await self.check_answers()

    async def check_answers(self) -> None:
        """One round: a task whose worker no longer holds it and whose answer has not come is lost."""
        now = self.clock()
        by_worker: dict[tuple[str, str], list[str]] = {}
        for task_id in self.answers.due({t: o.sent_at for t, o in self.out.items()}, now):
            out = self.out[task_id]
            by_worker.setdefault((out.host, out.worker_id), []).append(task_id)
        for (host, worker_id), task_ids in by_worker.items():
            try:
                reply = await self.bus.request(
                    worker_held(host, worker_id),
                    WorkerHeldQuery(task_ids=tuple(task_ids)),
                    WorkerHeld,
                    timeout_s=self.settings.answer_grace_s,
                )
                held: tuple[str, ...] = reply.task_ids
            except NoResponders:
                held = ()  # the process is gone, and its tasks with it
            except BusError as exc:
                log.debug("worker %s did not say which tasks it holds: %s", worker_id, exc)
                continue
            self.answers.heard(task_ids, held, self.clock())
        for task_id in self.answers.lost(self.out, self.clock()):
            out = self.out[task_id]
            if not out.lost.is_set():
                log.warning(
                    "the answer to request %s from worker %s was lost; sending it again",
                    out.pending.first.request_id,
                    out.worker_id,
                )
                self.metrics.lost_answers.inc()
                out.lost_why = "its answer was lost on the way back"
                out.lost.set()

    async def _on_held(self, query: RouterHeldQuery, _: Delivery) -> RouterHeld:
        """Which of a gateway's requests this router holds: waiting in a batch or the queue, or out."""
        mine = {r.request_id for entry in self.queue for r in entry.item.requests}
        mine.update(r.request_id for out in self.out.values() for r in out.pending.requests)
        mine.update(r.request_id for r, _ in self.batcher.items())
        return RouterHeld(router=self.instance, request_ids=tuple(r for r in query.request_ids if r in mine))

    async def close(self) -> None:
        for batch in self.batcher.flush():
            self._enqueue_batch(batch)
        self.pump()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.drain_timeout_s)

    def health(self) -> dict[str, str]:
        now = self.clock()
        alive = [r for r in self.pools.workers.values() if self.pools.alive(r, now)]
        return {
            "policy": self.policy.NAME,
            "workers": str(len(alive)),
            "queued": str(len(self.queue)),
            "in_flight": str(len(self.out)),
        }

    # ------------------------------------------------------------------ inputs

    async def _on_status(self, status: WorkerStatus, _: Delivery) -> None:
        known = status.worker_id in self.pools.workers
        lost = self.pools.on_status(status, self.clock())
        if status.utilization_percent is not None and status.device != "cpu":
            key = (status.host, status.device)
            self.peaks[key] = max(self.peaks.get(key, 0.0), status.utilization_percent)
        if not known:
            log.info(
                "worker %s registered: %s on %s, %d slot(s), groups %s",
                status.worker_id,
                status.backend,
                status.device,
                status.slots,
                ", ".join(status.groups_loaded) or "none",
            )
        if lost is not None:
            log.info("worker %s: %s", status.worker_id, lost)
            self._worker_lost(status.worker_id, lost)
            if lost == "it restarted":
                self.pools.forget_failures(status.worker_id)
        self.pump()

    async def _on_inventory(self, inv: Inventory, _: Delivery) -> None:
        if not self.inventories.apply(inv):
            return
        for change in self.pools.on_inventory(inv):
            log.warning("pool change: %s", change)
        self.pump()

    # ------------------------------------------------------------------ requests

    async def handle(self, request: InferenceRequest, _: Delivery) -> InferenceResult:
        """Place, send and answer one request (the ``ROUTER_INFER`` handler)."""
        started = self.clock()
        kind = request.kind.value
        try:
            result = await self._serve(request)
        except (InvalidRequest, NotFound) as exc:
            self.metrics.requests.labels(kind, "client_error").inc()
            raise exc
        except Overloaded:
            self.metrics.requests.labels(kind, "rejected").inc()
            raise
        except GpuplaneError:
            self.metrics.requests.labels(kind, "failed").inc()
            raise
        self.metrics.requests.labels(kind, "ok").inc()
        self.metrics.request_duration.labels(kind).observe(self.clock() - started)
        return result

    async def _serve(self, request: InferenceRequest) -> InferenceResult:
        if request.stream_subject is not None and request.kind is InferenceKind.EMBEDDING:
            raise InvalidRequest("embeddings cannot be streamed", field="stream")
        future: asyncio.Future[InferenceResult] = asyncio.get_running_loop().create_future()
        now = self.clock()
        batching = (
            request.kind is InferenceKind.EMBEDDING
            and request.exclusive_gpu is None
            and self.settings.embedding_batch_max > 1
        )
        if batching:
            self._check_room(1)
            batch = self.batcher.add(request.model, (request, future), now)
            if batch is not None:
                self._enqueue_batch(batch)
            else:
                self._wake.set()
        else:
            placement = self._placement_request(request, [])
            self._enqueue(Pending([request], [future], placement, request.exclusive_gpu, now))
        self.pump()
        return await future

    def _placement_request(self, request: InferenceRequest, avoid: list[str], attempt: int = 1) -> PlacementRequest:
        group = self.catalog.group_of(request.model)
        model = self.catalog.model(request.model)
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
        )

    def _check_room(self, extra: int) -> None:
        if len(self.queue) + extra > self.queue.limit:
            raise self._queue_full()

    def _queue_full(self) -> Overloaded:
        """The one 429 answer, counted once, whichever way the queue was found full."""
        self.metrics.rejected.labels("queue_full").inc()
        return Overloaded(
            f"the router's queue is full ({len(self.queue)} requests waiting, limit {self.queue.limit}); "
            "try again later",
            retry_after_s=self._retry_after(),
        )

    def _retry_after(self) -> float:
        now = self.clock()
        alive = [r for r in self.pools.workers.values() if self.pools.alive(r, now)]
        slots = sum(r.status.slots for r in alive)
        latencies = [r.status.latency_avg_s for r in alive if r.status.latency_avg_s > 0]
        latency = sum(latencies) / len(latencies) if latencies else 1.0
        return retry_after_s(len(self.queue), slots, latency)

    def _enqueue(self, pending: Pending, *, front: bool = False) -> None:
        priority = min((r.priority for r in pending.requests), key=PRIORITY_RANK.__getitem__)
        try:
            self.queue.push(pending, priority, self.clock(), front=front)
        except QueueFull:
            pending.fail(self._queue_full())
        self._queue_gauges()

    def _enqueue_batch(self, batch: Batch[tuple[InferenceRequest, asyncio.Future[InferenceResult]]]) -> None:
        requests = [r for r, _ in batch.items]
        futures = [f for _, f in batch.items]
        placement = self._placement_request(requests[0], [])
        self._enqueue(Pending(requests, futures, placement, None, batch.opened_at))

    def _queue_gauges(self) -> None:
        for priority, depth in self.queue.depths().items():
            self.metrics.queue_depth.labels(priority).set(depth)

    # ------------------------------------------------------------------ placement

    def pump(self) -> None:
        """Place every queued request that can go somewhere now, in priority order."""
        if not len(self.queue):
            return
        now = self.clock()
        waiting: dict[tuple[str, str | None], Wait] = {}
        for entry in list(self.queue):
            pending = entry.item
            if pending.done:
                self.queue.remove(entry)
                continue
            key = (pending.placement.model, pending.exclusive_gpu)
            decision: Placement | Wait | Infeasible
            if key in waiting and not pending.placement.avoid:
                decision = waiting[key]  # an identical request found no room a moment ago
            else:
                started = time.perf_counter()
                decision = self.pools.place(
                    pending.placement,
                    now,
                    self.policy,
                    self.rng,
                    exclusive_gpu=pending.exclusive_gpu,
                    known_model=self.catalog.group_of(pending.placement.model) is not None,
                )
                self.metrics.placement_duration.observe(time.perf_counter() - started)
            if isinstance(decision, Wait) and decision.stuck and pending.placement.avoid and pending.last_error:
                # A retry with nowhere else to go: answer with the failure now rather than wait.
                self.queue.remove(entry)
                self.pools.release(pending.first.request_id)
                pending.fail(pending.last_error)
                continue
            if isinstance(decision, Wait):
                pending.last_wait = decision
                if decision.stuck:
                    pending.waiting_since = pending.waiting_since or now
                else:
                    pending.waiting_since = None
                waiting.setdefault(key, decision)
                continue
            self.queue.remove(entry)
            if isinstance(decision, Infeasible):
                self._reject(pending, decision)
                continue
            self.metrics.queue_wait.labels(entry.priority.value).observe(now - entry.enqueued_at)
            self._send(pending, decision, now)
        self._queue_gauges()

    def _reject(self, pending: Pending, decision: Infeasible) -> None:
        self.pools.release(pending.first.request_id)
        self.metrics.rejected.labels("not_found" if decision.not_found else "bad_request").inc()
        error: GpuplaneError = (
            NotFound(decision.reason, field=decision.field)
            if decision.not_found
            else InvalidRequest(decision.reason, field=decision.field)
        )
        pending.fail(error)

    def _give_up_stuck(self, now: float) -> None:
        for entry in list(self.queue):
            pending = entry.item
            since = pending.waiting_since
            if since is None or now - since < self.settings.unplaceable_timeout_s:
                continue
            self.queue.remove(entry)
            self.pools.release(pending.first.request_id)
            self.metrics.rejected.labels("no_worker").inc()
            reasons = "; ".join(pending.last_wait.reasons) if pending.last_wait else "no worker"
            pending.fail(
                NoWorker(
                    f"no worker could take {pending.placement.model} for "
                    f"{self.settings.unplaceable_timeout_s:g} s: {reasons}"
                )
            )
        self._queue_gauges()

    def _send(self, pending: Pending, placement: Placement, now: float) -> None:
        record = self.pools.workers[placement.worker_id]
        exclusive_for = pending.first.request_id if placement.exclusive_device else None
        self.pools.on_sent(placement.worker_id, now, exclusive_for=exclusive_for)
        label = device_label(record.status.host, record.status.device, self.pools.many_hosts())
        self.metrics.decisions.labels(placement.route.value, self.policy.NAME, label).inc()
        if len(pending.requests) > 1 or pending.first.kind is InferenceKind.EMBEDDING:
            self.metrics.batch_size.observe(len(pending.requests))
        decisions_log.info(
            "%s %s %s -> %s on %s [%s] %s",
            ",".join(r.request_id[:8] for r in pending.requests),
            pending.first.kind.value,
            pending.placement.model,
            placement.worker_id,
            label,
            placement.route.value,
            placement.reason,
        )
        task = asyncio.create_task(self._dispatch(pending, placement, record), name=f"dispatch {placement.worker_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self, pending: Pending, placement: Placement, record: WorkerRecord) -> None:
        task_id = uuid.uuid4().hex
        out = OutTask(pending, placement.worker_id, record.status.host, self.clock())
        self.out[task_id] = out
        relay: Subscription | None = None
        relay_subject = stream_chunks(ServiceName.ROUTER, self.instance, task_id)
        try:
            if pending.streaming:
                relay = await self.bus.subscribe(relay_subject, StreamChunk, self._relay(out, placement, record))
            task = WorkerTask(
                task_id=task_id,
                request_ids=tuple(r.request_id for r in pending.requests),
                kind=pending.first.kind,
                model=pending.placement.model,
                group=pending.placement.group,
                bodies=tuple(r.body for r in pending.requests),
                priority=pending.placement.priority,
                exclusive=placement.exclusive_device is not None,
                stream_subject=relay_subject if pending.streaming else None,
                attempt=pending.failures + pending.requeues + 1,
            )
            try:
                result = await self._call(out, task)
            except WorkerLost as exc:
                # A dead process says nothing about the next one under its name: no circuit failure.
                self.pools.on_done(placement.worker_id, self.clock(), ok=None)
                self._failed(pending, placement, exc, lost=True)
                return
            except RemoteError as exc:
                if exc.code in CLIENT_ERROR_CODES:
                    self.pools.on_done(placement.worker_id, self.clock(), ok=None)
                    pending.fail(
                        NotFound(exc.remote_message, field=exc.field)
                        if exc.code == "not_found"
                        else InvalidRequest(exc.remote_message, field=exc.field)
                    )
                    return
                self._circuit(placement.worker_id, ok=False)
                self._failed(pending, placement, exc, lost=False)
                return
            except BusError as exc:
                self._circuit(placement.worker_id, ok=False)
                self._failed(pending, placement, exc, lost=False)
                return
            self._circuit(placement.worker_id, ok=True)
            if pending.streaming:
                try:
                    await asyncio.wait_for(out.stream_done.wait(), self.settings.stream_tail_s)
                except TimeoutError:
                    log.warning("stream of %s ended without its last chunk", pending.first.request_id)
            self._answer(pending, placement, result)
        finally:
            self.out.pop(task_id, None)
            self.answers.forget(task_id)
            if relay is not None:
                await relay.unsubscribe()
            if pending.done:
                self.pools.release(pending.first.request_id)
            self.pump()

    async def _call(self, out: OutTask, task: WorkerTask) -> WorkerResult:
        """The worker's answer, or ``WorkerLost`` as soon as the worker is known to be gone."""
        call = asyncio.ensure_future(
            self.bus.request(
                worker_task(out.host, out.worker_id), task, WorkerResult, timeout_s=self.settings.task_timeout_s
            )
        )
        lost = asyncio.ensure_future(out.lost.wait())
        try:
            await asyncio.wait({call, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if call.done():
            try:
                return call.result()
            except NoResponders as exc:
                # Nobody subscribes to its task subject: the process is gone, whatever its last status
                # said; it counts as alive again only once a new process reports.
                self.pools.mark_gone(out.worker_id)
                raise WorkerLost(f"worker {out.worker_id} is not running") from exc
        call.cancel()
        raise WorkerLost(f"worker {out.worker_id}: {out.lost_why}")

    def _circuit(self, worker_id: str, *, ok: bool) -> None:
        change = self.pools.on_done(worker_id, self.clock(), ok=ok)
        if change is not None:
            log.warning("%s", change)
            self.metrics.circuit_changes.labels(worker_id, "closed" if ok else "open").inc()

    def _failed(self, pending: Pending, placement: Placement, exc: GpuplaneError, *, lost: bool) -> None:
        """Send it elsewhere when that is safe and allowed; otherwise answer with the failure."""
        worker = placement.worker_id
        if pending.committed:
            self._end_stream(pending, f"worker {worker} failed mid-stream: {exc}")
            pending.fail(OperationFailed(f"worker {worker} failed after streaming began: {exc}"))
            return
        if lost:
            allowed = pending.requeues < self.settings.lost_worker_requeues
        else:
            allowed = pending.failures < self.settings.retry_attempts
        if not allowed:
            pending.fail(
                OperationFailed(
                    f"{pending.placement.model} failed on {worker} "
                    f"after {pending.failures + pending.requeues + 1} attempt(s): {exc}"
                )
            )
            return
        avoid = set(pending.placement.avoid)
        if lost:
            # Not avoided: the supervisor may bring the same worker back as a new process.
            pending.requeues += 1
        else:
            pending.failures += 1
            avoid.add(worker)
            pending.last_error = OperationFailed(
                f"{pending.placement.model} failed on {worker} and no other worker can take it: {exc}"
            )
        self.metrics.retries.labels("worker_lost" if lost else "failure").inc()
        self.pools.release(pending.first.request_id)
        pending.placement = self._placement_request(
            pending.first, sorted(avoid), attempt=pending.failures + pending.requeues + 1
        )
        log.warning("request %s failed on %s (%s); sending it to another worker", pending.first.request_id, worker, exc)
        self._enqueue(pending, front=True)

    def _answer(self, pending: Pending, placement: Placement, result: WorkerResult) -> None:
        pending.done = True
        now = self.clock()
        for i, (request, future) in enumerate(zip(pending.requests, pending.futures, strict=True)):
            if future.done():
                continue
            body = result.bodies[i] if i < len(result.bodies) else None
            answer = InferenceResult(
                request_id=request.request_id,
                body=None if pending.streaming else body,
                worker_id=result.worker_id,
                device=result.device,
                host=result.host,
                route=placement.route,
                group=result.group,
                reason=placement.reason,
                attempts=pending.failures + pending.requeues + 1,
                batch_size=len(pending.requests),
                queued_s=max(0.0, now - pending.arrived_at - result.service_s - result.load_s),
            )
            future.set_result(answer)
            # Kept as they are; made into RoutingDecisions only when the state is asked for (off the hot path).
            self.decisions.appendleft((utc_now(), request.model, answer))

    def _worker_lost(self, worker_id: str, why: str) -> None:
        for out in self.out.values():
            if out.worker_id == worker_id and not out.lost.is_set():
                log.warning("worker %s lost (%s): moving its request %s", worker_id, why, out.pending.first.request_id)
                out.lost.set()

    # ------------------------------------------------------------------ streams

    def _relay(
        self, out: OutTask, placement: Placement, record: WorkerRecord
    ) -> Callable[[StreamChunk, Delivery], asyncio.Future[None]]:
        pending = out.pending
        target = pending.first.stream_subject

        async def on_chunk(chunk: StreamChunk, _: Delivery) -> None:
            if target is None or pending.done or out.lost.is_set():
                return
            first = not pending.committed
            pending.committed = True
            relayed = chunk.model_copy(
                update={
                    "request_id": pending.first.request_id,
                    "seq": pending.relay_seq,
                    "worker_id": placement.worker_id if first else chunk.worker_id,
                    "device": record.status.device if first else chunk.device,
                    "host": record.status.host if first else chunk.host,
                    "route": placement.route if first else chunk.route,
                }
            )
            pending.relay_seq += 1
            await self.bus.publish(target, relayed)
            if chunk.done or chunk.error:
                out.stream_done.set()

        return on_chunk  # type: ignore[return-value]

    def _end_stream(self, pending: Pending, error: str) -> None:
        target = pending.first.stream_subject
        if target is None:
            return
        chunk = StreamChunk(request_id=pending.first.request_id, seq=pending.relay_seq, error=error)
        pending.relay_seq += 1
        task = asyncio.create_task(self.bus.publish(target, chunk))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ state

    async def _on_state(self, _: RouterStateRequest, __: Delivery) -> RouterState:
        return self.state()

    def state(self) -> RouterState:
        now = self.clock()
        views = []
        for record in sorted(self.pools.workers.values(), key=lambda r: (r.key, r.status.worker_id)):
            why = self.pools.why_not(record, now)
            views.append(
                WorkerView(
                    status=record.status,
                    alive=self.pools.alive(record, now),
                    gpu_healthy=self.pools.gpu_ok(record)[0],
                    circuit=record.circuit.state(now).value,
                    eligible=why is None,
                    why_not=why,
                )
            )
        return RouterState(
            router=self.instance,
            policy=self.policy.NAME,
            workers=tuple(views),
            devices=self._devices(now),
            groups=self._groups(),
            queued=self.queue.depths(),
            queue_limit=self.queue.limit,
            in_flight=len(self.out),
            decisions=tuple(
                RoutingDecision(
                    at=at,
                    model=model,
                    request_id=a.request_id,
                    group=a.group,
                    worker_id=a.worker_id,
                    host=a.host,
                    device=a.device,
                    route=a.route,
                    reason=a.reason,
                    attempts=a.attempts,
                    batch_size=a.batch_size,
                    queued_s=a.queued_s,
                )
                for at, model, a in self.decisions
            ),
        )

    def _groups(self) -> tuple[GroupInfo, ...]:
        infos = list(self.catalog.infos())
        known = {m.id for g in infos for m in g.models}
        extra = sorted(
            {m for r in self.pools.workers.values() for m in r.status.models if m not in known}
        )
        infos.extend(
            GroupInfo(group_id=m, models=(ModelInfo(id=m, kind=InferenceKind.CHAT),), vram_gb=0.0, load_time_s=0.0)
            for m in extra
        )
        return tuple(infos)

    def _devices(self, now: float) -> tuple[DeviceStats, ...]:
        """Per-GPU figures: the detector's, with the simulated workers' load where the fleet is simulated."""
        by_device: dict[tuple[str, str], list[WorkerRecord]] = {}
        for record in self.pools.workers.values():
            if self.pools.alive(record, now) and record.status.device != "cpu":
                by_device.setdefault(record.key, []).append(record)
        stats: dict[tuple[str, str], DeviceStats] = {}
        for inv in self.inventories.all():
            simulated = inv.source is InventorySource.SIMULATED
            for gpu in inv.gpus:
                key = (inv.host, f"cuda:{gpu.index}")
                workers = by_device.get(key, [])
                util = gpu.utilization_percent or 0.0
                used_mb = float(gpu.vram_used_mb)
                if simulated and workers:
                    util = max((w.status.utilization_percent or 0.0) for w in workers)
                    used_mb = max(used_mb, float(sum(w.status.vram_used_mb or 0 for w in workers)))
                stats[key] = self._device_stats(key, gpu.name, util, used_mb, float(gpu.vram_total_mb), gpu.healthy)
        for key, workers in by_device.items():
            if key in stats:
                continue
            status = workers[0].status
            total = float(status.vram_total_mb or 0)
            used = float(sum(w.status.vram_used_mb or 0 for w in workers))
            util = max((w.status.utilization_percent or 0.0) for w in workers)
            stats[key] = self._device_stats(key, status.gpu_name, util, used, total, True)
        return tuple(stats[k] for k in sorted(stats))

    def _device_stats(
        self, key: tuple[str, str], name: str | None, util: float, used_mb: float, total_mb: float, healthy: bool
    ) -> DeviceStats:
        peak = max(self.peaks.get(key, 0.0), util)
        self.peaks[key] = peak
        return DeviceStats(
            host=key[0],
            device=key[1],
            name=name,
            utilization=round(util, 1),
            memory_used=round(used_mb / MB_PER_GB, 2),
            memory_total=round(total_mb / MB_PER_GB, 2),
            memory_percent=round(100.0 * used_mb / total_mb, 1) if total_mb else 0.0,
            peak_utilization=round(peak, 1),
            healthy=healthy,
        )


def queue_group_router() -> str:
    return queue_group(ServiceName.ROUTER)
