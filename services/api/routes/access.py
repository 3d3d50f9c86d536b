"""/api/system/keys and /api/system/audit: inference keys and the audit trail (admin token only)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from services.api.access import KeyRecord, hash_secret, new_key
from services.api.deps import PrincipalDep, StateDep, client_address
from services.api.schemas import AuditPageOut, ErrorOut, KeyCreatedOut, KeyIn, KeyOut, KeysOut
from shared.contracts import AuditAction, utc_now
from shared.errors import NotFound
from shared.names import NAME_MAX_LENGTH

router = APIRouter(prefix="/api/system", tags=["access"])

ANSWERS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No credential, or not a valid one."},
    403: {"model": ErrorOut, "description": "An inference key: this needs the admin token."},
    503: {"model": ErrorOut, "description": "The database is not configured or not answering."},
}


def _out(record: KeyRecord) -> KeyOut:
    return KeyOut(
        name=record.name,
        prefix=record.prefix,
        max_priority=record.max_priority,
        rpm_limit=record.rpm_limit,
        created_at=record.created_at,
        created_by=record.created_by,
        revoked_at=record.revoked_at,
    )


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreatedOut,
    responses={**ANSWERS, 409: {"model": ErrorOut, "description": "A live key has that name."}},
    summary="Create an inference key",
)
async def create_key(body: KeyIn, state: StateDep, who: PrincipalDep, request: Request) -> KeyCreatedOut:
    """A new key for /v1 (`Authorization: Bearer <key>`). The answer is the only time the key is shown:
    only its hash is stored."""
    store = state.access_store()
    secret, prefix = new_key()
    record = KeyRecord(
        name=body.name,
        prefix=prefix,
        hash=hash_secret(secret),
        created_at=utc_now(),
        created_by=who.name,
        max_priority=body.max_priority,
        rpm_limit=body.rpm_limit,
    )
    await asyncio.to_thread(store.add_key, record)
    await state.reload_keys()
    state.audit.record(AuditAction.KEY_CREATE, who, client_address(request), target={"key": body.name})
    return KeyCreatedOut(key=secret, **_out(record).model_dump())


@router.get("/keys", response_model=KeysOut, responses=ANSWERS, summary="List inference keys")
async def list_keys(
    state: StateDep,
    include_revoked: Annotated[bool, Query(description="Also list revoked keys.")] = False,
) -> KeysOut:
    """Every live key (name, prefix, limits, who made it when); never the keys themselves."""
    records = await asyncio.to_thread(state.access_store().keys)
    return KeysOut(keys=[_out(r) for r in records if include_revoked or r.revoked_at is None])


@router.delete(
    "/keys/{name}",
    response_model=KeyOut,
    responses={**ANSWERS, 404: {"model": ErrorOut, "description": "No live key has that name."}},
    summary="Revoke an inference key",
)
async def revoke_key(
    name: Annotated[str, Path(max_length=NAME_MAX_LENGTH)], state: StateDep, who: PrincipalDep, request: Request
) -> KeyOut:
    """Revoke the live key called `name`: every gateway refuses it within GPUPLANE_KEYS_REFRESH_S, this one at once."""
    record = await asyncio.to_thread(state.access_store().revoke_key, name, who.name, utc_now())
    if record is None:
        raise NotFound(f"no live key is called {name!r}", field="name")
    await state.reload_keys()
    state.audit.record(AuditAction.KEY_REVOKE, who, client_address(request), target={"key": name})
    return _out(record)


@router.get("/audit", response_model=AuditPageOut, responses=ANSWERS, summary="The audit trail")
async def audit_trail(
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Records per page.")] = 50,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Only records older than this id.")] = None,
    action: Annotated[AuditAction | None, Query(description="Only this action.")] = None,
) -> AuditPageOut:
    """Every change of state made through the gateway (saves, applies, rollbacks, rescans, keys, logins,
    refused credentials), newest first: who (the token's or key's name), when, from which address, what."""
    store = state.access_store()
    records = await asyncio.to_thread(store.audit, limit=limit + 1, before=before, action=action)
    page = records[:limit]
    more = len(records) > limit
    return AuditPageOut(records=page, next_before=page[-1].id if more and page else None)
