"""The FastAPI app factory: wiring only; routes hold no business logic."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.access import Credentials, KeyTable, SessionCodec, is_inference_path
from services.api.audit import AuditTrail
from services.api.deps import GatewayState
from services.api.events import EVENT_KINDS
from services.api.fastpath import InferenceFastPath
from services.api.guard import Guard
from services.api.observe import Telemetry
from services.api.routes import access, backup, console, events, gpu_config, health, inference, router_state, system
from services.api.routes.inference import openai_error
from services.api.settings import ApiSettings
from services.api.store import AccessStore
from services.router.dispatcher import Dispatcher
from shared import __version__
from shared.bus.base import Bus, Delivery
from shared.contracts import AuditAction, AuditRecord, Heartbeat, Inventory, Message, ServiceName, utc_now
from shared.database import DatabaseUnavailable, make_engine, until_available
from shared.errors import ERRORS, ConfigError, GpuplaneError, NoResponders, RemoteError, error_code, openai_type
from shared.modelgroups import load_model_catalog
from shared.service import BusFactory, ServiceContext, attach, nats_bus_factory
from shared.subjects import AUDIT_ALL, HEARTBEAT_ALL, INVENTORY_ALL
from shared.telemetry import tracing_wanted

log = logging.getLogger("gpuplane.api")

KEY_EVENTS = frozenset({AuditAction.KEY_CREATE, AuditAction.KEY_REVOKE})


async def _feed_read_model(state: GatewayState, bus: Bus, ctx: ServiceContext) -> None:
    """Subscribe first, then load what JetStream kept, so nothing falls between the two."""

    async def on_inventory(inv: Inventory, _: Delivery) -> None:
        state.record_inventory(inv)
        state.events.publish("inventory", inv)

    async def on_heartbeat(beat: Heartbeat, _: Delivery) -> None:
        state.read_model.apply_heartbeat(beat, utc_now())

    async def on_audit(record: AuditRecord, _: Delivery) -> None:
        state.events.publish("audit", record)
        # Another gateway created or revoked a key: refuse or accept it here too, now.
        if record.action in KEY_EVENTS and state.store is not None:
            await state.reload_keys()

    await bus.subscribe(INVENTORY_ALL, Inventory, on_inventory)
    await bus.subscribe(HEARTBEAT_ALL, Heartbeat, on_heartbeat)
    await bus.subscribe(AUDIT_ALL, AuditRecord, on_audit)
    for kind, (subject, contract) in EVENT_KINDS.items():
        if subject not in (INVENTORY_ALL, AUDIT_ALL):
            await bus.subscribe(subject, contract, _relay(state, kind))
    for inv in await bus.latest(INVENTORY_ALL, Inventory):
        state.record_inventory(inv)
    state.bus = bus
    state.audit.bus = bus


def _relay(state: GatewayState, kind: str) -> Callable[[Message, Delivery], Awaitable[None]]:
    async def relay(message: Message, _: Delivery) -> None:
        state.events.publish(kind, message)

    return relay


async def _open_store(state: GatewayState) -> None:
    """Migrate the gateway's tables (retrying until the database answers), load the keys, then keep them fresh."""
    assert state.engine is not None
    store = AccessStore(state.engine)

    def problem(reason: str | None) -> None:
        state.store_problem = reason or ""

    await until_available(store.migrate, what="the gateway's tables", retry_s=2.0, on_problem=problem)
    await state.reload_keys(store)
    state.store = store
    state.audit.attach(store)
    log.info("inference keys and audit trail ready (%d live key(s))", len(state.keys))
    while True:
        await asyncio.sleep(state.settings.keys_refresh_s)
        try:
            await state.reload_keys(store)
        except DatabaseUnavailable as exc:
            log.warning("inference keys not refreshed (the ones known stay valid): %s", exc)


def _credentials(settings: ApiSettings) -> Credentials | None:
    if settings.auth == "off":
        log.warning(
            "GPUPLANE_AUTH=off: every route answers without a credential (allowed because the gateway listens "
            "on loopback only); anyone on this machine can change the GPU configuration"
        )
        return None
    token = settings.admin_token()
    if token is None:
        raise ConfigError(
            "no admin token: set GPUPLANE_API_TOKEN or GPUPLANE_API_TOKEN_FILE (gpuplane up makes one in "
            "<data dir>/secrets/admin-token), or GPUPLANE_AUTH=off on a loopback-only gateway"
        )
    return Credentials(token, settings.api_token_name, KeyTable(), SessionCodec(token, settings.session_ttl_s))


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
    credentials = _credentials(settings)
    state = GatewayState(
        settings=settings,
        audit=AuditTrail(durable=settings.database_url is not None),
        credentials=credentials,
        keys=credentials.keys if credentials else KeyTable(),
        allowed_hosts=settings.allowed_host_names(),
    )
    if settings.database_url:
        state.engine = make_engine(settings.database_url, connect_timeout_s=3, pool_size=2)
        state.store_problem = "not ready yet: the gateway's tables are being opened"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = ServiceContext(ServiceName.API, settings)

        async def connect() -> None:
            # HTTP serves at once; until NATS answers, routes say so with 503.
            bus = await bus_factory(settings, ServiceName.API)
            await attach(bus, ctx, lambda b, c: _feed_read_model(state, b, c))
            plane = Dispatcher(
                bus,
                settings,
                load_model_catalog(settings.model_groups_file),
                state.instance,
                ServiceName.API,
                engine_token=settings.engine_token_value(),
            )
            await plane.start()
            ctx.spawn(plane.run_timers(), name="dataplane-timers")
            ctx.spawn(plane.watch_answers(), name="dataplane-answers")
            state.dataplane = plane

        async def exit_on_crash() -> None:
            # uvicorn owns the process: a dead connect task ends it through uvicorn's own
            # shutdown path, and main() turns the recorded crash into a non-zero exit.
            await ctx.stopping.wait()
            app.state.crashed = ctx.crashed
            os.kill(os.getpid(), signal.SIGTERM)

        ctx.spawn(connect(), name="connect")
        ctx.spawn(state.audit.run(), name="audit")
        if state.engine is not None:
            ctx.spawn(_open_store(state), name="access-store")
        watcher = asyncio.create_task(exit_on_crash())
        try:
            yield
        finally:
            watcher.cancel()
            if state.dataplane is not None:
                await state.dataplane.close()
            await state.audit.flush()
            await ctx.shutdown()
            if state.bus is not None:
                await state.bus.drain()
            if state.engine is not None:
                state.engine.dispose()

    app = FastAPI(
        title="gpuplane",
        version=__version__,
        description="Control plane for multi-GPU machines running self-hosted AI services. Every route but "
        "/healthz, /metrics and the console's login needs `Authorization: Bearer <token>`: the admin token, "
        "or an inference key for /v1.",
        lifespan=lifespan,
    )
    app.state.gateway = state
    app.state.crashed = None
    for module in (system, gpu_config, backup, health, router_state, inference, access, events, console):
        app.include_router(module.router)
    # Added last is outermost: telemetry sees (and counts) what the guard refuses; the guard checks what the
    # inference fast path answers.
    app.add_middleware(InferenceFastPath, state=state, routes=list(app.routes))
    app.add_middleware(Guard, state=state)
    app.add_middleware(Telemetry, tracing=tracing_wanted(settings.otlp_endpoint))

    retry = settings.retry_after_s

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if is_inference_path(request.url.path):
            message = f"{request.method} {request.url.path}: {exc.detail}"
            return openai_error(exc.status_code, message, type_=openai_type(exc.status_code))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(GpuplaneError)
    async def gpuplane_error(request: Request, exc: GpuplaneError) -> JSONResponse:
        """Every typed error off /v1 (whose routes answer in OpenAI's shape), as the table ``ERRORS`` says."""
        code = error_code(exc)
        kind = ERRORS[code]
        message = exc.remote_message if isinstance(exc, RemoteError) else str(exc)
        if isinstance(exc, NoResponders):
            message = f"{message}: is that service running?"
        field: str | None = getattr(exc, "field", None)
        context: dict[str, str] = getattr(exc, "context", {})
        if code == "bad_request" and field:  # shaped like FastAPI's own validation errors
            return JSONResponse({"detail": [_field_error(request, field, message)]}, status_code=kind.status)
        if code == "conflict":  # the context names what it collides with (run_id)
            return JSONResponse({"detail": message, **context}, status_code=kind.status)
        wait = inference.retry_after(context.get("retry_after_s"), retry) if kind.retry_after else None
        return _error(kind.status, message, wait)

    return app
