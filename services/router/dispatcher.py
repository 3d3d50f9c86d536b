"""The async shell around the request lifecycle: worker reports in, requests placed, carried and answered.

Hosted twice: by the router service (requests over NATS) and by the gateway (its /v1 requests, routed
in-process and sent straight to the engines). Both learn the workers from the same reports over NATS,
so every router counts the load the workers report plus what it sent itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.router.core.lifecycle import Answer, Delivered, Lifecycle, LifecycleRules, Send
from services.router.core.policies import RoutingPolicy, make_policy
from services.router.core.pools import Pools, PoolSettings, device_label
from services.router.core.view import record_peak, router_state
from services.router.metrics import RouterMetrics, router_metrics
from services.router.settings import RouterSettings
from services.router.transports import ChunkSink, HttpEngine, NatsWorker, StreamMeta, WorkerLost
from shared.answers import AnswerWatch
from shared.bus.base import Bus, Delivery
from shared.contracts import (
    InferenceRequest,
    Inventory,
    Priority,
    Route,
    RouterState,
    ServiceName,
    WorkerStatus,
)
from shared.errors import GpuplaneError, InvalidRequest, NotFound
from shared.fleet import LatestInventories
from shared.modelgroups import ModelCatalog
from shared.subjects import INVENTORY_ALL, WORKER_STATUS_ALL
from shared.telemetry import tracing_wanted

log = logging.getLogger("gpuplane.router")
decisions_log = logging.getLogger("gpuplane.router.decisions")


class ClientGone(GpuplaneError):
    """The request's only client went away before its answer."""


class _Metrics:
    """The core's observer: Prometheus counters with bounded labels."""

    def __init__(self, metrics: RouterMetrics, policy: str) -> None:
        self.m = metrics
        self.policy = policy

    def rejected(self, reason: str) -> None:
        self.m.rejected.labels(reason).inc()

    def retried(self, why: str) -> None:
        self.m.retries.labels(why).inc()

    def queue_changed(self, depths: dict[str, int]) -> None:
        for priority, depth in depths.items():
            self.m.queue_depth.labels(priority).set(depth)

    def placed(self, route: Route, device: str, waited_s: float, priority: Priority, batch: int) -> None:
        self.m.decisions.labels(route.value, self.policy, device).inc()
        self.m.queue_wait.labels(priority.value).observe(waited_s)
        if batch > 1:
            self.m.batch_size.observe(batch)

    def circuit(self, worker_id: str, closed: bool, text: str) -> None:
        log.warning("%s", text)
        self.m.circuit_changes.labels(worker_id, "closed" if closed else "open").inc()


class _Committing:
    """A sink that marks the request committed at its first chunk (it may no longer go elsewhere)."""

    __slots__ = ("inner", "send")

    def __init__(self, inner: ChunkSink, send: Send) -> None:
        self.inner = inner
        self.send = send

    async def begin(self, meta: StreamMeta) -> None:
        self.send.pending.committed = True
        await self.inner.begin(meta)

    async def data(self, payload: bytes) -> None:
        await self.inner.data(payload)

    async def end(self, error: str | None) -> None:
        await self.inner.end(error)


@dataclass
class _Out:
    send: Send
    task: asyncio.Task[Any] | None
    lost: bool = False
    why: str = "it went away with the request"
    abandoned: bool = False
    """Its only client left: the call was cancelled, and it counts neither for nor against the worker."""


class Dispatcher:
    """One router's requests: placed by the pure core, carried by a transport, answered or retried."""

    def __init__(
        self,
        bus: Bus,
        settings: RouterSettings,
        catalog: ModelCatalog,
        instance: str,
        service: ServiceName,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: RoutingPolicy | None = None,
        engine_token: str | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.instance = instance
        self.clock = clock
        chosen = policy or make_policy(settings.routing_policy, settings.give_way_factor)
        self.metrics = metrics or router_metrics()
        self.core = Lifecycle.build(
            catalog,
            chosen,
            LifecycleRules(
                retry_attempts=settings.retry_attempts,
                lost_worker_requeues=settings.lost_worker_requeues,
                unplaceable_timeout_s=settings.unplaceable_timeout_s,
                queue_limit=settings.queue_limit,
                embedding_batch_max=settings.embedding_batch_max,
                embedding_batch_window_s=settings.embedding_batch_window_s,
            ),
            PoolSettings(
                worker_timeout_s=settings.worker_timeout_s,
                worker_queue_limit=settings.worker_queue_limit,
                failure_threshold=settings.circuit_failure_threshold,
                reset_s=settings.circuit_reset_s,
                prefix_affinity=settings.prefix_affinity,
            ),
            seed=settings.seed,
            observer=_Metrics(self.metrics, chosen.NAME),
        )
        self.nats = NatsWorker(
            bus,
            service,
            instance,
            timeout_s=settings.task_timeout_s,
            stream_tail_s=settings.stream_tail_s,
            answers=AnswerWatch(settings.answer_check_after_s, settings.answer_grace_s),
            clock=clock,
        )
        http = HttpEngine(
            token=engine_token, timeout_s=settings.task_timeout_s, tracing=tracing_wanted(settings.otlp_endpoint)
        )
        self.http = http
        self.inventories = LatestInventories()
        self.peaks: dict[tuple[str, str], float] = {}
        self.out: dict[int, _Out] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    @property
    def pools(self) -> Pools:
        return self.core.pools

    # ------------------------------------------------------------------ wiring

    async def start(self) -> None:
        """Follow the workers' reports and the inventories (the GPUs' health)."""
        await self.bus.subscribe(WORKER_STATUS_ALL, WorkerStatus, self._on_status)
        await self.bus.subscribe(INVENTORY_ALL, Inventory, self._on_inventory)
        for inv in await self.bus.latest(INVENTORY_ALL, Inventory):
            await self._on_inventory(inv, Delivery(subject=INVENTORY_ALL))

    async def run_timers(self) -> None:
        """Sweep for lost workers, due batches and stuck requests; wake early when asked."""
        while True:
            due = self.core.next_due_at()
            delay = 0.25 if due is None else max(0.0, min(0.25, due - self.clock()))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            self._wake.clear()
            self.tick()

    def tick(self) -> None:
        silent, sends = self.core.tick(self.clock())
        for worker_id in silent:
            self._worker_lost(worker_id, "it fell silent")
        self._launch(sends)

    async def watch_answers(self) -> None:
        """Every ``answer_check_interval_s``, ask workers about NATS tasks out for a while; resend the lost."""
        while True:
            await asyncio.sleep(self.settings.answer_check_interval_s)
            await self.check_answers()

    async def check_answers(self) -> None:
        lost = await self.nats.check_answers()
        if lost:
            log.warning("%d answer(s) lost on the way back from workers; sending those requests again", lost)
            self.metrics.lost_answers.inc(lost)

    async def close(self) -> None:
        self.core.flush()
        self.pump()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.settings.drain_timeout_s)
        await self.http.close()

    def held_request_ids(self) -> set[str]:
        mine = self.core.held_request_ids()
        mine.update(r.request_id for out in self.out.values() for r in out.send.pending.requests)
        return mine

    # ------------------------------------------------------------------ inputs

    async def _on_status(self, status: WorkerStatus, _: Delivery) -> None:
        pools = self.core.pools
        known = status.worker_id in pools.workers
        lost = pools.on_status(status, self.clock())
        if status.utilization_percent is not None and status.device != "cpu":
            record_peak(self.peaks, (status.host, status.device), status.utilization_percent)
        if not known:
            log.info(
                "worker %s registered: %s on %s, %d slot(s), groups %s, engine %s",
                status.worker_id,
                status.backend,
                status.device,
                status.slots,
                ", ".join(status.groups_loaded) or "none",
                status.engine_url or "through the worker",
            )
        if lost is not None:
            log.info("worker %s: %s", status.worker_id, lost)
            self._worker_lost(status.worker_id, lost)
            if lost == "it restarted":
                pools.forget_failures(status.worker_id)
        self.pump()

    async def _on_inventory(self, inv: Inventory, _: Delivery) -> None:
        if not self.inventories.apply(inv):
            return
        for change in self.core.pools.on_inventory(inv):
            log.warning("pool change: %s", change)
        self.pump()

    # ------------------------------------------------------------------ requests

    async def submit(self, request: InferenceRequest, sink: ChunkSink | None = None) -> Answer:
        """Place, send and answer one request; with ``sink`` its chunks go there as they come."""
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        if self.core.submit(request, waiter, self.clock(), sink=sink):
            self._wake.set()
        self.pump()
        try:
            return await waiter
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise

    def _abandon(self, waiter: asyncio.Future[Answer]) -> None:
        """The client left: its queued request is dropped, and one out at an engine is called off there (the
        connection closes, so an engine stops generating for nobody). A batch goes on for its other clients."""
        for entry in self.core.queue:
            if entry.item.waiters == [waiter]:
                entry.item.done = True
        for out in self.out.values():
            if out.send.pending.waiters == [waiter] and not out.abandoned and out.task is not None:
                out.abandoned = True
                out.task.cancel()

    def pump(self) -> None:
        if len(self.core.queue):
            started = time.perf_counter()
            sends = self.core.pump(self.clock())
            self.metrics.placement_duration.observe(time.perf_counter() - started)
            self._launch(sends)

    def _launch(self, sends: list[Send]) -> None:
        many = self.core.pools.many_hosts()
        for send in sends:
            status = send.record.status
            decisions_log.info(
                "%s %s %s -> %s on %s [%s] %s",
                ",".join(r.request_id[:8] for r in send.pending.requests),
                send.pending.first.kind.value,
                send.pending.placement.model,
                status.worker_id,
                device_label(status.host, status.device, many),
                send.placement.route.value,
                send.placement.reason,
            )
            task = asyncio.create_task(self._dispatch(send), name=f"dispatch {status.worker_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, send: Send) -> None:
        out = _Out(send, asyncio.current_task())
        key = id(out)
        self.out[key] = out
        sink = send.pending.sink
        try:
            delivered = await self._carry(out, _Committing(sink, send) if sink is not None else None)
        except WorkerLost as exc:
            if exc.gone:
                self.core.pools.mark_gone(send.placement.worker_id)
            self._failed(send, exc, lost=True)
        except (InvalidRequest, NotFound, ClientGone) as exc:
            self.core.refused(send, exc, self.clock())
        except GpuplaneError as exc:
            self._failed(send, exc, lost=False)
        else:
            self.core.answered(send, delivered, self.clock())
        finally:
            del self.out[key]
            self.pump()

    async def _carry(self, out: _Out, sink: ChunkSink | None) -> Delivered:
        """The transport's answer, or ``WorkerLost`` as soon as the worker is known to be gone
        (``_worker_lost`` cancels this task; no second future waits beside every request)."""
        # Straight to the transport that carries it: every await level is paid again at each resumption.
        carrier = self.http.call if out.send.record.status.engine_url else self.nats.call
        try:
            return await carrier(out.send, sink)
        except asyncio.CancelledError:
            if (out.lost or out.abandoned) and out.task is not None and out.task.uncancel() == 0:
                if out.abandoned:
                    raise ClientGone(f"the client of request {out.send.pending.first.request_id} left") from None
                raise WorkerLost(f"worker {out.send.placement.worker_id}: {out.why}") from None
            raise

    def _failed(self, send: Send, exc: GpuplaneError, *, lost: bool) -> None:
        pending = send.pending
        if pending.committed and pending.sink is not None:
            task = asyncio.create_task(pending.sink.end(f"worker {send.placement.worker_id} failed mid-stream: {exc}"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        said = self.core.failed(send, exc, self.clock(), lost=lost)
        if said is not None:
            log.warning("%s", said)

    def _worker_lost(self, worker_id: str, why: str) -> None:
        for out in self.out.values():
            if out.send.placement.worker_id == worker_id and not out.lost:
                log.warning("worker %s lost (%s): moving request %s", worker_id, why, out.send.pending.first.request_id)
                out.why = why
                out.lost = True
                if out.task is not None:
                    out.task.cancel()

    # ------------------------------------------------------------------ state

    def state(self) -> RouterState:
        return router_state(self.instance, self.core, self.inventories.all(), self.peaks, len(self.out), self.clock())

    def health(self) -> dict[str, str]:
        now = self.clock()
        pools = self.core.pools
        alive = [r for r in pools.workers.values() if pools.alive(r, now)]
        return {
            "policy": self.core.policy.NAME,
            "workers": str(len(alive)),
            "queued": str(len(self.core.queue)),
            "in_flight": str(len(self.out)),
        }
