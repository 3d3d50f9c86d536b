"""The gateway's tables in PostgreSQL: inference keys (hashed) and the audit trail."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Identity,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from services.api.access import KeyRecord
from shared.contracts import AuditAction, AuditRecord, Priority
from shared.database import database_errors, upgrade
from shared.errors import Conflict

MIGRATION_LOCK_KEY = 0x6770_7570_6170_6901
"""pg_advisory_xact_lock key: gateways starting together migrate one after the other."""

# These tables mirror migration 0001; tests check that the two agree.
METADATA = MetaData()
API_KEYS = Table(
    "api_keys",
    METADATA,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("created_by", String(128), nullable=False),
    Column("max_priority", String(8)),
    Column("rpm_limit", Integer),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", String(128)),
    Index("api_keys_live_name", "name", unique=True, postgresql_where=text("revoked_at IS NULL")),
)
AUDIT_LOG = Table(
    "audit_log",
    METADATA,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("action", String(32), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("actor_kind", String(16), nullable=False),
    Column("address", String(64)),
    Column("outcome", String(16), nullable=False),
    Column("target", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("detail", Text),
    Index("audit_log_action_id", "action", "id"),
)


def _key(row: Row[Any]) -> KeyRecord:
    return KeyRecord(
        name=row.name,
        prefix=row.prefix,
        hash=row.hash,
        created_at=row.created_at,
        created_by=row.created_by,
        max_priority=Priority(row.max_priority) if row.max_priority else None,
        rpm_limit=row.rpm_limit,
        revoked_at=row.revoked_at,
    )


def _audit(row: Row[Any]) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        at=row.at,
        action=AuditAction(row.action),
        actor=row.actor,
        actor_kind=row.actor_kind,
        address=row.address,
        outcome=row.outcome,
        target=dict(row.target or {}),
        detail=row.detail,
    )


class AccessStore:
    """Keys and audit records; blocking calls (the gateway runs them in a thread)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def migrate(self) -> None:
        upgrade(self._engine, Path(__file__).with_name("migrations"), MIGRATION_LOCK_KEY, "the gateway's tables")

    # ------------------------------------------------------------------ keys

    def keys(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with database_errors("read the inference keys"), self._engine.connect() as conn:
            return [_key(r) for r in conn.execute(select(API_KEYS).order_by(API_KEYS.c.id))]

    def add_key(self, record: KeyRecord) -> KeyRecord:
        """Store a new key; ``Conflict`` if a live key already has its name."""
        values = {
            "name": record.name,
            "prefix": record.prefix,
            "hash": record.hash,
            "created_at": record.created_at,
            "created_by": record.created_by,
            "max_priority": record.max_priority.value if record.max_priority else None,
            "rpm_limit": record.rpm_limit,
        }
        with database_errors("store the inference key"):
            try:
                with self._engine.begin() as conn:
                    conn.execute(insert(API_KEYS).values(**values))
            except IntegrityError as exc:
                raise Conflict(f"a key named {record.name!r} exists already: revoke it or pick another name") from exc
        return record

    def revoke_key(self, name: str, by: str, now: datetime) -> KeyRecord | None:
        """Revoke the live key called ``name``; None if there is none."""
        with database_errors("revoke the inference key"), self._engine.begin() as conn:
            row = conn.execute(
                update(API_KEYS)
                .where(API_KEYS.c.name == name, API_KEYS.c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_by=by)
                .returning(*API_KEYS.c)
            ).first()
        return _key(row) if row is not None else None

    # ------------------------------------------------------------------ audit

    def append(self, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        """Store records; returns them with their ids."""
        rows = [
            {
                "at": r.at,
                "action": r.action.value,
                "actor": r.actor[:128],
                "actor_kind": r.actor_kind,
                "address": (r.address or "")[:64] or None,
                "outcome": r.outcome,
                "target": r.target,
                "detail": r.detail,
            }
            for r in records
        ]
        with database_errors("write the audit trail"), self._engine.begin() as conn:
            statement = insert(AUDIT_LOG).returning(AUDIT_LOG.c.id, sort_by_parameter_order=True)
            ids = conn.execute(statement, rows).scalars().all()
            return [r.model_copy(update={"id": i}) for r, i in zip(records, ids, strict=True)]

    def audit(self, *, limit: int, before: int | None = None, action: AuditAction | None = None) -> list[AuditRecord]:
        """Newest first: up to ``limit`` records older than id ``before``, of ``action`` if given."""
        query = select(AUDIT_LOG).order_by(AUDIT_LOG.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(AUDIT_LOG.c.id < before)
        if action is not None:
            query = query.where(AUDIT_LOG.c.action == action.value)
        with database_errors("read the audit trail"), self._engine.connect() as conn:
            return [_audit(r) for r in conn.execute(query)]
