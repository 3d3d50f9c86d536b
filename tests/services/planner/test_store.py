from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy.engine import make_url

from services.planner import store as store_module
from services.planner.migrations import VERSION_TABLE
from services.planner.mirror import HEADER, MirrorWriteFailed, mirror_matches, read_mirror, render_mirror
from services.planner.store import METADATA, ConfigStore
from services.stack.embedded import free_port
from shared.contracts import GpuConfig, ServiceAssignment
from shared.database import DatabaseUnavailable, make_engine
from shared.errors import ConfigError
from tests.builders import FIXED_TIME, make_gpu, make_inventory
from tests.migrations import downgrade_to_base, drift_from_migrations
from tests.realdeps import Postgres

TABLES = {"gpu_configurations", "gpu_devices", "system_settings", "gpu_config_history"}
LATER = FIXED_TIME + timedelta(minutes=5)


def assignment(service: str, gpus: tuple[int, ...] = (0,), **fields: object) -> ServiceAssignment:
    values: dict[str, object] = {
        "service": service,
        "model": f"{service}-model",
        "host": "box-a" if gpus else None,
        "gpu_indices": gpus,
        "gpu_uuids": tuple(make_gpu(i).uuid for i in gpus),
        "vram_estimate_gb": 4.0,
        "placed_by": "vram_based",
    }
    return ServiceAssignment.model_validate(values | fields)


FIRST = (
    assignment("ai-clip", (1,), vram_budget_gb=2.5, vram_budget_override=2.5, pinned=True, placed_by="manual"),
    assignment("ai-llm", (0, 1), vram_estimate_gb=40.0),
    assignment("ai-tts", (), enabled=False),
)
SECOND = (assignment("ai-clip", (0,)), assignment("ai-llm", (1,)), assignment("ai-embed", (0,)))


@pytest.fixture
def engine(postgres: Postgres) -> Iterator[Engine]:
    """A database of its own for each test."""
    name = f"store_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres.url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(make_url(postgres.url).set(database=name).render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def mirror_path(tmp_path: Path) -> Path:
    return tmp_path / "config" / "gpu-assignments.yml"


@pytest.fixture
def store(engine: Engine, mirror_path: Path) -> ConfigStore:
    store = ConfigStore(engine, mirror_path)
    store.migrate()
    return store


def table_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def rows(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(sql))]


def test_migrate_creates_the_tables_and_is_idempotent(engine: Engine, mirror_path: Path) -> None:
    store = ConfigStore(engine, mirror_path)
    store.migrate()
    store.migrate()
    assert table_names(engine) == TABLES | {VERSION_TABLE}
    assert rows(engine, f"SELECT version_num FROM {VERSION_TABLE}") == [{"version_num": "0001"}]


def test_planners_migrating_together_do_not_race(engine: Engine, mirror_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(ConfigStore(engine, mirror_path).migrate) for _ in range(2)]
        for run in runs:
            run.result()
    assert table_names(engine) == TABLES | {VERSION_TABLE}


def test_the_store_tables_match_the_migration(store: ConfigStore, engine: Engine) -> None:
    assert drift_from_migrations(engine, METADATA, VERSION_TABLE) == []


def test_downgrade_drops_the_tables(store: ConfigStore, engine: Engine) -> None:
    downgrade_to_base(engine, store_module.__file__)
    assert table_names(engine) == {VERSION_TABLE}


def test_a_database_from_a_newer_gpuplane_is_a_config_error(store: ConfigStore, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(ConfigError, match="cannot migrate the planner's tables: .*9999"):
        store.migrate()


def test_nothing_is_saved_at_first(store: ConfigStore, mirror_path: Path) -> None:
    assert store.load() is None
    assert store.history() == []
    assert store.sync_mirror() is False
    assert not mirror_path.exists()


def test_save_then_load_round_trips(store: ConfigStore) -> None:
    saved = store.save("vram_based", FIRST, ["ai-llm spans two GPUs"], FIXED_TIME)
    assert saved == GpuConfig(
        strategy="vram_based",
        saved=True,
        saved_at=FIXED_TIME,
        revision=1,
        assignments=FIRST,
        warnings=("ai-llm spans two GPUs",),
    )
    assert store.load() == saved


def test_each_save_is_a_new_revision_in_the_history(store: ConfigStore, engine: Engine) -> None:
    first = store.save("vram_based", FIRST, ["first"], FIXED_TIME)
    created = rows(engine, "SELECT service_name, created_at FROM gpu_configurations WHERE service_name = 'ai-llm'")
    second = store.save("balanced", SECOND, [], LATER)

    assert second.revision == 2
    assert store.load() == second
    assert store.history() == [second, first]
    assert store.history(limit=1) == [second]
    # Services keep their place; the one added comes last; the one dropped is gone.
    assert [a.service for a in second.assignments] == ["ai-clip", "ai-llm", "ai-embed"]
    assert rows(engine, "SELECT service_name, created_at FROM gpu_configurations WHERE service_name = 'ai-llm'") == (
        created
    )


def test_save_writes_the_mirror(store: ConfigStore, mirror_path: Path) -> None:
    saved = store.save("vram_based", FIRST, [], FIXED_TIME)
    text_ = mirror_path.read_text()
    assert text_ == render_mirror(saved)
    assert text_.startswith(HEADER)
    data = read_mirror(mirror_path)
    assert data is not None and mirror_matches(saved, data)


def test_a_mirror_write_failure_leaves_the_database_unchanged(
    store: ConfigStore, engine: Engine, mirror_path: Path
) -> None:
    first = store.save("vram_based", FIRST, ["first"], FIXED_TIME)
    mirror_path.unlink()
    mirror_path.mkdir()

    with pytest.raises(MirrorWriteFailed, match=f"cannot write {mirror_path}"):
        store.save("balanced", SECOND, [], LATER)

    assert store.load() == first
    assert store.history() == [first]
    assert {row["service_name"] for row in rows(engine, "SELECT service_name FROM gpu_configurations")} == {
        "ai-clip",
        "ai-llm",
        "ai-tts",
    }


def test_a_failed_commit_puts_the_previous_mirror_back(
    store: ConfigStore, engine: Engine, postgres: Postgres, mirror_path: Path
) -> None:
    first = store.save("vram_based", FIRST, [], FIXED_TIME)
    before = mirror_path.read_text()
    admin = make_engine(postgres.url)

    def kill_the_session(conn: Connection) -> None:
        assert mirror_path.read_text() != before, "the commit comes after the mirror write"
        pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with admin.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})

    event.listen(engine, "commit", kill_the_session)
    try:
        with pytest.raises(DatabaseUnavailable, match="cannot save the GPU configuration: the database") as caught:
            store.save("balanced", SECOND, [], LATER)
        assert "terminating connection" in (caught.value.detail or "")
    finally:
        event.remove(engine, "commit", kill_the_session)
        admin.dispose()

    assert mirror_path.read_text() == before
    assert store.load() == first


@pytest.mark.parametrize(
    "damage",
    [Path.unlink, lambda path: path.write_text(path.read_text().replace("gpu: 1", "gpu: 0"))],
    ids=["deleted", "hand-edited"],
)
def test_sync_mirror_rewrites_a_missing_or_edited_mirror(store: ConfigStore, mirror_path: Path, damage: Any) -> None:
    saved = store.save("vram_based", FIRST, [], FIXED_TIME)
    assert store.sync_mirror() is False
    damage(mirror_path)

    assert store.sync_mirror() is True
    assert mirror_path.read_text() == render_mirror(saved)


def test_record_devices_upserts_and_forgets_vanished_gpus(store: ConfigStore) -> None:
    store.record_devices(make_inventory(), FIXED_TIME)
    store.record_devices(make_inventory((make_gpu(0),), host="box-b"), FIXED_TIME)
    store.record_devices(
        make_inventory((make_gpu(0, vram_used_mb=4096, healthy=False, health_reason="Xid 79"),)), LATER
    )

    devices = store.devices()
    assert [(d["host"], d["gpu_index"]) for d in devices] == [("box-a", 0), ("box-b", 0)]
    assert {k: devices[0][k] for k in ("vram_total_mb", "vram_available_mb", "healthy", "health_reason")} == {
        "vram_total_mb": 24564,
        "vram_available_mb": 24564 - 4096,
        "healthy": False,
        "health_reason": "Xid 79",
    }
    assert devices[0]["last_seen_at"] == LATER
    assert devices[0]["source"] == "simulated"

    store.record_devices(make_inventory(()), LATER)
    assert [(d["host"], d["gpu_index"]) for d in store.devices()] == [("box-b", 0)]


def test_an_unreachable_database_is_typed(mirror_path: Path) -> None:
    store = ConfigStore(make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/gpuplane"), mirror_path)
    with pytest.raises(DatabaseUnavailable, match="cannot load the GPU configuration: the database is not answering") as caught:  # noqa: E501
        store.load()
    # The driver's words (address, port) go to the log only, never into the message a client may see.
    assert "refused" in (caught.value.detail or "") and "127.0.0.1" not in str(caught.value)
    with pytest.raises(DatabaseUnavailable, match="cannot migrate the planner's tables"):
        store.migrate()
