"""The async shell every service runs in: settings in, connect, subscribe, heartbeat, drain on signal.

A service's ``main.py`` supplies only a ``start`` coroutine that subscribes its handlers and
spawns its loops; everything else (logging, tracing, metrics endpoint, health replies,
heartbeats, signals, draining) happens here once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

from shared import __version__
from shared.bus.base import Bus, Delivery
from shared.contracts import HealthReply, HealthRequest, Heartbeat, ServiceName, utc_now
from shared.errors import BusError, ServiceCrashed
from shared.identities import Identity
from shared.natsauth import redact_url
from shared.settings import CommonSettings
from shared.subjects import health, heartbeat, queue_group
from shared.telemetry import serve_metrics, setup_logging, setup_tracing

log = logging.getLogger(__name__)

BusFactory = Callable[[CommonSettings, ServiceName], Awaitable[Bus]]
StartFn = Callable[[Bus, "ServiceContext"], Awaitable[None]]
"""A service's own part: subscribe its handlers, spawn its loops."""


class ServiceContext:
    """What a service's ``start`` gets besides the bus."""

    def __init__(self, name: ServiceName, settings: CommonSettings) -> None:
        self.name = name
        self.settings = settings
        self.instance = f"{settings.host_name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started_at: datetime = utc_now()
        self.stopping = asyncio.Event()
        self.crashed: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health: list[Callable[[], dict[str, str]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background loop that is cancelled when the service stops; a crash stops the service."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s crashed: %r", name, t.exception(), exc_info=t.exception())
                self.crashed = f"background task {name} crashed: {t.exception()!r}"
                self.stopping.set()

        task.add_done_callback(done)
        return task

    def add_health(self, details: Callable[[], dict[str, str]]) -> None:
        """Contribute key/value details to health replies."""
        self._health.append(details)

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_stop.append(callback)

    def health_details(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for details in self._health:
            merged.update(details())
        return merged

    async def shutdown(self) -> None:
        for callback in reversed(self._on_stop):
            await callback()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def nats_bus_factory(settings: CommonSettings, name: ServiceName) -> Bus:
    """Connect as this service's NATS identity, with the credentials its settings (or the data dir) give."""
    from shared.bus.nats import connect

    identity = Identity.of(name)
    credentials = settings.nats_credentials(identity)
    log.info(
        "connecting to NATS at %s as %s (credentials: %s)",
        redact_url(settings.nats_url),
        identity.value,
        credentials.source if credentials else "none",
    )
    return await connect(
        settings.nats_url,
        service=name.value,
        identity=identity,
        credentials=credentials,
        request_timeout_s=settings.request_timeout_s,
        drain_timeout_s=settings.drain_timeout_s,
        trace_status_messages=settings.trace_status_messages,
    )


async def attach(bus: Bus, ctx: ServiceContext, start: StartFn) -> None:
    """Answer health requests, heartbeat, then let the service subscribe its own handlers."""

    async def on_health(_: HealthRequest, __: Delivery) -> HealthReply:
        return HealthReply(
            service=ctx.name,
            instance=ctx.instance,
            host=ctx.settings.host_name,
            ok=bus.is_connected,
            started_at=ctx.started_at,
            version=__version__,
            details=ctx.health_details(),
        )

    await bus.subscribe(health(ctx.name), HealthRequest, on_health, queue=queue_group(ctx.name))
    ctx.spawn(_heartbeats(bus, ctx), name="heartbeat")
    await start(bus, ctx)
    log.info("%s %s ready (instance %s)", ctx.name.value, __version__, ctx.instance)


async def serve(
    name: ServiceName,
    settings: CommonSettings,
    start: StartFn,
    *,
    bus_factory: BusFactory = nats_bus_factory,
    install_signal_handlers: bool = True,
    ctx: ServiceContext | None = None,
) -> None:
    """Run one service until SIGINT/SIGTERM (or ``ctx.stopping``), then drain and return."""
    ctx = ctx or ServiceContext(name, settings)
    if install_signal_handlers:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, ctx.stopping.set)

    bus = await _connect_or_stop(bus_factory, settings, name, ctx)
    if bus is None:
        return
    await attach(bus, ctx, start)
    await ctx.stopping.wait()
    log.info("%s stopping: draining", name.value)
    await ctx.shutdown()
    await bus.drain()
    log.info("%s stopped", name.value)
    if ctx.crashed:
        raise ServiceCrashed(ctx.crashed)


async def _connect_or_stop(
    bus_factory: BusFactory, settings: CommonSettings, name: ServiceName, ctx: ServiceContext
) -> Bus | None:
    """Connect, but give up quietly if asked to stop while still waiting for NATS."""
    connecting: asyncio.Task[Bus] = asyncio.ensure_future(bus_factory(settings, name))
    stopping = asyncio.create_task(ctx.stopping.wait())
    done, _ = await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if connecting in done:
        stopping.cancel()
        return connecting.result()
    connecting.cancel()
    log.info("%s stopped before NATS answered", name.value)
    return None


async def _heartbeats(bus: Bus, ctx: ServiceContext) -> None:
    while True:
        beat = Heartbeat(
            service=ctx.name,
            instance=ctx.instance,
            host=ctx.settings.host_name,
            pid=os.getpid(),
            started_at=ctx.started_at,
            version=__version__,
        )
        try:
            await bus.publish(heartbeat(ctx.name), beat)
        except BusError as exc:
            log.debug("heartbeat not sent: %s", exc)
        await asyncio.sleep(ctx.settings.heartbeat_interval_s)


def run(
    name: ServiceName,
    settings: CommonSettings,
    start: StartFn,
) -> None:
    """Blocking entry point for ``gpuplane <service>``."""
    setup_logging(name.value, settings.log_level, settings.log_json)
    setup_tracing(name.value, settings.otlp_endpoint)
    serve_metrics(settings.metrics_port, settings.metrics_host)
    asyncio.run(serve(name, settings, start))
