"""The FastAPI app factory: wiring only; routes hold no business logic."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.api.deps import GatewayState
from services.api.routes import gpu_config, health, inference, router_state, system
from services.api.routes.system import NoInventoryYet
from services.api.settings import ApiSettings
from shared import __version__
from shared.bus.base import Bus, Delivery
from shared.bus.core import reset_correlation_id, set_correlation_id
from shared.contracts import Heartbeat, Inventory, ServiceName, utc_now
from shared.database import make_engine
from shared.errors import BusError, BusUnavailable, NoResponders, RemoteError, RequestTimeout
from shared.service import BusFactory, ServiceContext, attach, nats_bus_factory
from shared.subjects import HEARTBEAT_ALL, INVENTORY_ALL
from shared.telemetry import http_metrics

log = logging.getLogger("gpuplane.api")

CORRELATION_HTTP_HEADER = "X-Correlation-Id"


async def _feed_read_model(state: GatewayState, bus: Bus, ctx: ServiceContext) -> None:
    """Subscribe first, then load what JetStream kept, so nothing falls between the two."""

    async def on_inventory(inv: Inventory, _: Delivery) -> None:
        state.record_inventory(inv)

    async def on_heartbeat(beat: Heartbeat, _: Delivery) -> None:
        state.read_model.apply_heartbeat(beat, utc_now())

    await bus.subscribe(INVENTORY_ALL, Inventory, on_inventory)
    await bus.subscribe(HEARTBEAT_ALL, Heartbeat, on_heartbeat)
    for inv in await bus.latest(INVENTORY_ALL, Inventory):
        state.record_inventory(inv)
    state.bus = bus


def _error(status: int, detail: str, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _field_error(request: Request, field: str, message: str) -> dict[str, object]:
    """A service's complaint about one field, shaped like FastAPI's own validation errors."""
    where = "query" if request.method == "GET" else "body"
    loc: list[str | int] = [where, *(int(p) if p.isdigit() else p for p in field.split("."))]
    return {"loc": loc, "msg": message, "type": "value_error"}


def create_app(settings: ApiSettings, *, bus_factory: BusFactory = nats_bus_factory) -> FastAPI:
    """Build the gateway. ``bus_factory`` is swapped for an in-memory bus in unit tests."""
    state = GatewayState(settings=settings)
    if settings.database_url:
        state.engine = make_engine(settings.database_url, connect_timeout_s=3, pool_size=2)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = ServiceContext(ServiceName.API, settings)

        async def connect() -> None:
            # HTTP serves at once; until NATS answers, routes say so with 503.
            bus = await bus_factory(settings, ServiceName.API)
            await attach(bus, ctx, lambda b, c: _feed_read_model(state, b, c))

        async def exit_on_crash() -> None:
            # uvicorn owns the process: a dead connect task ends it through uvicorn's own
            # shutdown path, and main() turns the recorded crash into a non-zero exit.
            await ctx.stopping.wait()
            app.state.crashed = ctx.crashed
            os.kill(os.getpid(), signal.SIGTERM)

        ctx.spawn(connect(), name="connect")
        watcher = asyncio.create_task(exit_on_crash())
        try:
            yield
        finally:
            watcher.cancel()
            await ctx.shutdown()
            if state.bus is not None:
                await state.bus.drain()
            if state.engine is not None:
                state.engine.dispose()

    app = FastAPI(
        title="gpuplane",
        version=__version__,
        description="Control plane for multi-GPU machines running self-hosted AI services.",
        lifespan=lifespan,
    )
    app.state.gateway = state
    app.state.crashed = None
    app.include_router(system.router)
    app.include_router(gpu_config.router)
    app.include_router(health.router)
    app.include_router(router_state.router)
    app.include_router(inference.router)
    metrics = http_metrics()
    tracer = trace.get_tracer("gpuplane.http")

    @app.middleware("http")
    async def telemetry(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        correlation = request.headers.get(CORRELATION_HTTP_HEADER) or uuid.uuid4().hex
        token = set_correlation_id(correlation)
        started = time.perf_counter()
        status = 500
        try:
            with tracer.start_as_current_span(
                f"{request.method} {request.url.path}", kind=SpanKind.SERVER
            ) as span:
                response: Response = await call_next(request)
                status = response.status_code
                span.set_attribute("http.response.status_code", status)
                response.headers[CORRELATION_HTTP_HEADER] = correlation
                return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.requests.labels(request.method, path, str(status)).inc()
            metrics.duration.labels(request.method, path).observe(time.perf_counter() - started)
            reset_correlation_id(token)

    retry = settings.retry_after_s

    @app.exception_handler(NoInventoryYet)
    async def no_inventory(_: Request, exc: NoInventoryYet) -> JSONResponse:
        return _error(503, str(exc), retry)

    @app.exception_handler(NoResponders)
    async def no_responders(_: Request, exc: NoResponders) -> JSONResponse:
        return _error(503, f"{exc}: is that service running?", retry)

    @app.exception_handler(RequestTimeout)
    async def timeout(_: Request, exc: RequestTimeout) -> JSONResponse:
        return _error(504, str(exc), retry)

    @app.exception_handler(BusUnavailable)
    async def bus_down(_: Request, exc: BusUnavailable) -> JSONResponse:
        return _error(503, str(exc), retry)

    @app.exception_handler(RemoteError)
    async def remote(request: Request, exc: RemoteError) -> JSONResponse:
        if exc.code == "bad_request" and exc.field:
            return JSONResponse({"detail": [_field_error(request, exc.field, exc.remote_message)]}, status_code=422)
        if exc.code == "conflict":
            return JSONResponse({"detail": exc.remote_message, **exc.context}, status_code=409)
        if exc.code == "overloaded":
            return _error(429, exc.remote_message, inference.retry_after(exc.context.get("retry_after_s"), retry))
        status = {"bad_request": 422, "not_found": 404, "unavailable": 503, "internal": 500}.get(exc.code, 502)
        return _error(status, exc.remote_message, retry if status == 503 else None)

    @app.exception_handler(BusError)
    async def bus_error(_: Request, exc: BusError) -> JSONResponse:
        return _error(502, str(exc))

    return app
