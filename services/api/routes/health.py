"""/healthz and /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.api.deps import StateDep
from services.api.schemas import DependencyOut, HealthOut, ServiceHealthOut
from shared.contracts import ServiceName, utc_now
from shared.database import DatabaseUnavailable, ping

router = APIRouter(tags=["health"])

OPTIONAL_SERVICES = frozenset({ServiceName.WORKER.value})
"""Reported, but the stack is healthy without them (workers run where model servers do, if anywhere)."""


async def _database(state: StateDep) -> DependencyOut:
    if state.engine is None:
        return DependencyOut(ok=None, detail="not configured (GPUPLANE_DATABASE_URL unset)")
    try:
        version = await asyncio.wait_for(asyncio.to_thread(ping, state.engine), 5.0)
    except DatabaseUnavailable as exc:
        return DependencyOut(ok=False, detail=str(exc))
    except TimeoutError:
        return DependencyOut(ok=False, detail="database did not answer within 5 s")
    return DependencyOut(ok=True, detail=f"PostgreSQL {version}")


@router.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}})
async def healthz(state: StateDep) -> JSONResponse:
    """Each dependency and each service's last heartbeat; 503 when anything is down."""
    bus = state.bus
    nats = DependencyOut(
        ok=bool(bus and bus.is_connected),
        detail=f"connected to {state.settings.nats_url}" if bus and bus.is_connected
        else f"not connected to {state.settings.nats_url}",
    )
    fleet = state.read_model.fleet()
    inventory = DependencyOut(
        ok=fleet is not None,
        detail=fleet.message if fleet else "no inventory received yet",
    )
    services = {
        name.value: ServiceHealthOut(
            ok=status.alive,
            instances=status.instances,
            last_heartbeat_at=status.last_heartbeat_at,
            seconds_since_heartbeat=status.seconds_since_heartbeat,
        )
        for name, status in state.read_model.services(utc_now(), state.settings.heartbeat_stale_s).items()
    }
    database = await _database(state)
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
