"""The service shell (``main.py``) on the in-memory bus: the work queue, start-up and refused applies.

The engine, the run store and the planner are the fakes of ``fakes.py``, or the real ``ComposeEngine``
over fake CLIs where the shell builds it from settings; ``test_main.py`` runs the real parts.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.orchestrator.main import BusRunEvents, make_engine_for, make_start
from services.orchestrator.ports import ContainerEngine, RunRecord, StoreUnavailable
from services.orchestrator.service import Options, Orchestrator
from services.orchestrator.settings import OrchestratorSettings
from shared.bus.base import Bus, Delivery, Handler, M
from shared.bus.memory import MemoryBus, _Consumer
from shared.contracts import (
    ApplyRequest,
    ApplyRun,
    ApplyWork,
    Message,
    OrchestratorStatus,
    RunAccepted,
    RunState,
    ServiceName,
    StatusRequest,
)
from shared.errors import RemoteError
from shared.service import ServiceContext, attach
from shared.subjects import ORCHESTRATOR_APPLY, ORCHESTRATOR_STATUS, ORCHESTRATOR_WORK
from tests.services.orchestrator.fakes import FakeClock, FakeEngine, FakePlanner, FakeRunStore, assignment
from tests.services.orchestrator.test_engine import fake_tool

PROJECT = {"ai-llm": (), "ai-enrichment": (), "ai-api": ("ai-enrichment",)}
BASE = (assignment("ai-llm", 0), assignment("ai-enrichment", 0))
MOVED = (assignment("ai-llm", 0), assignment("ai-enrichment", 1))


class RecordingBus(MemoryBus):
    """The in-memory bus, counting the work handler's calls and what it raised (a raise is a nak)."""

    def __init__(self) -> None:
        super().__init__("orchestrator-test")
        self.work_calls = 0
        self.work_raised: list[Exception] = []

    async def consume(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        durable: str,
        ack_wait_s: float = 30.0,
        max_deliver: int = 5,
        retry_delay_s: float = 5.0,
    ) -> _Consumer:
        async def counted(message: M, delivery: Delivery) -> Message | None:
            self.work_calls += 1
            try:
                return await handler(message, delivery)
            except Exception as exc:
                self.work_raised.append(exc)
                raise

        return await super().consume(
            subject,
            message_type,
            counted,
            durable=durable,
            ack_wait_s=ack_wait_s,
            max_deliver=max_deliver,
            retry_delay_s=retry_delay_s,
        )


@dataclass
class World:
    tmp_path: Path
    clock: FakeClock = field(default_factory=FakeClock)
    store: FakeRunStore = field(default_factory=FakeRunStore)
    planner: FakePlanner = field(default_factory=FakePlanner)
    bus: RecordingBus = field(default_factory=RecordingBus)
    settings: OrchestratorSettings = field(
        default_factory=lambda: OrchestratorSettings(
            nats_url="nats://memory", converge_on_start=False, database_retry_s=0.01
        )
    )
    engine: ContainerEngine | None = None
    ctx: ServiceContext | None = None

    def __post_init__(self) -> None:
        if self.engine is None:
            fake = FakeEngine(self.override, PROJECT, self.clock)
            fake.start_all()
            self.engine = fake

    @property
    def override(self) -> Path:
        return self.tmp_path / "config" / "docker-compose.gpu-override.yml"

    @property
    def fake_engine(self) -> FakeEngine:
        assert isinstance(self.engine, FakeEngine)
        return self.engine

    def build(self, _: OrchestratorSettings, bus: Bus) -> Orchestrator:
        ids = itertools.count(len(self.store.records) + 1)
        assert self.engine is not None
        orchestrator = Orchestrator(
            self.engine,
            self.planner,
            BusRunEvents(bus),
            Options(override_path=self.override, health_grace_s=1, health_poll_s=0.5),
            clock=self.clock,
            new_id=lambda: f"run{next(ids)}",
            sleep=self.clock.sleep,
        )
        orchestrator.store = self.store
        return orchestrator

    async def apply(self) -> ApplyRun:
        return (await self.bus.request(ORCHESTRATOR_APPLY, ApplyRequest(), RunAccepted)).run

    async def status(self) -> OrchestratorStatus:
        return await self.bus.request(ORCHESTRATOR_STATUS, StatusRequest(), OrchestratorStatus)

    async def ended(self, run_id: str) -> ApplyRun:
        for _ in range(500):
            record = self.store.records.get(run_id)
            if record is not None and not record.run.state.active:
                await asyncio.sleep(0.02)  # lets the work handler return, and the item be settled
                return record.run
            await asyncio.sleep(0.01)
        raise AssertionError(f"run {run_id} did not end: {self.store.records.get(run_id)}")


@asynccontextmanager
async def running(world: World) -> AsyncIterator[World]:
    world.ctx = ServiceContext(ServiceName.ORCHESTRATOR, world.settings)
    await attach(world.bus, world.ctx, make_start(world.settings, world.build))
    try:
        yield world
    finally:
        assert world.ctx.crashed is None, world.ctx.crashed
        await world.ctx.shutdown()


async def left_over(world: World, *, queued_again: bool = True) -> str:
    """A run a previous orchestrator left running; its work item still queued unless ``queued_again`` is off
    (as after the naks of the old handler, once JetStream gave up on it)."""
    run = await world.build(world.settings, world.bus).request_apply()
    record = world.store.records[run.id]
    running_run = record.run.model_copy(update={"state": RunState.RUNNING})
    world.store.records[run.id] = RunRecord(running_run, record.target_override, record.previous_override)
    if queued_again:
        await world.bus.publish(ORCHESTRATOR_WORK, ApplyWork(run_id=run.id))
    return run.id


def settled_once(world: World, deliveries: int = 1) -> None:
    assert world.bus.pending_work() == 0
    assert world.bus.work_raised == []
    assert world.bus.work_calls == deliveries


# --------------------------------------------------------------------------- the work queue


async def test_a_compose_command_raising_ends_the_run_failed_and_settles_its_item_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.planner.save(*BASE)
    world.fake_engine.crashes = [RuntimeError("podman-compose went away")] * 10
    async with running(world):
        run = await world.apply()
        ended = await world.ended(run.id)

        assert ended.state is RunState.FAILED
        assert ended.error == (
            "RuntimeError: podman-compose went away; rollback failed: RuntimeError: podman-compose went away"
        )
        settled_once(world)
        assert (await world.status()).run == ended  # the end was announced and is what the status shows

        world.fake_engine.crashes = []
        second = await world.apply()  # not a 409: no run is left active
        assert (await world.ended(second.id)).state is RunState.SUCCEEDED
        settled_once(world, deliveries=2)


async def test_a_run_store_that_stops_answering_is_waited_out_not_nakd(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.planner.save(*BASE)
    # The first two updates work (running, the services listed); the next two find the database gone.
    unavailable = StoreUnavailable("cannot update run: OperationalError: connection refused")
    world.store.failures["update"] = [None, None, unavailable, unavailable]
    async with running(world):
        run = await world.apply()
        ended = await world.ended(run.id)

    assert ended.state is RunState.SUCCEEDED
    assert any("the run store stopped answering during this run; finishing it" in n for n in ended.notes)
    assert world.store.failures["update"] == []  # both refusals were met, and waited out
    settled_once(world)


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        pytest.param(
            "recreate",
            "RuntimeError: boom; rollback failed: RuntimeError: boom",
            id="its-execution-raises",
        ),
        pytest.param(
            "get",
            "the orchestrator could not settle this run after a restart: RuntimeError: boom",
            id="reading-it-raises",
        ),
    ],
)
@pytest.mark.parametrize("queued_again", [True, False], ids=["item-queued", "item-gone"])
async def test_a_left_over_run_that_breaks_never_stops_the_service_starting(
    tmp_path: Path, fault: str, error: str, queued_again: bool
) -> None:
    world = World(tmp_path)
    world.planner.save(*BASE)
    run_id = await left_over(world, queued_again=queued_again)
    if fault == "recreate":
        world.fake_engine.crashes = [RuntimeError("boom")] * 10
    else:
        world.store.failures["get"] = [RuntimeError("boom")]

    async with running(world):
        ended = await world.ended(run_id)
        assert ended.state is RunState.FAILED and ended.error == error
        world.fake_engine.crashes = []

        # It consumes: the left-over item (if any) finds its run ended, and a new apply is carried out.
        world.planner.save(*MOVED)
        run = await world.apply()
        assert (await world.ended(run.id)).state is RunState.SUCCEEDED
        settled_once(world, deliveries=2 if queued_again else 1)


async def test_a_convergence_that_breaks_at_start_up_leaves_the_service_running(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.settings = world.settings.model_copy(update={"converge_on_start": True})
    world.planner.save(*BASE)
    world.planner.failures = [RuntimeError("a bug in the planner's client")] * 100
    async with running(world):
        await asyncio.sleep(0.1)
        assert world.ctx is not None and world.ctx.crashed is None
        world.planner.failures = []
        run = await world.apply()
        assert (await world.ended(run.id)).state is RunState.SUCCEEDED


async def test_start_up_waits_for_the_run_store_before_settling_a_left_over_run(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.planner.save(*BASE)
    run_id = await left_over(world, queued_again=False)
    world.store.failures["active"] = [StoreUnavailable("cannot read the active run: the database is not answering")] * 3

    async with running(world):
        ended = await world.ended(run_id)

    assert ended.state is RunState.SUCCEEDED
    assert any("the orchestrator restarted during this run; finishing it" in n for n in ended.notes)
    assert world.store.failures["active"] == []


# --------------------------------------------------------------------------- names from files and settings


def fake_clis(tmp_path: Path) -> tuple[Path, Path]:
    """podman-compose 1.6 and a podman with no containers, each noting its calls in the file returned second."""
    calls = tmp_path / "calls"
    tool = fake_tool(
        tmp_path / "bin",
        "fake-engine",
        f"""echo "$*" >> {calls}
case "$1" in
  version) echo "podman-compose version 1.6.0"; echo "podman version 4.3.1" ;;
  ps) ;;
  *) echo "unexpected: $*" >&2; exit 99 ;;
esac""",
    )
    return tool, calls


REFUSALS: list[Any] = [
    pytest.param(
        {"compose_project": "ai*star"},
        lambda files: "GPUPLANE_COMPOSE_PROJECT 'ai*star' is not a valid name: use a letter or digit",
        id="bad-compose-project-setting",
    ),
    pytest.param(
        {"services": {"ai-llm": {"image": "x"}, "ai*star": {"image": "y"}}},
        lambda files: f"the compose file {files[0]}: service 'ai*star' is not a valid name: use a letter or digit",
        id="bad-service-in-the-compose-file",
    ),
    pytest.param(
        {"folder": "___"},
        lambda files: "the project name '___' (from the first compose file's folder) has no letter or digit left",
        id="no-usable-derived-project-name",
    ),
]


@pytest.mark.parametrize(("case", "said"), REFUSALS)
async def test_a_bad_name_in_settings_or_files_refuses_the_apply_naming_it_and_runs_no_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: dict[str, Any], said: Callable[[list[Path]], str]
) -> None:
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    tool, calls = fake_clis(tmp_path)
    compose_file = tmp_path / case.get("folder", "stack") / "compose.yml"
    compose_file.parent.mkdir()
    services = case.get("services", {"ai-llm": {"image": "x"}})
    compose_file.write_text(yaml.safe_dump({"services": services}))
    settings = OrchestratorSettings(
        nats_url="nats://memory",
        converge_on_start=False,
        compose_files=str(compose_file),
        compose_cmd=str(tool),
        container_cmd=str(tool),
        config_dir=tmp_path / "config",
        compose_project=case.get("compose_project"),
    )
    engine = make_engine_for(settings)  # the service starts whatever the names
    world = World(tmp_path, settings=settings, engine=engine)
    world.planner.save(*BASE)
    expected = said([compose_file])

    async with running(world):
        with pytest.raises(RemoteError) as refused:
            await world.apply()
        status = await world.status()

    assert refused.value.code == "unavailable" and expected in refused.value.remote_message
    assert status.run is not None and status.run.state is RunState.FAILED
    assert status.run.error is not None and status.run.error.startswith("nothing was changed: ")
    assert expected in status.run.error
    assert any(expected in p for p in status.problems)
    assert not re.search(r"^(up|-p)", calls.read_text() if calls.exists() else "", re.MULTILINE)
    assert not world.override.exists()
