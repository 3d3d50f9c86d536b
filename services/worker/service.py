"""The worker's async shell: learn the device, register, take tasks, report status, drain.

Scheduling lives in ``core.pool`` and execution in a backend; this module moves tasks between
the bus (or the engine's HTTP server, ``engine``), the pool and the backend, and says what the
worker is doing. A task runs the same way whichever way it came; only where a streamed answer's
chunks go differs (an ``AnswerStream``: StreamChunks on NATS, or server-sent events over HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from services.worker.backends import BackendConfig, ChunkSink, Execution, InferenceBackend, LoadResult, open_backend
from services.worker.backends.base import AnswerAbandoned, EngineLaunch, UpstreamEngine
from services.worker.backends.llamacpp import LlamaCppBackend
from services.worker.core.device import CPU, DeviceProfile, find_gpu, make_profile
from services.worker.core.pool import Pool
from services.worker.core.status import WorkerIdentity, build_status
from services.worker.engine import Engine
from services.worker.metrics import WorkerMetrics, worker_metrics
from services.worker.settings import WorkerSettings
from shared.bus.base import Bus, Delivery, Subscription
from shared.contracts import (
    Gpu,
    InferenceKind,
    Inventory,
    StreamChunk,
    WorkerHeld,
    WorkerHeldQuery,
    WorkerResult,
    WorkerState,
    WorkerStatus,
    WorkerTask,
    utc_now,
)
from shared.errors import BusError, ConfigError, GpuplaneError, InvalidRequest
from shared.modelgroups import ModelCatalog, load_model_catalog
from shared.service import ServiceContext, StartFn
from shared.subjects import inventory, worker_held, worker_status, worker_task

log = logging.getLogger("gpuplane.worker")

CLIENT_FAULTS = ("bad_request", "not_found")


class WorkerUnavailable(GpuplaneError):
    """The worker is stopping and takes no new tasks (a router sends the task elsewhere)."""


class AnswerStream(Protocol):
    """Where the chunks of one streamed answer go, in order, then its end."""

    sent: int
    """Chunks sent so far."""

    async def emit(self, data: dict[str, Any]) -> None: ...

    async def finish(self, error: GpuplaneError | None = None) -> None:
        """The end: done, or ``error`` when the answer broke off after ``sent`` chunks."""
        ...


class _Stream:
    """Numbers the chunks of one streamed answer and publishes them to the task's stream subject."""

    def __init__(self, bus: Bus, subject: str, task: WorkerTask, identity: WorkerIdentity) -> None:
        self._bus = bus
        self._subject = subject
        self._task = task
        self._identity = identity
        self.sent = 0

    async def _publish(
        self, data: dict[str, object] | None = None, done: bool = False, error: str | None = None
    ) -> None:
        chunk = StreamChunk(
            request_id=self._task.request_ids[0],
            seq=self.sent,
            data=data,
            done=done,
            error=error,
            worker_id=self._identity.worker_id,
            device=self._identity.device,
            host=self._identity.host,
            attempt=self._task.attempt,
        )
        await self._bus.publish(self._subject, chunk)
        self.sent += 1

    async def emit(self, data: dict[str, object]) -> None:
        await self._publish(data=data)

    async def finish(self, error: GpuplaneError | None = None) -> None:
        """The last chunk: ``done``, or ``error`` when the answer broke off."""
        await self._publish(done=error is None, error=None if error is None else str(error))


class Spawner(Protocol):
    """Runs the worker's background loops (the service's context, or an agent's own set of tasks)."""

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...


class Worker:
    """One device's worker: the pool in front of the backend, and the status routers read."""

    def __init__(
        self,
        bus: Bus,
        settings: WorkerSettings,
        identity: WorkerIdentity,
        backend_config: BackendConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utc_now,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.identity = identity
        self._bus = bus
        self._settings = settings
        self._clock = clock
        self._wall = wall
        self._metrics = metrics or worker_metrics()
        self.pool = Pool(identity.slots, now=clock())
        self.backend: InferenceBackend = open_backend(
            identity.backend, replace(backend_config, on_change=self.changed, on_load=self._loaded)
        )
        self.state = WorkerState.STARTING
        self._sequence = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._subscription: Subscription | None = None
        self._final_sent = False
        self._held: set[str] = set()
        """Tasks accepted over NATS and not answered yet (queued or running)."""
        self._engine: Engine | None = None

    # --------------------------------------------------------------- lifecycle

    async def open(self, ctx: Spawner) -> None:
        """Prepare the backend, subscribe to tasks, start reporting; preload the default group."""
        settings = self._settings
        if settings.default_group is not None:
            self.backend.check_group(settings.default_group)
        await self.backend.start()
        await self._open_engine()
        ctx.spawn(self.backend.maintain(), name="backend")
        ctx.spawn(self.run_status(), name="status")
        self._subscription = await self._bus.subscribe(
            worker_task(self.identity.host, self.identity.worker_id),
            WorkerTask,
            self.on_task,
            max_in_flight=settings.task_concurrency_limit,
        )
        held = worker_held(self.identity.host, self.identity.worker_id)
        await self._bus.subscribe(held, WorkerHeldQuery, self.on_held)
        if settings.default_group is not None and not settings.lazy_load_model:
            ctx.spawn(self._preload(settings.default_group), name="preload")
        else:
            self._set_state(WorkerState.READY)

    async def _open_engine(self) -> None:
        """Serve the engine (or name the upstream's) so that every status carries its ``engine_url``."""
        if not self._settings.engine_enabled:
            return
        if isinstance(self.backend, UpstreamEngine):
            url = self.backend.engine_url
            where = (
                f"the upstream, {url}"
                if url
                else "none advertised (the upstream's key stays here: requests come over NATS)"
            )
        else:
            self._engine = Engine(self, self._settings)
            url = where = await self._engine.start()
        self.identity = replace(self.identity, engine_url=url)
        log.info("worker %s: engine %s", self.identity.worker_id, where)

    async def _preload(self, group: str) -> None:
        log.info("preloading group %s on %s", group, self.identity.device)
        await self.backend.preload(group)
        if self.state is WorkerState.STARTING:
            self._set_state(WorkerState.READY)

    async def stop(self) -> None:
        """Take no new tasks, finish those accepted (up to ``drain_timeout_s``), then say ``stopped``."""
        self._set_state(WorkerState.DRAINING)
        if self._subscription is not None:
            with contextlib.suppress(BusError):
                await self._subscription.unsubscribe()
        await self.publish_status()
        try:
            await asyncio.wait_for(self._idle.wait(), self._settings.drain_timeout_s)
        except TimeoutError:
            log.warning(
                "%d task(s) still running and %d queued after %.1f s of draining",
                self.pool.in_flight,
                self.pool.queue_depth,
                self._settings.drain_timeout_s,
            )
        if self._engine is not None:
            await self._engine.stop()
        self._set_state(WorkerState.STOPPED)
        await self.publish_status()
        self._final_sent = True
        await self.backend.close()

    def drain(self) -> None:
        """Take no new request (routers see ``draining``); those running finish. ``resume`` undoes it."""
        if self.state is WorkerState.READY:
            self._set_state(WorkerState.DRAINING)

    def resume(self) -> None:
        if self.state is WorkerState.DRAINING and not self._final_sent:
            self._set_state(WorkerState.READY)

    def _set_state(self, state: WorkerState) -> None:
        if state is not self.state:
            log.info("worker %s on %s: %s", self.identity.worker_id, self.identity.device, state.value)
        self.state = state
        self.changed()

    # --------------------------------------------------------------- tasks

    async def on_held(self, query: WorkerHeldQuery, _: Delivery) -> WorkerHeld:
        """Which of the router's tasks this worker still holds; the others' answers are sent (or lost)."""
        held = tuple(t for t in query.task_ids if t in self._held)
        return WorkerHeld(worker_id=self.identity.worker_id, task_ids=held)

    @property
    def accepting(self) -> bool:
        """Whether new tasks are taken (not while draining or stopped)."""
        return self.state not in (WorkerState.DRAINING, WorkerState.STOPPED)

    def check_accepting(self) -> None:
        """``WorkerUnavailable`` while draining or stopped."""
        if not self.accepting:
            raise WorkerUnavailable(f"worker {self.identity.worker_id} is {self.state.value}; send the task elsewhere")

    def _admit(self, task: WorkerTask) -> None:
        self.check_accepting()
        self._check(task)

    async def on_task(self, task: WorkerTask, _: Delivery) -> WorkerResult:
        """Queue, run and answer one task. Errors are typed; the bus turns them into error replies."""
        self._admit(task)
        stream = _Stream(self._bus, task.stream_subject, task, self.identity) if task.stream_subject else None
        self._held.add(task.task_id)
        try:
            return await self._queue_and_run(task, stream)
        finally:
            self._held.discard(task.task_id)

    async def serve(self, task: WorkerTask, stream: AnswerStream | None = None) -> WorkerResult:
        """Queue, run and answer one task that came another way than NATS (the engine's HTTP server).

        With ``stream`` the answer goes there as chunks. Errors are typed (``WorkerUnavailable`` while
        draining); cancelling the caller withdraws the task, or stops it and frees its slot.
        """
        self._admit(task)
        if stream is not None and len(task.bodies) != 1:
            raise InvalidRequest("a streamed task carries exactly one request", field="stream")
        return await self._queue_and_run(task, stream)

    async def _queue_and_run(self, task: WorkerTask, stream: AnswerStream | None) -> WorkerResult:
        ticket = self.pool.submit(
            task.priority,
            now=self._clock(),
            exclusive=task.exclusive,
            label=task.request_ids[0],
            requests=len(task.request_ids),
        )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[ticket] = turn
        self._dispatch()
        try:
            await turn
        except asyncio.CancelledError:
            self._waiting.pop(ticket, None)
            self.pool.cancel(ticket, self._clock())
            self._dispatch()
            raise
        return await self._run(task, ticket, stream)

    def _check(self, task: WorkerTask) -> None:
        if not task.bodies:
            raise InvalidRequest("a task needs at least one body", field="bodies")
        if len(task.bodies) != len(task.request_ids):
            raise InvalidRequest(
                f"a task needs one body per request id ({len(task.request_ids)} ids, {len(task.bodies)} bodies)",
                field="bodies",
            )
        if task.stream_subject is not None and len(task.bodies) != 1:
            raise InvalidRequest("a streamed task carries exactly one request", field="stream_subject")
        if len(task.bodies) > 1 and task.kind is not InferenceKind.EMBEDDING:
            raise InvalidRequest("only embedding requests are batched", field="bodies")
        self.backend.group_for(task.model)

    async def _run(self, task: WorkerTask, ticket: int, stream: AnswerStream | None) -> WorkerResult:
        emit: ChunkSink | None = stream.emit if stream else None
        started = self._clock()
        outcome = "error"
        execution: Execution | None = None
        try:
            execution = await self.backend.execute(task, emit)
            if stream is not None:
                await stream.finish()
            result = WorkerResult(
                task_id=task.task_id,
                worker_id=self.identity.worker_id,
                device=self.identity.device,
                host=self.identity.host,
                group=execution.load.group,
                bodies=execution.bodies,
                loaded_group=execution.load.loaded,
                load_s=execution.load.load_s,
                service_s=max(0.0, execution.service_s),
            )
            outcome = "ok"
        except GpuplaneError as exc:
            if exc.reply_code in CLIENT_FAULTS:
                outcome = "rejected"
            if stream is not None and stream.sent:
                # The client already has part of the answer: end it visibly, the error reply follows.
                with contextlib.suppress(BusError, AnswerAbandoned):
                    await stream.finish(error=exc)
            raise
        except (asyncio.CancelledError, AnswerAbandoned):
            # Whoever asked went away: the slot is free again, and the task counts as neither done nor failed.
            outcome = "cancelled"
            raise
        finally:
            now = self._clock()
            if outcome == "cancelled":
                self.pool.cancel(ticket, now)
            else:
                self.pool.finish(
                    ticket,
                    now,
                    ok=outcome != "error",
                    service_s=execution.service_s if execution is not None else None,
                    loaded_group=execution.load.loaded if execution is not None else False,
                )
            labels = (self.identity.worker_id, self.identity.device, task.kind.value)
            self._metrics.tasks.labels(*labels, outcome).inc()
            self._metrics.task_seconds.labels(*labels).observe(now - started)
            self._dispatch()
        return result

    def _dispatch(self) -> None:
        """Let every ticket the pool starts now go on; then say what changed."""
        for ticket in self.pool.start_ready(self._clock()):
            turn = self._waiting.pop(ticket, None)
            if turn is None or turn.done():
                self.pool.cancel(ticket, self._clock())
                continue
            turn.set_result(None)
        self.changed()

    def _loaded(self, load: LoadResult) -> None:
        source = "cpu_cache" if load.from_cpu_cache else "disk"
        self._metrics.group_loads.labels(self.identity.worker_id, load.group, source).inc()

    # --------------------------------------------------------------- status

    def changed(self) -> None:
        """Something a status shows has changed: publish soon (rate-limited)."""
        self._metrics.in_flight.labels(self.identity.worker_id).set(self.pool.in_flight)
        self._metrics.queue_depth.labels(self.identity.worker_id).set(self.pool.queue_depth)
        if self.pool.idle:
            self._idle.set()
        else:
            self._idle.clear()
        self._changed.set()

    def status(self) -> WorkerStatus:
        """The status as of now (numbers it, and starts a new utilization window)."""
        self._sequence += 1
        return build_status(
            self.identity,
            self.state,
            self.pool,
            self.backend.state(),
            sequence=self._sequence,
            utilization_percent=self.pool.take_utilization(self._clock()),
            at=self._wall(),
        )

    async def publish_status(self) -> None:
        if self._final_sent:
            return
        try:
            await self._bus.publish(worker_status(self.identity.host, self.identity.worker_id), self.status())
        except BusError as exc:
            log.debug("status not sent: %s", exc)

    async def run_status(self) -> None:
        """Publish every ``status_interval_s``, and after a change no more often than ``status_min_interval_s``."""
        while not self._final_sent:
            self._changed.clear()
            await self.publish_status()
            sent_at = self._clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._settings.status_interval_s)
            pause = self._settings.status_min_interval_s - (self._clock() - sent_at)
            if pause > 0:
                await asyncio.sleep(pause)

    def health(self) -> dict[str, str]:
        backend = self.backend.state()
        return {
            "worker_id": self.identity.worker_id,
            "device": self.identity.device,
            "backend": self.identity.backend,
            "state": self.state.value,
            "slots": str(self.identity.slots),
            "in_flight": str(self.pool.in_flight),
            "queued": str(self.pool.queue_depth),
            "groups": ",".join(backend.groups_loaded) or "-",
            "engine_url": self.identity.engine_url or "-",
        }


async def learn_gpu(bus: Bus, host: str, device: str, wait_s: float) -> Gpu | None:
    """The detector's view of ``device`` on ``host``, waiting up to ``wait_s`` for an inventory.

    None when no inventory came; ``ConfigError`` naming the GPUs that exist when it lacks the device.
    """
    arrived: asyncio.Queue[Inventory] = asyncio.Queue()

    async def on_inventory(inv: Inventory, _: Delivery) -> None:
        await arrived.put(inv)

    subscription = await bus.subscribe(inventory(host), Inventory, on_inventory)
    try:
        stored = await bus.latest(inventory(host), Inventory)
        found = stored[-1] if stored else None
        if found is None:
            log.info("waiting up to %.0f s for the detector's inventory of %s", wait_s, host)
            try:
                found = await asyncio.wait_for(arrived.get(), wait_s)
            except TimeoutError:
                return None
    finally:
        await subscription.unsubscribe()
    gpu = find_gpu(device, found.gpus, host)
    if not gpu.healthy:
        log.warning("%s (%s) is unhealthy: %s", device, gpu.name, gpu.health_reason or "no reason given")
    return gpu


async def resolve_profile(bus: Bus, settings: WorkerSettings, device: str) -> DeviceProfile:
    """The device's figures from the settings and, for a GPU, the detector's inventory."""
    gpu: Gpu | None = None
    if device != CPU:
        gpu = await learn_gpu(bus, settings.host_name, device, settings.inventory_wait_s)
        if gpu is None and settings.vram_mb is None:
            raise ConfigError(
                f"the detector has not reported an inventory of host {settings.host_name} within "
                f"{settings.inventory_wait_s:g} s: start `gpuplane detector`, or set GPUPLANE_VRAM_MB (--vram-mb) "
                "to run without one"
            )
    return make_profile(device, gpu, vram_mb=settings.vram_mb, speed=settings.speed, slots=settings.slots)


def engine_launch(settings: WorkerSettings) -> EngineLaunch:
    """How the llamacpp backend starts its engine, from the worker's settings."""
    return EngineLaunch(
        host=settings.engine_host,
        port=settings.engine_port,
        advertise_host=settings.engine_advertise_host,
        threads=settings.engine_threads,
        context_tokens_per_slot=settings.engine_context_tokens_per_slot,
        model_path=settings.engine_model,
        model_alias=settings.engine_model_alias,
        token=settings.engine_bearer(),
    )


def worker_parts(
    settings: WorkerSettings,
    worker_id: str,
    device: str,
    backend: str,
    profile: DeviceProfile,
    catalog: ModelCatalog,
    upstream_url: str | None = None,
) -> tuple[WorkerIdentity, BackendConfig]:
    """A worker's identity and its backend's configuration (``upstream_url``: another upstream than the settings')."""
    identity = WorkerIdentity(
        worker_id=worker_id,
        host=settings.host_name,
        device=device,
        backend=backend,
        slots=profile.slots,
        gpu_index=profile.gpu_index,
        gpu_uuid=profile.gpu_uuid,
        gpu_name=profile.gpu_name,
        vram_total_mb=profile.vram_total_mb,
        speed=profile.speed,
    )
    config = BackendConfig(
        worker_id=worker_id,
        host=settings.host_name,
        profile=profile,
        catalog=catalog,
        max_cpu_cached=settings.max_cpu_cached_models,
        latency_jitter=settings.latency_jitter,
        fail_rate=settings.fail_rate,
        seed=settings.seed,
        upstream_url=upstream_url or settings.upstream_url,
        upstream_timeout_s=settings.upstream_timeout_s,
        upstream_api_key=None if upstream_url else settings.upstream_api_key,
        upstream_models_interval_s=settings.upstream_models_interval_s,
        engine_probe_interval_s=settings.engine_probe_interval_s,
        engine=engine_launch(settings) if backend == LlamaCppBackend.NAME else None,
    )
    return identity, config


def start_for(settings: WorkerSettings, *, clock: Callable[[], float] = time.monotonic) -> StartFn:
    """The worker's part of the service shell, for the one device the settings name."""

    async def start(bus: Bus, ctx: ServiceContext) -> None:
        devices = settings.device_list()
        if len(devices) != 1:
            raise ConfigError(f"one worker process serves one device, not {', '.join(devices)}")
        device = devices[0]
        catalog = load_model_catalog(settings.model_groups_file)
        profile = await resolve_profile(bus, settings, device)
        worker_id = settings.worker_id_for(device)
        identity, config = worker_parts(settings, worker_id, device, settings.backend, profile, catalog)
        worker = Worker(bus, settings, identity, config, clock=clock)
        log.info(
            "worker %s: %s%s, %d MiB, speed %.2f, %d slot(s), backend %s",
            worker_id,
            device,
            f" ({profile.gpu_name})" if profile.gpu_name else "",
            profile.vram_total_mb,
            profile.speed,
            profile.slots,
            settings.backend,
        )
        ctx.add_health(worker.health)
        ctx.on_stop(worker.stop)
        await worker.open(ctx)

    return start
