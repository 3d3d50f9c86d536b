"""/api/system/backup: the whole configuration as one YAML file, and its restore (dry run first)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.api.audit import audited
from services.api.backup import (
    Backup,
    BackupKey,
    BackupProblem,
    make_backup,
    notes_for,
    parse,
    render,
    requests_for,
)
from services.api.deps import BusDep, GatewayState, PrincipalDep, StateDep, client_address
from services.api.schemas import ErrorOut, RestoreOut
from shared import __version__
from shared.contracts import (
    AuditAction,
    ConfigGetRequest,
    ConfigPutRequest,
    ConfigReply,
    ConfigSaved,
    PlanPreview,
    PreviewRequest,
    utc_now,
)
from shared.subjects import PLANNER_CONFIG_GET, PLANNER_CONFIG_PUT, PLANNER_PREVIEW

router = APIRouter(prefix="/api/system/backup", tags=["backup"])

ANSWERS: dict[int | str, dict[str, Any]] = {
    422: {"description": "Not a backup file, or a field in it is wrong; `detail[].loc` names it."},
    503: {"model": ErrorOut, "description": "The planner or its database is not ready."},
}
EXPORTED_SETTINGS = (
    "auth",
    "allowed_hosts",
    "metrics_public",
    "session_ttl_s",
    "control_body_max_bytes",
    "inference_body_max_bytes",
)
"""The gateway's settings a backup records (none of them secret)."""


def _settings(state: GatewayState) -> dict[str, str | int | float | bool | None]:
    values = state.settings.model_dump(include=set(EXPORTED_SETTINGS))
    return {name: values[name] for name in EXPORTED_SETTINGS}


async def _keys(state: GatewayState) -> list[BackupKey]:
    if state.store is None:
        return []
    records = await asyncio.to_thread(state.store.keys)
    return [
        BackupKey(name=r.name, max_priority=r.max_priority, rpm_limit=r.rpm_limit)
        for r in records
        if r.revoked_at is None
    ]


@router.get(
    "",
    responses={200: {"content": {"application/yaml": {}}, "description": "The backup file."}, **ANSWERS},
    summary="Download the configuration",
)
async def export(bus: BusDep, state: StateDep) -> Response:
    """Strategy, assignments, budgets, the gateway's settings and the inference keys' names (no secrets),
    as one YAML document with a version: restore it with POST /api/system/backup/restore."""
    reply = await bus.request(PLANNER_CONFIG_GET, ConfigGetRequest(), ConfigReply)
    backup = make_backup(
        reply.config, settings=_settings(state), keys=await _keys(state), version=__version__, now=utc_now()
    )
    name = f"gpuplane-backup-r{reply.config.revision}.yaml"
    return Response(
        render(backup),
        media_type="application/yaml",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


def _invalid(loc: tuple[str | int, ...], message: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", *loc], "msg": message, "type": "value_error"}]}, 422)


@router.post(
    "/restore",
    response_model=RestoreOut,
    responses=ANSWERS,
    summary="Restore a backup (or see what it would change)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/yaml": {"schema": Backup.model_json_schema()}},
        }
    },
)
async def restore(
    request: Request,
    bus: BusDep,
    state: StateDep,
    who: PrincipalDep,
    dry_run: Annotated[bool, Query(description="Only show what would change; save nothing.")] = True,
) -> RestoreOut | JSONResponse:
    """Send the file as the body (``Content-Type: application/yaml``). With ``dry_run=true`` (the default)
    the answer is the diff against the saved configuration; with ``dry_run=false`` the file's strategy and
    assignments are saved as a new revision (apply it as any save). Keys and settings are never changed:
    the notes say where they differ."""
    try:
        backup = Backup.model_validate(parse(await request.body()))
    except BackupProblem as exc:
        return _invalid(exc.loc, str(exc))
    except ValidationError as exc:
        detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, 422)
    assignments = requests_for(backup)
    notes = notes_for(
        backup, settings=_settings(state), key_names=[k.name for k in await _keys(state)], version=__version__
    )
    if dry_run:
        ask = PreviewRequest(strategy=backup.strategy, assignments=assignments)
        proposal = await bus.request(PLANNER_PREVIEW, ask, PlanPreview)
        return RestoreOut(
            dry_run=True,
            version=backup.version,
            strategy=proposal.strategy,
            changes=list(proposal.changes),
            warnings=list(proposal.warnings),
            notes=notes,
            revision=None,
        )
    async with audited(state.audit, AuditAction.CONFIG_RESTORE, who, client_address(request)) as target:
        target.update(strategy=backup.strategy, from_revision=backup.revision)
        put = ConfigPutRequest(strategy=backup.strategy, assignments=assignments)
        saved = await bus.request(PLANNER_CONFIG_PUT, put, ConfigSaved)
        target["revision"] = saved.config.revision
    return RestoreOut(
        dry_run=False,
        version=backup.version,
        strategy=saved.config.strategy,
        changes=list(saved.changes),
        warnings=list(saved.warnings),
        notes=notes,
        revision=saved.config.revision,
    )
