"""Request dependencies: what a route may use, taken from the app's state."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine

from services.api.readmodel import ReadModel
from services.api.settings import ApiSettings
from shared.bus.base import Bus
from shared.contracts import Inventory
from shared.errors import BusUnavailable
from shared.telemetry import gpu_metrics


@dataclass
class GatewayState:
    """Everything the gateway holds; built once by the app factory."""

    settings: ApiSettings
    read_model: ReadModel = field(default_factory=ReadModel)
    bus: Bus | None = None
    engine: Engine | None = None
    instance: str = field(default_factory=lambda: uuid.uuid4().hex)
    """This gateway process's token, e.g. in the subjects streamed answers come back on."""

    def record_inventory(self, inv: Inventory) -> None:
        """Keep ``inv`` if it is the newest of its host, and refresh the per-GPU gauges."""
        if self.read_model.apply_inventory(inv):
            gpu_metrics().update(self.read_model.inventories())


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


def get_bus(state: StateDep) -> Bus:
    if state.bus is None or not state.bus.is_connected:
        raise BusUnavailable(f"the gateway is not connected to NATS at {state.settings.nats_url} (yet)")
    return state.bus


BusDep = Annotated[Bus, Depends(get_bus)]


def get_read_model(state: StateDep) -> ReadModel:
    return state.read_model


ReadModelDep = Annotated[ReadModel, Depends(get_read_model)]
