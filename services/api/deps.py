"""Request dependencies: what a route may use, taken from the app's state.

They are ``async`` on purpose: FastAPI runs plain ``def`` dependencies in its thread pool, a thread
hop per request for a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine

from services.api.access import Credentials, KeyTable, Principal, RateLimiter
from services.api.audit import AuditTrail
from services.api.events import EventHub
from services.api.readmodel import ReadModel
from services.api.settings import ApiSettings
from services.api.store import AccessStore
from services.router.dispatcher import Dispatcher
from shared.bus.base import Bus
from shared.contracts import Inventory
from shared.errors import BusUnavailable, GpuplaneError
from shared.telemetry import gpu_metrics


class StoreNotReady(GpuplaneError):
    """The gateway's tables (keys, audit) are not available: no database, or it is not answering yet."""


@dataclass
class GatewayState:
    """Everything the gateway holds; built once by the app factory."""

    settings: ApiSettings
    audit: AuditTrail
    credentials: Credentials | None = None
    """None when GPUPLANE_AUTH=off."""
    read_model: ReadModel = field(default_factory=ReadModel)
    bus: Bus | None = None
    dataplane: Dispatcher | None = None
    """The in-process router /v1 requests go through (set once NATS is connected)."""
    engine: Engine | None = None
    store: AccessStore | None = None
    store_problem: str = "GPUPLANE_DATABASE_URL is not set"
    keys: KeyTable = field(default_factory=KeyTable)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    allowed_hosts: frozenset[str] = frozenset()
    clock: Callable[[], float] = time.monotonic
    instance: str = field(default_factory=lambda: uuid.uuid4().hex)
    """This gateway process's token, e.g. in the subjects streamed answers come back on."""
    events: EventHub = field(init=False)
    """The console's live event streams."""

    def __post_init__(self) -> None:
        self.events = EventHub(streams_max=self.settings.event_streams_max)

    def record_inventory(self, inv: Inventory) -> None:
        """Keep ``inv`` if it is the newest of its host, and refresh the per-GPU gauges."""
        if self.read_model.apply_inventory(inv):
            gpu_metrics().update(self.read_model.inventories())

    async def reload_keys(self, store: AccessStore | None = None) -> None:
        """Re-read the live inference keys (after a change here, or one another gateway announced)."""
        self.keys.replace(await asyncio.to_thread((store or self.access_store()).keys))

    def access_store(self) -> AccessStore:
        if self.store is None:
            raise StoreNotReady(f"inference keys and the audit trail need the database: {self.store_problem}")
        return self.store


async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_bus(state: StateDep) -> Bus:
    if state.bus is None or not state.bus.is_connected:
        raise BusUnavailable("the gateway is not connected to NATS (yet)")
    return state.bus


BusDep = Annotated[Bus, Depends(get_bus)]


async def get_dataplane(state: StateDep) -> Dispatcher:
    if state.dataplane is None:
        raise BusUnavailable("the gateway is not connected to NATS yet, so it knows no workers")
    return state.dataplane


DataPlaneDep = Annotated[Dispatcher, Depends(get_dataplane)]


async def get_read_model(state: StateDep) -> ReadModel:
    return state.read_model


ReadModelDep = Annotated[ReadModel, Depends(get_read_model)]


async def get_principal(request: Request) -> Principal:
    """Who sent the request, as the guard found (routes that need no credential never ask)."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        raise RuntimeError("a route that needs a credential was reached without one: check access.route_role")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None
