"""/healthz and /metrics."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.api.deps import StateDep
from services.api.schemas import DependencyOut, HealthOut, ServiceHealthOut
from shared.bus.base import Bus
from shared.contracts import HealthReply, HealthRequest, ServiceName, utc_now
from shared.database import DatabaseUnavailable, ping
from shared.errors import BusError
from shared.subjects import health

log = logging.getLogger("gpuplane.api.health")


async def _false() -> bool:
    return False


router = APIRouter(tags=["health"])

OPTIONAL_SERVICES = frozenset({ServiceName.WORKER.value})
"""Reported, but the stack is healthy without them (workers run where model servers do, if anywhere)."""


async def _database(state: StateDep) -> DependencyOut:
    if state.engine is None:
        return DependencyOut(ok=None, detail="not configured (GPUPLANE_DATABASE_URL unset)")
    try:
        version = await asyncio.wait_for(asyncio.to_thread(ping, state.engine), 5.0)
    except DatabaseUnavailable as exc:
        log.warning("/healthz: %s (%s)", exc, exc.detail)
        return DependencyOut(ok=False, detail=str(exc))
    except TimeoutError:
        return DependencyOut(ok=False, detail="database did not answer within 5 s")
    return DependencyOut(ok=True, detail=f"PostgreSQL {version}")


async def _answers(bus: Bus | None, service: ServiceName, timeout_s: float) -> bool:
    """Whether some instance of ``service`` answers a health request now (a dead one has no subscription left,
    and NATS says so at once; a hung one is silent until the timeout)."""
    if bus is None or not bus.is_connected:
        return False
    try:
        await bus.request(health(service), HealthRequest(), HealthReply, timeout_s=timeout_s)
    except BusError:
        return False
    return True


@router.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}})
async def healthz(state: StateDep) -> JSONResponse:
    """Each dependency, and each service: its last heartbeat and whether it answers now; 503 when anything is down."""
    bus = state.bus
    connected = bool(bus and bus.is_connected)
    nats = DependencyOut(ok=connected, detail="connected" if connected else "not connected")
    fleet = state.read_model.fleet()
    inventory = DependencyOut(
        ok=fleet is not None,
        detail=fleet.message if fleet else "no inventory received yet",
    )
    statuses = state.read_model.services(utc_now(), state.settings.heartbeat_stale_s)
    timeout = state.settings.health_probe_timeout_s
    probes = [_answers(bus, name, timeout) if status.alive else _false() for name, status in statuses.items()]
    database, answering = await asyncio.gather(_database(state), asyncio.gather(*probes))
    services = {
        name.value: ServiceHealthOut(
            ok=status.alive and answers,
            instances=status.instances,
            last_heartbeat_at=status.last_heartbeat_at,
            seconds_since_heartbeat=status.seconds_since_heartbeat,
        )
        for (name, status), answers in zip(statuses.items(), answering, strict=True)
    }
    healthy = (
        nats.ok is True
        and database.ok is not False
        and inventory.ok is True
        and all(s.ok for name, s in services.items() if name not in OPTIONAL_SERVICES)
    )
    body = HealthOut(
        status="ok" if healthy else "degraded",
        nats=nats,
        database=database,
        inventory=inventory,
        services=services,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if healthy else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
