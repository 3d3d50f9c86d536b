"""/api/system/gpu-config: the planner's configuration, previews and saves, asked over NATS."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from services.api.deps import BusDep
from services.api.schemas import ErrorOut, GpuConfigIn, GpuConfigOut, GpuConfigSavedOut, PlanPreviewOut
from shared.contracts import ConfigGetRequest, ConfigPutRequest, ConfigReply, ConfigSaved, PlanPreview, PreviewRequest
from shared.subjects import PLANNER_CONFIG_GET, PLANNER_CONFIG_PUT, PLANNER_PREVIEW

router = APIRouter(prefix="/api/system/gpu-config", tags=["gpu-config"])

ANSWERS: dict[int | str, dict[str, Any]] = {
    422: {"description": "A field is wrong; `detail[].loc` names it."},
    500: {"model": ErrorOut, "description": "The save failed and nothing was changed (e.g. the YAML mirror)."},
    503: {"model": ErrorOut, "description": "The planner, its database or the inventory is not ready."},
}


@router.get("", response_model=GpuConfigOut, responses=ANSWERS, summary="Current GPU assignments")
async def get_config(bus: BusDep) -> GpuConfigOut:
    """The saved strategy and assignments (or the default plan before the first save), the strategies on
    offer with one-line descriptions, and warnings against the GPUs detected now."""
    reply = await bus.request(PLANNER_CONFIG_GET, ConfigGetRequest(), ConfigReply)
    return GpuConfigOut(
        **reply.config.model_dump(), strategies=list(reply.strategies), message=reply.message
    )


@router.put("", response_model=GpuConfigSavedOut, responses=ANSWERS, summary="Save GPU assignments")
async def put_config(body: GpuConfigIn, bus: BusDep) -> GpuConfigSavedOut:
    """Save a strategy and assignments to the database and config/gpu-assignments.yml, together or not at all.

    Warnings do not block the save: they say what may not fit.
    """
    request = ConfigPutRequest(strategy=body.strategy, assignments=tuple(body.assignments))
    saved = await bus.request(PLANNER_CONFIG_PUT, request, ConfigSaved)
    return GpuConfigSavedOut(**saved.model_dump(exclude={"type"}))


@router.get("/preview", response_model=PlanPreviewOut, responses=ANSWERS, summary="Preview a strategy")
async def preview(
    bus: BusDep,
    strategy: str | None = Query(default=None, description="Default: the saved strategy."),
) -> PlanPreviewOut:
    """What ``strategy`` would assign, its warnings, VRAM per GPU and the changes from the saved
    configuration. Saves nothing."""
    proposal = await bus.request(PLANNER_PREVIEW, PreviewRequest(strategy=strategy), PlanPreview)
    return PlanPreviewOut(**proposal.model_dump(exclude={"type"}))
