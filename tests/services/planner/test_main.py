"""The planner service for real: nats-server, PostgreSQL and the YAML mirror on disk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml

from services.planner.main import make_planner, make_start
from services.planner.mirror import mirror_matches
from services.planner.settings import PlannerSettings
from services.planner.store import ConfigStore
from shared.bus.nats import NatsBus, connect_once
from shared.contracts import (
    AssignmentRequest,
    ConfigGetRequest,
    ConfigPutRequest,
    ConfigReply,
    ConfigRestoreRequest,
    ConfigSaved,
    Inventory,
    InventorySource,
    ServiceName,
)
from shared.database import make_engine
from shared.errors import NoResponders, RemoteError
from shared.service import ServiceContext, serve
from shared.subjects import PLANNER_CONFIG_GET, PLANNER_CONFIG_PUT, PLANNER_CONFIG_RESTORE, inventory
from tests.builders import make_gpu
from tests.conftest import REPO
from tests.realdeps import NatsServer, Postgres

pytestmark = pytest.mark.integration

ISSUE_PUT = ConfigPutRequest(
    strategy="manual",
    assignments=(
        AssignmentRequest(service="ai-llm", gpu_index=0),
        AssignmentRequest(service="ai-yolo26", gpu_index=0),
        AssignmentRequest(service="ai-enrichment", gpu_index=1, vram_budget_override=3.5),
    ),
)


def reference() -> Inventory:
    return Inventory(
        host="box",
        source=InventorySource.SIMULATED,
        gpus=(
            make_gpu(0, name="NVIDIA RTX A5500", vram_total_mb=24564),
            make_gpu(1, name="NVIDIA RTX A400", vram_total_mb=4094, sm_count=6),
        ),
    )


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[NatsBus]:
    bus = await connect_once(nats_server.url, service="test", timeout_s=5)
    await bus.publish(inventory("box"), reference())
    yield bus
    await bus.drain()


Start = Callable[[], tuple[ServiceContext, asyncio.Task[None]]]


@pytest.fixture
async def planner(
    nats_server: NatsServer, postgres: Postgres, tmp_path: Path
) -> AsyncIterator[tuple[Start, PlannerSettings]]:
    """Runs the planner service in this event loop; each ``start()`` is a fresh instance."""
    settings = PlannerSettings(
        nats_url=nats_server.url,
        database_url=postgres.fresh_database(),
        catalog_file=REPO / "config/services.yml",
        config_dir=tmp_path / "config",
        database_retry_s=0.2,
    )
    running: list[tuple[ServiceContext, asyncio.Task[None]]] = []

    def start() -> tuple[ServiceContext, asyncio.Task[None]]:
        ctx = ServiceContext(ServiceName.PLANNER, settings)
        task = asyncio.create_task(
            serve(ServiceName.PLANNER, settings, make_start(settings, make_planner(settings)),
                  install_signal_handlers=False, ctx=ctx)
        )
        running.append((ctx, task))
        return ctx, task

    yield start, settings
    for ctx, task in running:
        ctx.stopping.set()
        if not task.done():
            await asyncio.wait_for(task, 10)


async def request_until_ready(bus: NatsBus, subject: str, msg: object, reply: type, timeout_s: float = 15) -> object:
    """Until it has subscribed nobody answers; until its store is open it answers 'unavailable'."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await bus.request(subject, msg, reply)  # type: ignore[arg-type]
        except NoResponders:
            if asyncio.get_running_loop().time() > deadline:
                raise
        except RemoteError as exc:
            if exc.code != "unavailable" or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.1)


async def test_save_survives_restart_and_yaml_matches_database(
    planner: tuple[Start, PlannerSettings], client: NatsBus
) -> None:
    start, settings = planner
    first, first_task = start()
    saved = await request_until_ready(client, PLANNER_CONFIG_PUT, ISSUE_PUT, ConfigSaved)
    assert isinstance(saved, ConfigSaved)
    assert any("3.5 GB" in w and "ai-enrichment budget (6.8 GB)" in w for w in saved.warnings)

    engine = make_engine(settings.database_url or "")
    store = ConfigStore(engine, settings.mirror_path)
    in_db = store.load()
    assert in_db is not None and in_db.revision == 1
    on_disk = yaml.safe_load(settings.mirror_path.read_text())
    assert mirror_matches(in_db, on_disk)
    assert on_disk["assignments"]["ai-enrichment"]["vram_budget"] == 3.5
    assert settings.mirror_path.read_text().startswith("#") and "do not edit" in settings.mirror_path.read_text()

    # Stop this planner, start another: the configuration is the database's, not the process's.
    first.stopping.set()
    await asyncio.wait_for(first_task, 10)
    start()
    reply = await request_until_ready(client, PLANNER_CONFIG_GET, ConfigGetRequest(), ConfigReply)
    assert isinstance(reply, ConfigReply)
    assert reply.config.saved and reply.config.revision == 1 and reply.config.strategy == "manual"
    assert {a.service: a.gpu_indices for a in reply.config.assignments} == {
        a.service: a.gpu_indices for a in in_db.assignments
    }
    engine.dispose()


async def test_mirror_write_failure_leaves_database_unchanged(
    planner: tuple[Start, PlannerSettings], client: NatsBus
) -> None:
    start, settings = planner
    start()
    await request_until_ready(client, PLANNER_CONFIG_PUT, ConfigPutRequest(strategy="vram_based"), ConfigSaved)
    engine = make_engine(settings.database_url or "")
    store = ConfigStore(engine, settings.mirror_path)
    before = store.load()

    settings.mirror_path.unlink()
    settings.mirror_path.mkdir()  # a folder where the file goes: unwritable, even for root
    with pytest.raises(RemoteError) as failed:
        await client.request(PLANNER_CONFIG_PUT, ConfigPutRequest(strategy="balanced"), ConfigSaved)
    assert failed.value.code == "internal"
    assert "gpu-assignments.yml" in failed.value.remote_message

    after = store.load()
    assert after == before and after is not None and after.strategy == "vram_based"
    assert len(store.history()) == 1
    engine.dispose()


async def test_restore_saves_an_earlier_revision_again_and_mirrors_it(
    planner: tuple[Start, PlannerSettings], client: NatsBus
) -> None:
    start, settings = planner
    start()
    first = await request_until_ready(client, PLANNER_CONFIG_PUT, ISSUE_PUT, ConfigSaved)
    assert isinstance(first, ConfigSaved)
    second = await client.request(PLANNER_CONFIG_PUT, ConfigPutRequest(strategy="isolation_first"), ConfigSaved)
    assert second.config.revision == 2

    restored = await client.request(PLANNER_CONFIG_RESTORE, ConfigRestoreRequest(revision=1), ConfigSaved)

    assert restored.config.revision == 3 and restored.config.strategy == "manual"
    assert restored.config.assignments == first.config.assignments
    assert {c.service for c in restored.changes} == {c.service for c in second.changes}
    on_disk = yaml.safe_load(settings.mirror_path.read_text())
    assert on_disk["revision"] == 3
    with pytest.raises(RemoteError) as missing:
        await client.request(PLANNER_CONFIG_RESTORE, ConfigRestoreRequest(revision=99), ConfigSaved)
    assert missing.value.code == "bad_request" and missing.value.field == "revision"
