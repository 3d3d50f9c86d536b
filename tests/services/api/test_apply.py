"""POST /apply, POST /rollback and GET /status through the gateway to the orchestrator service, on one
in-memory bus (the orchestrator's engine and run store are fakes; the real ones have their own tests)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.orchestrator.main import BusRunEvents, make_start
from services.orchestrator.service import Options, Orchestrator
from services.orchestrator.settings import OrchestratorSettings
from shared.bus.base import Bus
from shared.bus.memory import MemoryBus
from shared.contracts import ServiceName
from shared.service import ServiceContext, attach
from tests.builders import make_gpu
from tests.services.api.gateway import running_gateway
from tests.services.orchestrator.fakes import FakeClock, FakeEngine, FakePlanner, FakeRunStore, assignment

PROJECT = {"ai-llm": (), "ai-enrichment": (), "ai-api": ("ai-enrichment",)}


@dataclass
class Stack:
    client: httpx.AsyncClient
    engine: FakeEngine
    planner: FakePlanner
    store: FakeRunStore


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    bus = MemoryBus("apply-test")
    settings = OrchestratorSettings(nats_url="nats://memory", converge_on_start=False)
    clock = FakeClock()
    engine = FakeEngine(tmp_path / "override.yml", PROJECT, clock)
    engine.start_all()
    planner, store = FakePlanner(), FakeRunStore()
    ids = itertools.count(1)

    def build(_: OrchestratorSettings, bus: Bus) -> Orchestrator:
        orchestrator = Orchestrator(
            engine,
            planner,
            BusRunEvents(bus),
            Options(override_path=tmp_path / "override.yml", health_grace_s=1, health_poll_s=0.5),
            clock=clock,
            new_id=lambda: f"run{next(ids)}",
            sleep=clock.sleep,
        )
        orchestrator.store = store
        return orchestrator

    ctx = ServiceContext(ServiceName.ORCHESTRATOR, settings)
    await attach(bus, ctx, make_start(settings, build))
    async with running_gateway(bus) as (_, client):
        yield Stack(client, engine, planner, store)
    await ctx.shutdown()


async def finished(client: httpx.AsyncClient) -> dict[str, object]:
    for _ in range(200):
        body = (await client.get("/api/system/gpu-config/status")).json()
        if body["run"] and body["run"]["state"] not in ("queued", "running", "rolling_back"):
            return dict(body)
        await asyncio.sleep(0.02)
    raise AssertionError("the run did not finish")


async def test_apply_answers_202_with_a_run_id_and_the_status_follows_it(stack: Stack) -> None:
    stack.planner.save(assignment("ai-llm", 0), assignment("ai-enrichment", 1))

    r = await stack.client.post("/api/system/gpu-config/apply")

    assert r.status_code == 202
    body = r.json()
    assert body["run_id"] == "run1" and body["kind"] == "apply" and body["revision"] == 1
    assert body["status_url"] == "/api/system/gpu-config/status"
    status = await finished(stack.client)
    run = status["run"]
    assert isinstance(run, dict) and run["state"] == "succeeded"
    assert {s["service"]: s["state"] for s in run["services"]} == {"ai-llm": "healthy", "ai-enrichment": "healthy"}
    assert all(s["started_at"] and s["finished_at"] for s in run["services"])
    assert {t["service"] for t in run["touched"]} == {"ai-llm", "ai-enrichment", "ai-api"}
    assert status["applied_revision"] == 1 and status["drift"] == [] and status["problems"] == []
    assert status["compose"] == "fake-compose, project proj"


async def test_a_second_apply_while_one_runs_is_409_with_its_run_id(stack: Stack) -> None:
    stack.planner.save(assignment("ai-llm", 0))
    stack.engine.hold = asyncio.Event()  # the first run stays in its recreate
    first = await stack.client.post("/api/system/gpu-config/apply")
    assert first.status_code == 202

    r = await stack.client.post("/api/system/gpu-config/apply")

    assert r.status_code == 409
    assert r.json() == {"detail": "run run1 is still in progress; wait for it to finish", "run_id": "run1"}
    stack.engine.hold.set()
    assert (await finished(stack.client))["run"]["state"] == "succeeded"  # type: ignore[index]


async def test_apply_with_the_compose_command_missing_is_503_naming_it_and_recorded(stack: Stack) -> None:
    stack.planner.save(assignment("ai-llm", 0))
    stack.engine.problems_found = ["podman-compose not found (GPUPLANE_COMPOSE_CMD=podman-compose)"]

    r = await stack.client.post("/api/system/gpu-config/apply")

    assert r.status_code == 503
    assert r.json()["detail"] == "cannot apply: podman-compose not found (GPUPLANE_COMPOSE_CMD=podman-compose)"
    status = (await stack.client.get("/api/system/gpu-config/status")).json()
    assert status["run"]["state"] == "failed" and "nothing was changed" in status["run"]["error"]
    assert status["problems"] == ["podman-compose not found (GPUPLANE_COMPOSE_CMD=podman-compose)"]
    assert stack.engine.recreated == []


async def test_nothing_saved_or_nothing_to_roll_back_is_409(stack: Stack) -> None:
    r = await stack.client.post("/api/system/gpu-config/apply")
    assert r.status_code == 409 and "PUT /api/system/gpu-config" in r.json()["detail"]
    r = await stack.client.post("/api/system/gpu-config/rollback")
    assert r.status_code == 409 and r.json()["detail"].startswith("nothing to roll back")


async def test_rollback_answers_202_and_restores_the_previous_configuration(stack: Stack) -> None:
    stack.planner.save(assignment("ai-llm", 0), assignment("ai-enrichment", 0))
    await stack.client.post("/api/system/gpu-config/apply")
    await finished(stack.client)
    stack.planner.save(assignment("ai-llm", 0), assignment("ai-enrichment", 1))
    await stack.client.post("/api/system/gpu-config/apply")
    await finished(stack.client)

    r = await stack.client.post("/api/system/gpu-config/rollback")

    assert r.status_code == 202 and r.json()["kind"] == "rollback" and r.json()["revision"] == 1
    run = (await finished(stack.client))["run"]
    assert isinstance(run, dict) and run["state"] == "succeeded" and run["rollback_of"] == "run2"
    assert stack.engine.containers_now["ai-enrichment"].device_ids == (make_gpu(0).uuid,)
    assert stack.planner.restored == [1]

