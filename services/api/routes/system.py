"""/api/system: GPU inventory and rescans."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from services.api.audit import audited
from services.api.deps import BusDep, PrincipalDep, ReadModelDep, StateDep, client_address
from services.api.readmodel import FleetView, ReadModel
from services.api.schemas import ErrorOut, GpuOut, GpusOut, HostOut
from shared.contracts import AuditAction, Inventory, RescanRequest
from shared.errors import GpuplaneError
from shared.subjects import DETECTOR_RESCAN

router = APIRouter(prefix="/api/system", tags=["system"])

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "Not ready, or the service that answers is down."}
}


class NoInventoryYet(GpuplaneError):
    """The gateway has not received any inventory since it started."""


def fleet_out(view: FleetView) -> GpusOut:
    return GpusOut(
        gpus=[GpuOut(host=g.host, **g.gpu.model_dump()) for g in view.gpus],
        source=view.source,
        message=view.message,
        hosts=[
            HostOut(
                host=inv.host,
                source=inv.source.value,
                gpu_count=len(inv.gpus),
                detected_at=inv.detected_at,
                sequence=inv.sequence,
                problems=list(inv.problems),
                fleet_file=inv.fleet_file,
            )
            for inv in view.inventories
        ],
    )


def current(read_model: ReadModel) -> GpusOut:
    view = read_model.fleet()
    if view is None:
        raise NoInventoryYet(
            "no GPU inventory received yet: the detector has not reported since the gateway started "
            "(is the detector running? POST /api/system/gpu-config/detect asks it directly)"
        )
    return fleet_out(view)


@router.get("/gpus", response_model=GpusOut, responses=UNAVAILABLE, summary="Detected GPUs")
async def list_gpus(read_model: ReadModelDep) -> GpusOut:
    """Every GPU the detectors last reported, from memory (no round trip to the detector)."""
    return current(read_model)


@router.post("/gpu-config/detect", response_model=GpusOut, responses=UNAVAILABLE, summary="Rescan GPUs now")
async def detect(
    bus: BusDep, read_model: ReadModelDep, state: StateDep, who: PrincipalDep, request: Request
) -> GpusOut:
    """Ask the detectors to rescan, and return the inventory they report."""
    async with audited(state.audit, AuditAction.RESCAN, who, client_address(request)) as target:
        fresh = await bus.request(DETECTOR_RESCAN, RescanRequest(reason=f"api ({who.name})"), Inventory)
        target["host"] = fresh.host
    state.record_inventory(fresh)
    return current(read_model)
