"""The planner's configuration store: PostgreSQL is the source of truth, mirrored to YAML on every save."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Double,
    Engine,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from services.planner.mirror import MirrorWriteFailed, mirror_matches, read_mirror, render_mirror, restore, write_atomic
from shared.contracts import GpuConfig, Inventory, ServiceAssignment
from shared.database import advisory_lock, database_errors, upgrade

log = logging.getLogger(__name__)

STRATEGY_KEY = "gpu_assignment_strategy"
"""The ``system_settings`` row holding the saved configuration's strategy, revision and time."""

MIGRATION_LOCK_KEY = 0x6770_7570_6C61_6E01
"""pg_advisory_xact_lock key: planners starting together migrate one after the other."""
SAVE_LOCK_KEY = 0x6770_7570_6C61_6E02
"""pg_advisory_xact_lock key: saves (and their mirror writes) happen one at a time across planners."""

# These tables mirror migration 0001; tests check that the two agree.
METADATA = MetaData()
GPU_CONFIGURATIONS = Table(
    "gpu_configurations",
    METADATA,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("service_name", String(128), nullable=False, unique=True),
    Column("gpu_index", Integer),
    Column("gpu_indices", ARRAY(Integer), nullable=False, server_default=text("'{}'")),
    Column("gpu_uuids", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("host", String(255)),
    Column("strategy", String(32), nullable=False, server_default="manual"),
    Column("pinned", Boolean, nullable=False, server_default=text("false")),
    Column("model", Text, nullable=False, server_default=""),
    Column("vram_estimate_gb", Double, nullable=False),
    Column("vram_budget_gb", Double),
    Column("vram_budget_override", Double),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)
GPU_DEVICES = Table(
    "gpu_devices",
    METADATA,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("host", String(255), nullable=False),
    Column("gpu_index", Integer, nullable=False),
    Column("uuid", String(96)),
    Column("name", String(128)),
    Column("vram_total_mb", Integer),
    Column("vram_available_mb", Integer),
    Column("compute_capability", String(16)),
    Column("healthy", Boolean),
    Column("health_reason", Text),
    Column("source", String(16)),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("host", "gpu_index"),
)
SYSTEM_SETTINGS = Table(
    "system_settings",
    METADATA,
    Column("key", String(64), primary_key=True),
    Column("value", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)
GPU_CONFIG_HISTORY = Table(
    "gpu_config_history",
    METADATA,
    Column("revision", Integer, primary_key=True, autoincrement=False),
    Column("saved_at", DateTime(timezone=True), nullable=False),
    Column("strategy", String(32), nullable=False),
    Column("assignments", JSONB, nullable=False),
    Column("warnings", JSONB, nullable=False),
)


def _history_config(row: Row[Any]) -> GpuConfig:
    return GpuConfig(
        strategy=row.strategy,
        saved=True,
        saved_at=row.saved_at,
        revision=row.revision,
        assignments=tuple(ServiceAssignment.model_validate(a) for a in row.assignments),
        warnings=tuple(row.warnings),
    )


def _assignment_row(assignment: ServiceAssignment, now: datetime) -> dict[str, Any]:
    return {
        "service_name": assignment.service,
        "gpu_index": assignment.gpu_index,
        "gpu_indices": list(assignment.gpu_indices),
        "gpu_uuids": list(assignment.gpu_uuids),
        "host": assignment.host,
        "strategy": assignment.placed_by,
        "pinned": assignment.pinned,
        "model": assignment.model,
        "vram_estimate_gb": assignment.vram_estimate_gb,
        "vram_budget_gb": assignment.vram_budget_gb,
        "vram_budget_override": assignment.vram_budget_override,
        "enabled": assignment.enabled,
        "created_at": now,
        "updated_at": now,
    }


def _assignment(row: Row[Any]) -> ServiceAssignment:
    return ServiceAssignment(
        service=row.service_name,
        model=row.model,
        host=row.host,
        gpu_indices=tuple(row.gpu_indices),
        gpu_uuids=tuple(row.gpu_uuids),
        vram_estimate_gb=row.vram_estimate_gb,
        vram_budget_gb=row.vram_budget_gb,
        vram_budget_override=row.vram_budget_override,
        pinned=row.pinned,
        placed_by=row.strategy,
        enabled=row.enabled,
    )


def _read_assignments(conn: Connection) -> tuple[ServiceAssignment, ...]:
    """Services keep their place across saves: oldest first, then by name."""
    table = GPU_CONFIGURATIONS
    rows = conn.execute(select(table).order_by(table.c.created_at, table.c.service_name))
    return tuple(_assignment(row) for row in rows)


def _load(conn: Connection) -> GpuConfig | None:
    setting = conn.execute(select(SYSTEM_SETTINGS.c.value).where(SYSTEM_SETTINGS.c.key == STRATEGY_KEY)).scalar()
    if setting is None:
        return None
    warnings = conn.execute(
        select(GPU_CONFIG_HISTORY.c.warnings).where(GPU_CONFIG_HISTORY.c.revision == setting["revision"])
    ).scalar()
    return GpuConfig(
        strategy=setting["strategy"],
        saved=True,
        saved_at=datetime.fromisoformat(setting["saved_at"]),
        revision=setting["revision"],
        assignments=_read_assignments(conn),
        warnings=tuple(warnings or ()),
    )


def _write(
    conn: Connection, strategy: str, assignments: Sequence[ServiceAssignment], warnings: Sequence[str], now: datetime
) -> GpuConfig:
    """Replace the configuration rows and add a revision; returns what ``load`` will read after the commit."""
    table = GPU_CONFIGURATIONS
    if assignments:
        upsert = pg_insert(table).values([_assignment_row(a, now) for a in assignments])
        kept = {"id", "service_name", "created_at"}
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[table.c.service_name],
                set_={c.name: upsert.excluded[c.name] for c in table.columns if c.name not in kept},
            )
        )
    conn.execute(delete(table).where(table.c.service_name.not_in([a.service for a in assignments])))

    history = GPU_CONFIG_HISTORY
    revision = conn.execute(select(func.coalesce(func.max(history.c.revision), 0) + 1)).scalar_one()
    value = {"strategy": strategy, "revision": revision, "saved_at": now.isoformat()}
    setting = pg_insert(SYSTEM_SETTINGS).values(key=STRATEGY_KEY, value=value, updated_at=now)
    conn.execute(
        setting.on_conflict_do_update(
            index_elements=[SYSTEM_SETTINGS.c.key], set_={"value": setting.excluded.value, "updated_at": now}
        )
    )

    config = GpuConfig(
        strategy=strategy,
        saved=True,
        saved_at=now,
        revision=revision,
        assignments=_read_assignments(conn),
        warnings=tuple(warnings),
    )
    conn.execute(
        history.insert().values(
            revision=revision,
            saved_at=now,
            strategy=strategy,
            assignments=[a.model_dump(mode="json") for a in config.assignments],
            warnings=list(warnings),
        )
    )
    return config


class ConfigStore:
    """The saved GPU configuration, the detected devices and the configuration history."""

    def __init__(self, engine: Engine, mirror_path: Path) -> None:
        self._engine = engine
        self._mirror_path = mirror_path

    def migrate(self) -> None:
        """Bring the schema to the latest migration; safe when several planners start at once."""
        upgrade(self._engine, Path(__file__).with_name("migrations"), MIGRATION_LOCK_KEY, "the planner's tables")

    def load(self) -> GpuConfig | None:
        """The saved configuration, or None before the first save."""
        with database_errors("load the GPU configuration"), self._engine.connect() as conn:
            return _load(conn)

    def save(
        self, strategy: str, assignments: Sequence[ServiceAssignment], warnings: Sequence[str], now: datetime
    ) -> GpuConfig:
        """Store a new revision and rewrite the YAML mirror: both change, or neither does.

        Raises ``MirrorWriteFailed`` (database unchanged) or ``DatabaseUnavailable`` (mirror put back).
        """
        with database_errors("save the GPU configuration"), self._engine.connect() as conn:
            transaction = conn.begin()  # leaving the block without a commit rolls it back
            advisory_lock(conn, SAVE_LOCK_KEY)
            config = _write(conn, strategy, assignments, warnings, now)
            previous = write_atomic(self._mirror_path, render_mirror(config))
            try:
                transaction.commit()
            except DBAPIError:
                self._restore_mirror(previous)
                raise
        log.info("saved GPU configuration revision %d (%s, %d services)", config.revision, strategy, len(assignments))
        return config

    def _restore_mirror(self, previous: str | None) -> None:
        try:
            restore(self._mirror_path, previous)
        except MirrorWriteFailed as exc:
            log.error("the commit failed and the mirror could not be put back (the next start rewrites it): %s", exc)

    def record_devices(self, inventory: Inventory, now: datetime) -> None:
        """Make ``gpu_devices`` hold exactly the inventory's GPUs for its host."""
        rows = [
            {
                "host": inventory.host,
                "gpu_index": gpu.index,
                "uuid": gpu.uuid,
                "name": gpu.name,
                "vram_total_mb": gpu.vram_total_mb,
                "vram_available_mb": gpu.vram_free_mb,
                "compute_capability": gpu.compute_capability,
                "healthy": gpu.healthy,
                "health_reason": gpu.health_reason,
                "source": inventory.source.value,
                "last_seen_at": now,
            }
            for gpu in inventory.gpus
        ]
        table = GPU_DEVICES
        with database_errors("record the GPU inventory"), self._engine.begin() as conn:
            if rows:
                upsert = pg_insert(table).values(rows)
                conn.execute(
                    upsert.on_conflict_do_update(
                        index_elements=[table.c.host, table.c.gpu_index],
                        set_={name: upsert.excluded[name] for name in rows[0] if name not in ("host", "gpu_index")},
                    )
                )
            conn.execute(
                delete(table).where(
                    table.c.host == inventory.host, table.c.gpu_index.not_in([gpu.index for gpu in inventory.gpus])
                )
            )

    def devices(self) -> list[dict[str, Any]]:
        """Every recorded GPU, by host and index."""
        table = GPU_DEVICES
        with database_errors("read the GPU devices"), self._engine.connect() as conn:
            rows = conn.execute(select(table).order_by(table.c.host, table.c.gpu_index))
            return [dict(row._mapping) for row in rows]

    def history(self, limit: int = 20) -> list[GpuConfig]:
        """The last ``limit`` saved revisions, newest first."""
        table = GPU_CONFIG_HISTORY
        with database_errors("read the configuration history"), self._engine.connect() as conn:
            rows = conn.execute(select(table).order_by(table.c.revision.desc()).limit(limit))
            return [_history_config(row) for row in rows]

    def revision(self, revision: int) -> GpuConfig | None:
        """Saved revision ``revision`` as it was saved, or None if there is no such revision."""
        table = GPU_CONFIG_HISTORY
        with database_errors("read the configuration history"), self._engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.revision == revision)).first()
            return _history_config(row) if row is not None else None

    def sync_mirror(self) -> bool:
        """At start-up: rewrite a missing or differing mirror from the database; True when rewritten."""
        with database_errors("load the GPU configuration"), self._engine.begin() as conn:
            advisory_lock(conn, SAVE_LOCK_KEY)
            config = _load(conn)
            if config is None:
                return False
            data = read_mirror(self._mirror_path)
            if data is not None and mirror_matches(config, data):
                return False
            write_atomic(self._mirror_path, render_mirror(config))
        log.warning("rewrote %s from the database: it was missing or differed", self._mirror_path)
        return True
