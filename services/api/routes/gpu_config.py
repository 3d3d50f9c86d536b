"""/api/system/gpu-config: the planner's configuration, previews and saves, asked over NATS."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from services.api.audit import audited
from services.api.deps import BusDep, PrincipalDep, StateDep, client_address
from services.api.schemas import (
    ApplyStatusOut,
    ConflictOut,
    ErrorOut,
    GpuConfigIn,
    GpuConfigOut,
    GpuConfigSavedOut,
    PlanPreviewOut,
    RunAcceptedOut,
    warnings_by_service,
)
from shared.contracts import (
    ApplyRequest,
    AuditAction,
    ConfigGetRequest,
    ConfigPutRequest,
    ConfigReply,
    ConfigSaved,
    OrchestratorStatus,
    PlanPreview,
    PreviewRequest,
    RollbackRequest,
    RunAccepted,
    StatusRequest,
)
from shared.subjects import (
    ORCHESTRATOR_APPLY,
    ORCHESTRATOR_ROLLBACK,
    ORCHESTRATOR_STATUS,
    PLANNER_CONFIG_GET,
    PLANNER_CONFIG_PUT,
    PLANNER_PREVIEW,
)

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
    config = reply.config
    return GpuConfigOut(
        **config.model_dump(),
        warnings_by_service=warnings_by_service((a.service for a in config.assignments), config.warnings),
        strategies=list(reply.strategies),
        message=reply.message,
    )


@router.put("", response_model=GpuConfigSavedOut, responses=ANSWERS, summary="Save GPU assignments")
async def put_config(
    body: GpuConfigIn, bus: BusDep, state: StateDep, who: PrincipalDep, request: Request
) -> GpuConfigSavedOut:
    """Save a strategy and assignments to the database and config/gpu-assignments.yml, together or not at all.

    Warnings do not block the save: they say what may not fit.
    """
    ask = ConfigPutRequest(strategy=body.strategy, assignments=tuple(body.assignments))
    async with audited(state.audit, AuditAction.CONFIG_SAVE, who, client_address(request)) as target:
        target["strategy"] = body.strategy
        saved = await bus.request(PLANNER_CONFIG_PUT, ask, ConfigSaved)
        target["revision"] = saved.config.revision
    by_service = warnings_by_service((a.service for a in saved.config.assignments), saved.warnings)
    return GpuConfigSavedOut(**saved.model_dump(exclude={"type"}), warnings_by_service=by_service)


@router.get("/preview", response_model=PlanPreviewOut, responses=ANSWERS, summary="Preview a strategy")
async def preview(
    bus: BusDep,
    strategy: str | None = Query(default=None, description="Default: the saved strategy."),
) -> PlanPreviewOut:
    """What ``strategy`` would assign, its warnings, VRAM per GPU and the changes from the saved
    configuration. Saves nothing."""
    return await _preview(bus, PreviewRequest(strategy=strategy))


@router.post("/preview", response_model=PlanPreviewOut, responses=ANSWERS, summary="Preview unsaved assignments")
async def preview_body(body: GpuConfigIn, bus: BusDep) -> PlanPreviewOut:
    """What a PUT of this body would save (the console's form before Save): the plan, its warnings,
    VRAM per GPU and the changes from the saved configuration. Saves nothing."""
    return await _preview(bus, PreviewRequest(strategy=body.strategy, assignments=tuple(body.assignments)))


async def _preview(bus: BusDep, ask: PreviewRequest) -> PlanPreviewOut:
    proposal = await bus.request(PLANNER_PREVIEW, ask, PlanPreview)
    by_service = warnings_by_service((a.service for a in proposal.assignments), proposal.warnings)
    return PlanPreviewOut(**proposal.model_dump(exclude={"type"}), warnings_by_service=by_service)


RUN_ANSWERS: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ConflictOut,
        "description": "A run is in progress (`run_id` names it), or there is nothing to apply or roll back.",
    },
    503: {
        "model": ErrorOut,
        "description": "The compose command, podman, the CDI spec or the database is missing or not answering; "
        "nothing was changed (the refused run is in the status too).",
    },
}


def _accepted(reply: RunAccepted) -> RunAcceptedOut:
    run = reply.run
    return RunAcceptedOut(
        run_id=run.id,
        state=run.state.value,
        kind=run.kind.value,
        revision=run.revision,
        status_url=f"{router.prefix}/status",
    )


@router.post(
    "/apply", status_code=202, response_model=RunAcceptedOut, responses=RUN_ANSWERS, summary="Apply the configuration"
)
async def apply(bus: BusDep, state: StateDep, who: PrincipalDep, request: Request) -> RunAcceptedOut:
    """Recreate the containers whose GPU assignment differs from the saved configuration, one at a time,
    checking each one's GPUs and health; a failure restores what the run touched (GPUPLANE_ROLLBACK=auto).
    Answers at once with the run id; follow it with GET /status."""
    async with audited(state.audit, AuditAction.APPLY, who, client_address(request)) as target:
        # The orchestrator checks the compose command and CDI spec before it records the run.
        reply = await bus.request(ORCHESTRATOR_APPLY, ApplyRequest(), RunAccepted, timeout_s=30.0)
        target.update(run_id=reply.run.id, revision=reply.run.revision)
    return _accepted(reply)


@router.post("/rollback", status_code=202, response_model=RunAcceptedOut, responses=RUN_ANSWERS, summary="Roll back")
async def rollback(bus: BusDep, state: StateDep, who: PrincipalDep, request: Request) -> RunAcceptedOut:
    """Restore the configuration that was applied before the last successful run that changed something,
    containers and saved configuration both."""
    async with audited(state.audit, AuditAction.ROLLBACK, who, client_address(request)) as target:
        reply = await bus.request(ORCHESTRATOR_ROLLBACK, RollbackRequest(), RunAccepted, timeout_s=30.0)
        target.update(run_id=reply.run.id, revision=reply.run.revision, undoes=reply.run.rollback_of)
    return _accepted(reply)


@router.get("/status", response_model=ApplyStatusOut, responses=ANSWERS, summary="Apply progress and drift")
async def status(bus: BusDep) -> ApplyStatusOut:
    """The run in progress, else the last one: every service's state (pending, recreating, healthy, failed,
    restored) with times and errors, every container the compose command touched and why; plus containers that
    drifted from the applied configuration, and anything that would stop an apply now."""
    reply = await bus.request(ORCHESTRATOR_STATUS, StatusRequest(), OrchestratorStatus, timeout_s=15.0)
    return ApplyStatusOut(**reply.model_dump(exclude={"type"}))
