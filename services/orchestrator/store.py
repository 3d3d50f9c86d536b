"""The orchestrator's run store: every run, in PostgreSQL, with at most one in progress."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    Column,
    Connection,
    CursorResult,
    DateTime,
    Engine,
    Executable,
    Index,
    Integer,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    column,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from services.orchestrator.ports import RunConflict, RunRecord, StoreUnavailable
from shared.contracts import ApplyRun, RunKind, RunState
from shared.database import DatabaseUnavailable, database_errors, upgrade
from shared.errors import OperationFailed

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6770_7570_6F72_6301
"""pg_advisory_xact_lock key: orchestrators starting together migrate one after the other (the planner's differs)."""

ACTIVE_STATES = tuple(state.value for state in RunState if state.active)
PRIMARY_KEY = "orchestrator_runs_pkey"
ONE_ACTIVE_INDEX = "orchestrator_runs_one_active"
"""The partial unique index that admits one queued, running or rolling-back run at most."""

# This table mirrors migration 0001; tests check that the two agree.
METADATA = MetaData()
RUNS = Table(
    "orchestrator_runs",
    METADATA,
    Column("id", Text, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("revision", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("document", JSONB, nullable=False),
    Column("target_override", Text),
    Column("previous_override", Text),
    Index("orchestrator_runs_created_at", "created_at"),
    Index(
        ONE_ACTIVE_INDEX,
        text("(true)"),
        unique=True,
        postgresql_where=column("state").in_(ACTIVE_STATES),
    ),
)

# Three tries: the active run may finish between a refused insert and the look-up that names it.
_CONFLICT_ATTEMPTS = 3


class UnknownRun(OperationFailed):
    """``update`` was given a run that was never created."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} does not exist")
        self.run_id = run_id


class RunStoreUnavailable(StoreUnavailable, DatabaseUnavailable):
    """PostgreSQL did not answer: the controller's ``StoreUnavailable``, and the database's own error."""


@contextmanager
def _database(action: str) -> Iterator[None]:
    """``database_errors`` in a type the controller knows without importing the database layer."""
    try:
        with database_errors(action):
            yield
    except DatabaseUnavailable as exc:
        raise RunStoreUnavailable(str(exc), exc.detail) from exc


def _violated(exc: IntegrityError) -> str | None:
    """The name of the constraint or index the statement broke, as the server reports it."""
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None)


def _columns(record: RunRecord) -> dict[str, Any]:
    """The row for a record; the searchable columns are copies of the document's fields."""
    run = record.run
    return {
        "kind": run.kind.value,
        "state": run.state.value,
        "revision": run.revision,
        "created_at": run.created_at,
        "document": run.model_dump(mode="json"),
        "target_override": record.target_override,
        "previous_override": record.previous_override,
    }


def _record(row: Row[Any]) -> RunRecord:
    try:
        run = ApplyRun.model_validate(row.document)
    except ValidationError as exc:
        # Raising here would make every read that meets the row fail (status, apply, rollback, start-up),
        # and skipping it would hide a run that may still hold the one-active index: the run is shown from
        # its columns instead, and the controller ends an active one.
        reason = _validation_summary(exc)
        log.debug("stored run %s cannot be read: %s", row.id, reason)
        return RunRecord(
            run=_from_columns(row, reason),
            target_override=row.target_override,
            previous_override=row.previous_override,
            unreadable=reason,
        )
    return RunRecord(run=run, target_override=row.target_override, previous_override=row.previous_override)


def _validation_summary(exc: ValidationError, shown: int = 3) -> str:
    errors = exc.errors()
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}" for e in errors[:shown]]
    more = f" (and {len(errors) - shown} more)" if len(errors) > shown else ""
    return "; ".join(parts) + more


def _from_columns(row: Row[Any], reason: str) -> ApplyRun:
    """A stand-in for an unreadable run, from the columns kept beside its document."""
    kinds = {k.value for k in RunKind}
    states = {s.value for s in RunState}
    document = row.document if isinstance(row.document, dict) else {}
    trigger = document.get("trigger")
    return ApplyRun(
        id=row.id,
        kind=RunKind(row.kind) if row.kind in kinds else RunKind.APPLY,
        trigger=trigger if isinstance(trigger, str) else "unknown",
        state=RunState(row.state) if row.state in states else RunState.FAILED,
        revision=row.revision,
        created_at=row.created_at,
        notes=(
            f"this gpuplane cannot read the stored run ({reason}); only its id, kind, state, revision and "
            "creation time are shown",
        ),
    )


def _newest_first(query: Select[Any]) -> Select[Any]:
    # The id breaks ties between runs created in the same microsecond, so the order is stable.
    return query.order_by(RUNS.c.created_at.desc(), RUNS.c.id.desc())


def _write(conn: Connection, statement: Executable, run_id: str) -> CursorResult[Any]:
    """Execute an insert or update of ``run_id``; a second active run becomes ``RunConflict``.

    The statement runs in a savepoint so that, once refused, the transaction can still look up
    the active run (read committed: the look-up sees the run that won).
    """
    for _ in range(_CONFLICT_ATTEMPTS):
        try:
            with conn.begin_nested():
                return conn.execute(statement)
        except IntegrityError as exc:
            violated = _violated(exc)
            if violated == PRIMARY_KEY:
                raise OperationFailed(f"run {run_id} already exists") from exc
            if violated != ONE_ACTIVE_INDEX:
                raise
            active = conn.execute(
                select(RUNS.c.id).where(RUNS.c.state.in_(ACTIVE_STATES), RUNS.c.id != run_id)
            ).scalar()
            if active is not None:
                raise RunConflict(active) from exc
    raise OperationFailed(f"run {run_id} kept colliding with runs that finished at once; try again")


class RunStore:
    """Runs of the orchestrator, with the override files on either side of each (``RunRepository``).

    Methods block; the controller calls them through ``asyncio.to_thread``.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def migrate(self) -> None:
        """Bring the schema to the latest migration; safe when several orchestrators start at once."""
        upgrade(self._engine, Path(__file__).with_name("migrations"), MIGRATION_LOCK_KEY, "the orchestrator's tables")

    def create(self, record: RunRecord) -> None:
        """Insert a new run.

        Raises ``RunConflict`` naming the active run if this one is active too and another is
        queued, running or rolling back; ``OperationFailed`` if the id is taken.
        """
        run = record.run
        statement = insert(RUNS).values(id=run.id, **_columns(record))
        with _database(f"record run {run.id}"), self._engine.begin() as conn:
            _write(conn, statement, run.id)
        log.info("recorded %s run %s (%s)", run.kind.value, run.id, run.state.value)

    def update(self, record: RunRecord) -> None:
        """Replace a run's document, state and overrides.

        Raises ``UnknownRun`` if it was never created, ``RunConflict`` if it would become a second active run.
        """
        run = record.run
        statement = update(RUNS).where(RUNS.c.id == run.id).values(updated_at=func.now(), **_columns(record))
        with _database(f"update run {run.id}"), self._engine.begin() as conn:
            if _write(conn, statement, run.id).rowcount == 0:
                raise UnknownRun(run.id)
        log.debug("updated run %s (%s)", run.id, run.state.value)

    def get(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""
        with _database(f"read run {run_id}"), self._engine.connect() as conn:
            row = conn.execute(select(RUNS).where(RUNS.c.id == run_id)).one_or_none()
        return None if row is None else _record(row)

    def latest(self) -> RunRecord | None:
        """The most recently created run."""
        return self._first("read the latest run", _newest_first(select(RUNS)))

    def active(self) -> RunRecord | None:
        """The run that is queued, running or rolling back, if any."""
        return self._first("read the active run", select(RUNS).where(RUNS.c.state.in_(ACTIVE_STATES)))

    def last_succeeded(self) -> RunRecord | None:
        """The most recently created run that ended ``succeeded``."""
        query = _newest_first(select(RUNS).where(RUNS.c.state == RunState.SUCCEEDED.value))
        return self._first("read the last successful run", query)

    def history(self, limit: int = 20) -> list[RunRecord]:
        """The last ``limit`` runs, newest first."""
        with _database("read the run history"), self._engine.connect() as conn:
            rows = conn.execute(_newest_first(select(RUNS)).limit(limit)).all()
        return [_record(row) for row in rows]

    def _first(self, action: str, query: Select[Any]) -> RunRecord | None:
        with _database(action), self._engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else _record(row)
