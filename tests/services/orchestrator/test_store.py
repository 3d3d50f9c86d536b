from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from services.orchestrator import store as store_module
from services.orchestrator.migrations import VERSION_TABLE
from services.orchestrator.ports import RunConflict, RunRecord, RunRepository, StoreUnavailable
from services.orchestrator.store import METADATA, RunStore, UnknownRun
from services.planner.migrations import VERSION_TABLE as PLANNER_VERSION_TABLE
from services.planner.store import ConfigStore
from services.stack.embedded import free_port
from shared.contracts import ApplyRun, RunKind, RunState, ServiceProgress, ServiceState, TouchedContainer
from shared.database import DatabaseUnavailable, make_engine
from shared.errors import ConfigError, OperationFailed
from tests.builders import FIXED_TIME
from tests.migrations import downgrade_to_base, drift_from_migrations
from tests.realdeps import Postgres

TABLE = "orchestrator_runs"
PLANNER_TABLES = {"gpu_configurations", "gpu_devices", "system_settings", "gpu_config_history"}
OVERRIDE = "services:\n  ai-llm:\n    devices: [nvidia.com/gpu=GPU-bb]\n"


def make_run(run_id: str, state: RunState = RunState.QUEUED, minutes: int = 0, **fields: Any) -> ApplyRun:
    values: dict[str, Any] = {
        "id": run_id,
        "kind": RunKind.APPLY,
        "trigger": "api",
        "state": state,
        "revision": 3,
        "previous_revision": 2,
        "created_at": FIXED_TIME + timedelta(minutes=minutes),
    }
    return ApplyRun.model_validate(values | fields)


def record(run: ApplyRun, target: str | None = OVERRIDE, previous: str | None = None) -> RunRecord:
    return RunRecord(run=run, target_override=target, previous_override=previous)


@pytest.fixture
def engine(postgres: Postgres) -> Iterator[Engine]:
    """A database of its own for each test."""
    name = f"runs_{uuid.uuid4().hex[:12]}"
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
def store(engine: Engine) -> RunStore:
    store = RunStore(engine)
    store.migrate()
    return store


def table_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def rows(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(sql))]


def test_the_store_is_a_run_repository(store: RunStore) -> None:
    repository: RunRepository = store
    assert repository.latest() is None


# --------------------------------------------------------------------------- migrations


def test_migrate_creates_the_table_and_is_idempotent(engine: Engine) -> None:
    store = RunStore(engine)
    store.migrate()
    store.migrate()
    assert table_names(engine) == {TABLE, VERSION_TABLE}
    assert rows(engine, f"SELECT version_num FROM {VERSION_TABLE}") == [{"version_num": "0001"}]


def test_the_planner_and_the_orchestrator_migrate_the_same_database(engine: Engine, tmp_path: Path) -> None:
    planner = ConfigStore(engine, tmp_path / "gpu-assignments.yml")
    orchestrator = RunStore(engine)
    # Either may start first, and each migrates again at every start.
    orchestrator.migrate()
    planner.migrate()
    orchestrator.migrate()
    planner.migrate()

    assert table_names(engine) == PLANNER_TABLES | {TABLE, VERSION_TABLE, PLANNER_VERSION_TABLE}
    assert rows(engine, f"SELECT version_num FROM {VERSION_TABLE}") == [{"version_num": "0001"}]
    assert rows(engine, f"SELECT version_num FROM {PLANNER_VERSION_TABLE}") == [{"version_num": "0001"}]
    orchestrator.create(record(make_run("run-1")))
    assert planner.load() is None


def test_orchestrators_migrating_together_do_not_race(engine: Engine) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        for done in [pool.submit(RunStore(engine).migrate) for _ in range(2)]:
            done.result()
    assert table_names(engine) == {TABLE, VERSION_TABLE}


def _migrate_in_a_process(url: str, which: str, mirror: str) -> None:
    engine = make_engine(url)
    try:
        (RunStore(engine) if which == "orchestrator" else ConfigStore(engine, Path(mirror))).migrate()
    finally:
        engine.dispose()


def test_the_planner_and_the_orchestrator_migrate_at_once(engine: Engine, tmp_path: Path) -> None:
    """They are separate processes with separate advisory locks and version tables.

    (Processes, not threads: alembic's ``context`` and ``op`` are process-global, so two
    migrations of different services must not overlap inside one process.)
    """
    url = engine.url.render_as_string(hide_password=False)
    mirror = str(tmp_path / "gpu-assignments.yml")
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = [pool.submit(_migrate_in_a_process, url, which, mirror) for which in ("orchestrator", "planner")]
        for done in runs:
            done.result()
    assert table_names(engine) == PLANNER_TABLES | {TABLE, VERSION_TABLE, PLANNER_VERSION_TABLE}


def test_the_store_table_matches_the_migration(store: RunStore, engine: Engine) -> None:
    assert drift_from_migrations(engine, METADATA, VERSION_TABLE) == []


def test_downgrade_drops_the_table(store: RunStore, engine: Engine) -> None:
    downgrade_to_base(engine, store_module.__file__)
    assert table_names(engine) == {VERSION_TABLE}


def test_a_database_from_a_newer_gpuplane_is_a_config_error(store: RunStore, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(ConfigError, match="cannot migrate the orchestrator's tables: .*9999"):
        store.migrate()


# --------------------------------------------------------------------------- reads and writes


def test_nothing_is_stored_at_first(store: RunStore) -> None:
    assert store.get("run-1") is None
    assert store.latest() is None
    assert store.active() is None
    assert store.last_succeeded() is None
    assert store.history() == []


def test_create_then_get_round_trips(store: RunStore, engine: Engine) -> None:
    run = make_run(
        "run-1",
        RunState.RUNNING,
        kind=RunKind.ROLLBACK,
        trigger="recovery",
        revision=None,
        started_at=FIXED_TIME + timedelta(seconds=1),
        services=(
            ServiceProgress(
                service="ai-llm",
                state=ServiceState.RECREATING,
                change="GPU GPU-aa -> GPU-bb",
                devices_before=("GPU-aa",),
                devices_after=("GPU-bb",),
                container_before="c0ffee",
                started_at=FIXED_TIME,
            ),
        ),
        touched=(
            TouchedContainer(
                service="ai-llm", container_before="c0ffee", container_after=None, why="recreated", at=FIXED_TIME
            ),
        ),
        notes=("ai-tts skipped: disabled",),
        rollback_of="run-0",
    )
    stored = record(run, target=OVERRIDE, previous="services: {}\n")
    store.create(stored)

    assert store.get("run-1") == stored
    assert rows(engine, f"SELECT id, kind, state, revision, created_at FROM {TABLE}") == [
        {"id": "run-1", "kind": "rollback", "state": "running", "revision": None, "created_at": FIXED_TIME}
    ]


def test_overrides_may_be_absent(store: RunStore) -> None:
    stored = record(make_run("run-1"), target=None, previous=None)
    store.create(stored)
    assert store.get("run-1") == stored


def test_a_second_active_run_is_refused_naming_the_first(store: RunStore) -> None:
    store.create(record(make_run("run-1", RunState.ROLLING_BACK)))

    with pytest.raises(RunConflict, match="run run-1 is still in progress") as raised:
        store.create(record(make_run("run-2", minutes=1)))

    assert raised.value.run_id == "run-1"
    assert raised.value.context == {"run_id": "run-1"}
    assert store.get("run-2") is None
    # A finished run may be recorded beside the active one.
    store.create(record(make_run("run-3", RunState.FAILED, minutes=2)))


@pytest.mark.parametrize("state", list(RunState))
def test_the_database_admits_one_active_run_at_most(store: RunStore, engine: Engine, state: RunState) -> None:
    """The partial index, not the store's code, refuses the second run: the states agree with ``RunState.active``."""
    documents = [make_run(f"run-{i}", state).model_dump_json() for i in (1, 2)]
    insert = text(
        f"INSERT INTO {TABLE} (id, kind, state, created_at, document) VALUES (:id, 'apply', :state, now(), :doc)"
    )
    with engine.begin() as conn:
        conn.execute(insert, {"id": "run-1", "state": state.value, "doc": documents[0]})
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"id": "run-2", "state": state.value, "doc": documents[1]})
        admitted = True
    except IntegrityError as exc:
        assert "orchestrator_runs_one_active" in str(exc.orig)
        admitted = False
    assert admitted is not state.active


def test_runs_racing_to_start_leave_one_winner(store: RunStore, engine: Engine) -> None:
    contenders = 4
    for round_ in range(5):
        start = threading.Barrier(contenders)

        def create(i: int, round_: int = round_, start: threading.Barrier = start) -> str:
            run_id = f"run-{round_}-{i}"
            start.wait()
            try:
                RunStore(engine).create(record(make_run(run_id, minutes=round_)))
            except RunConflict as exc:
                return f"lost to {exc.run_id}"
            return run_id

        with ThreadPoolExecutor(max_workers=contenders) as pool:
            outcomes = list(pool.map(create, range(contenders)))

        winners = [outcome for outcome in outcomes if not outcome.startswith("lost")]
        assert len(winners) == 1, outcomes
        assert sorted(outcomes) == sorted(winners + [f"lost to {winners[0]}"] * (contenders - 1))
        active = store.active()
        assert active is not None and active.run.id == winners[0]
        store.update(record(active.run.model_copy(update={"state": RunState.SUCCEEDED})))
    assert len(store.history(limit=100)) == 5


def test_update_replaces_the_document_state_and_overrides(store: RunStore, engine: Engine) -> None:
    run = make_run("run-1")
    store.create(record(run, target=OVERRIDE, previous=None))
    (created,) = rows(engine, f"SELECT updated_at FROM {TABLE}")

    finished = run.model_copy(
        update={"state": RunState.FAILED, "error": "ai-llm did not become healthy", "notes": ("restart",)}
    )
    updated = record(finished, target="services: {}\n", previous=OVERRIDE)
    store.update(updated)

    assert store.get("run-1") == updated
    assert store.active() is None
    (row,) = rows(engine, f"SELECT state, updated_at FROM {TABLE}")
    assert row["state"] == "failed"
    assert row["updated_at"] >= created["updated_at"]


def test_update_of_a_missing_run_is_refused(store: RunStore) -> None:
    with pytest.raises(UnknownRun, match="run run-9 does not exist") as raised:
        store.update(record(make_run("run-9")))
    assert raised.value.run_id == "run-9"
    assert store.get("run-9") is None


def test_update_cannot_make_a_second_run_active(store: RunStore) -> None:
    store.create(record(make_run("run-1", RunState.SUCCEEDED)))
    store.create(record(make_run("run-2", RunState.RUNNING, minutes=1)))
    with pytest.raises(RunConflict) as raised:
        store.update(record(make_run("run-1", RunState.QUEUED)))
    assert raised.value.run_id == "run-2"
    # The active run itself may move between active states.
    store.update(record(make_run("run-2", RunState.ROLLING_BACK, minutes=1)))


def test_a_taken_id_is_refused(store: RunStore) -> None:
    store.create(record(make_run("run-1", RunState.SUCCEEDED)))
    with pytest.raises(OperationFailed, match="run run-1 already exists"):
        store.create(record(make_run("run-1", RunState.FAILED)))


def test_latest_active_last_succeeded_and_history_follow_creation_time(store: RunStore) -> None:
    # Recorded out of order on purpose: creation time orders them, not insertion.
    runs = {
        "old-success": make_run("old-success", RunState.SUCCEEDED, minutes=0),
        "new-success": make_run("new-success", RunState.SUCCEEDED, minutes=2),
        "rolled-back": make_run("rolled-back", RunState.ROLLED_BACK, minutes=3),
        "mid-failure": make_run("mid-failure", RunState.FAILED, minutes=1),
    }
    for name in ("new-success", "old-success", "rolled-back", "mid-failure"):
        store.create(record(runs[name]))

    def ids(records: list[RunRecord]) -> list[str]:
        return [r.run.id for r in records]

    assert ids(store.history()) == ["rolled-back", "new-success", "mid-failure", "old-success"]
    assert ids(store.history(limit=2)) == ["rolled-back", "new-success"]
    latest, succeeded = store.latest(), store.last_succeeded()
    assert latest is not None and latest.run.id == "rolled-back"
    assert succeeded is not None and succeeded.run.id == "new-success"
    assert store.active() is None

    store.create(record(make_run("queued", minutes=4)))
    active, latest = store.active(), store.latest()
    assert active is not None and active.run.id == "queued"
    assert latest is not None and latest.run.id == "queued"
    assert succeeded == store.last_succeeded()


UNREADABLE = [
    pytest.param(
        RunState.RUNNING,
        """document - 'kind' || '{"state": "paused"}'""",
        "kind: Field required; state: Input should be 'queued'",
        id="fields-missing-and-unknown",
    ),
    pytest.param(
        RunState.RUNNING,
        """jsonb_set(document, '{services,0,service}', '["ai*star"]')""",
        "services.0.service: Input should be a valid string",
        id="a-service-of-another-shape",
    ),
    pytest.param(
        RunState.SUCCEEDED,
        """document || '{"touched": "everything"}'""",
        "touched: Input should be a valid tuple",
        id="an-ended-run",
    ),
]


@pytest.mark.parametrize(("state", "breakage", "reason"), UNREADABLE)
def test_a_document_that_no_longer_parses_is_shown_from_its_columns(
    store: RunStore, engine: Engine, state: RunState, breakage: str, reason: str
) -> None:
    llm = ServiceProgress(service="ai-llm", change="GPU")
    store.create(record(make_run("run-1", services=(llm,)), previous="services: {}\n"))
    store.update(record(make_run("run-1", state, services=(llm,)), previous="services: {}\n"))
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {TABLE} SET document = {breakage}"))

    reads = [store.get("run-1"), store.latest(), *store.history()]
    reads += [store.active()] if state.active else [store.last_succeeded()]
    for found in reads:
        assert found is not None and found.unreadable is not None and reason in found.unreadable
        assert found.run.id == "run-1" and found.run.state is state and found.run.revision == 3
        assert found.run.created_at == FIXED_TIME and found.run.services == ()
        assert found.target_override == OVERRIDE and found.previous_override == "services: {}\n"
        assert any("cannot read the stored run" in note for note in found.run.notes)


def test_ending_an_unreadable_active_run_frees_the_one_active_rule(store: RunStore, engine: Engine) -> None:
    store.create(record(make_run("run-1", RunState.RUNNING)))
    with engine.begin() as conn:
        conn.execute(text(f"""UPDATE {TABLE} SET document = document - 'kind' || '{{"state": "paused"}}'"""))
    left = store.active()
    assert left is not None and left.unreadable is not None

    # What the controller does with it: record its stand-in as failed, with the reason.
    ended = left.run.model_copy(update={"state": RunState.FAILED, "error": f"cannot read it: {left.unreadable}"})
    store.update(RunRecord(ended, left.target_override, left.previous_override))

    assert store.active() is None
    again = store.get("run-1")
    assert again is not None and again.unreadable is None and again.run.state is RunState.FAILED
    store.create(record(make_run("run-2")))


def test_an_unreachable_database_is_typed() -> None:
    store = RunStore(make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/gpuplane"))
    with pytest.raises(DatabaseUnavailable, match="^cannot read run run-1: the database is not answering$") as raised:
        store.get("run-1")
    assert isinstance(raised.value, StoreUnavailable)  # what the controller waits out instead of failing the run
    assert raised.value.detail is not None and raised.value.detail.startswith("OperationalError: ")
    assert "refused" in raised.value.detail
    with pytest.raises(DatabaseUnavailable, match="cannot record run run-1: the database is not answering"):
        store.create(record(make_run("run-1")))
    with pytest.raises(DatabaseUnavailable, match="cannot update run run-1"):
        store.update(record(make_run("run-1")))
    with pytest.raises(DatabaseUnavailable, match="cannot read the latest run"):
        store.latest()
    with pytest.raises(DatabaseUnavailable, match="cannot read the active run"):
        store.active()
    with pytest.raises(DatabaseUnavailable, match="cannot read the last successful run"):
        store.last_succeeded()
    with pytest.raises(DatabaseUnavailable, match="cannot read the run history"):
        store.history()
    with pytest.raises(DatabaseUnavailable, match="cannot migrate the orchestrator's tables"):
        store.migrate()
