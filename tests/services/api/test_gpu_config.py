"""/api/system/gpu-config through the gateway to a planner, both on one in-memory bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from services.planner.main import make_planner, make_start
from services.planner.service import Planner
from services.planner.settings import PlannerSettings
from shared.bus.base import Delivery
from shared.bus.memory import MemoryBus
from shared.contracts import ConfigChanged, Inventory, InventorySource, ServiceName
from shared.errors import OperationFailed
from shared.service import ServiceContext, attach
from shared.subjects import CONFIG_CHANGED, inventory
from tests.builders import make_gpu
from tests.conftest import REPO
from tests.services.api.gateway import running_gateway
from tests.services.planner.fakes import FakeRepository

ISSUE_PUT = {
    "strategy": "manual",
    "assignments": [
        {"service": "ai-llm", "gpu_index": 0},
        {"service": "ai-yolo26", "gpu_index": 0},
        {"service": "ai-enrichment", "gpu_index": 1, "vram_budget_override": 3.5},
    ],
}
STRATEGIES = ("manual", "vram_based", "latency_optimized", "isolation_first", "balanced")


def reference_inventory(gpus: tuple[int, ...] = (0, 1)) -> Inventory:
    both = (
        make_gpu(0, name="NVIDIA RTX A5500", vram_total_mb=24564, sm_count=80, max_sm_clock_mhz=1665),
        make_gpu(1, name="NVIDIA RTX A400", vram_total_mb=4094, sm_count=6, max_sm_clock_mhz=1762),
    )
    return Inventory(host="box", source=InventorySource.SIMULATED, gpus=tuple(g for g in both if g.index in gpus))


@dataclass
class Stack:
    client: httpx.AsyncClient
    bus: MemoryBus
    planner: Planner
    repo: FakeRepository
    events: list[ConfigChanged]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    bus = MemoryBus("gpu-config-test")
    settings = PlannerSettings(nats_url="nats://memory", catalog_file=REPO / "config/services.yml")
    planner = make_planner(settings)
    repo = FakeRepository()
    planner.store = repo
    events: list[ConfigChanged] = []

    async def on_changed(msg: ConfigChanged, _: Delivery) -> None:
        events.append(msg)

    await bus.subscribe(CONFIG_CHANGED, ConfigChanged, on_changed)
    ctx = ServiceContext(ServiceName.PLANNER, settings)
    await attach(bus, ctx, make_start(settings, planner))

    async with running_gateway(bus) as (_, client):
        await bus.publish(inventory("box"), reference_inventory())
        await bus.settle()
        yield Stack(client, bus, planner, repo, events)
    await ctx.shutdown()


async def test_get_before_any_save_offers_default_plan_and_five_strategies(stack: Stack) -> None:
    r = await stack.client.get("/api/system/gpu-config")
    assert r.status_code == 200
    body = r.json()
    assert body["saved"] is False and body["strategy"] == "vram_based"
    assert [s["name"] for s in body["strategies"]] == list(STRATEGIES)
    assert all(s["description"] for s in body["strategies"])
    assert [s["name"] for s in body["strategies"] if s["recommended"]] == ["vram_based"]
    assert {a["service"] for a in body["assignments"]} == {
        "ai-llm", "ai-yolo26", "ai-florence", "ai-clip", "ai-enrichment"
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_every_strategy_previews_a_complete_plan_and_saves_nothing(stack: Stack, strategy: str) -> None:
    r = await stack.client.get("/api/system/gpu-config/preview", params={"strategy": strategy})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == strategy
    assert len(body["assignments"]) == 5
    assert all(a["gpu_indices"] for a in body["assignments"]), body["assignments"]
    assert [(g["index"], g["capacity_gb"]) for g in body["gpus"]] == [(0, 23.99), (1, 4.0)]
    assert sum(len(g["services"]) for g in body["gpus"]) == 5
    assert {c["change"] for c in body["changes"]} == {"added"}  # nothing saved yet
    assert stack.repo.config is None


async def test_issue_put_saves_and_warns_about_enrichment_budget(stack: Stack) -> None:
    r = await stack.client.put("/api/system/gpu-config", json=ISSUE_PUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert any("ai-enrichment budget (6.8 GB) exceeds GPU 1 (4 GB)" in w and "3.5 GB" in w for w in body["warnings"])
    saved = {a.service: a for a in stack.repo.config.assignments}  # type: ignore[union-attr]
    assert saved["ai-llm"].gpu_indices == (0,) and saved["ai-llm"].pinned
    assert saved["ai-enrichment"].gpu_indices == (1,)
    assert saved["ai-enrichment"].vram_budget_gb == 3.5
    assert saved["ai-florence"].placed_by == "auto" and not saved["ai-florence"].pinned

    await stack.bus.settle()
    assert [e.config.revision for e in stack.events] == [1]
    assert {c.service for c in stack.events[0].changes} == set(saved)

    r = await stack.client.get("/api/system/gpu-config")
    body = r.json()
    assert body["saved"] is True and body["strategy"] == "manual" and body["revision"] == 1


async def test_strategy_without_assignments_fills_them(stack: Stack) -> None:
    r = await stack.client.put("/api/system/gpu-config", json={"strategy": "balanced"})
    assert r.status_code == 200, r.text
    config = stack.repo.config
    assert config is not None and config.strategy == "balanced"
    assert all(a.gpu_indices and a.placed_by == "balanced" for a in config.assignments)


async def test_manual_without_assignments_freezes_the_saved_plan(stack: Stack) -> None:
    await stack.client.put("/api/system/gpu-config", json={"strategy": "latency_optimized"})
    before = {a.service: a.gpu_indices for a in stack.repo.config.assignments}  # type: ignore[union-attr]
    r = await stack.client.put("/api/system/gpu-config", json={"strategy": "manual"})
    assert r.status_code == 200
    after = stack.repo.config
    assert after is not None and after.revision == 2
    assert {a.service: a.gpu_indices for a in after.assignments} == before
    assert all(a.pinned for a in after.assignments)
    assert r.json()["changes"] == []


async def test_preview_reports_difference_from_saved(stack: Stack) -> None:
    await stack.client.put("/api/system/gpu-config", json={"strategy": "vram_based"})
    same = (await stack.client.get("/api/system/gpu-config/preview", params={"strategy": "vram_based"})).json()
    assert same["changes"] == []
    other = (await stack.client.get("/api/system/gpu-config/preview", params={"strategy": "isolation_first"})).json()
    moved = {c["service"]: (c["before"], c["after"]) for c in other["changes"]}
    assert moved, "isolation_first moves services off the LLM's GPU"
    assert all(before.startswith("box GPU") for before, _ in moved.values())


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"strategy": "manual", "assignments": [{"service": "ai-nope", "gpu_index": 0}]},
         ["body", "assignments", 0, "service"]),
        ({"strategy": "fastest"}, ["body", "strategy"]),
        ({"strategy": "manual", "assignments": [{"service": "ai-llm", "gpu_index": -1}]},
         ["body", "assignments", 0, "gpu_index"]),
        ({"strategy": "manual", "assignments": [{"service": "ai-llm", "gpu": 0}]},
         ["body", "assignments", 0, "gpu"]),
        ({"assignments": []}, ["body", "strategy"]),
        ({"strategy": "manual", "assignments": [{"service": "ai-llm", "vram_budget_override": 3}]},
         ["body", "assignments", 0, "vram_budget_override"]),
        ({"strategy": "manual", "assignments": [{"service": "ai-clip"}, {"service": "ai-clip"}]},
         ["body", "assignments", 1, "service"]),
    ],
    ids=["unknown-service", "unknown-strategy", "negative-index", "unknown-field", "missing-strategy",
         "budget-on-fixed-service", "duplicate"],
)
async def test_bad_bodies_are_422_naming_the_field(stack: Stack, body: dict[str, object], loc: list[object]) -> None:
    r = await stack.client.put("/api/system/gpu-config", json=body)
    assert r.status_code == 422, r.text
    assert any(err["loc"] == loc for err in r.json()["detail"]), r.json()
    assert stack.repo.config is None


async def test_unknown_strategy_in_preview_is_422_on_the_query(stack: Stack) -> None:
    r = await stack.client.get("/api/system/gpu-config/preview", params={"strategy": "fastest"})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["query", "strategy"] and "balanced" in detail["msg"]


async def test_gpu_not_in_inventory_is_allowed_with_a_warning(stack: Stack) -> None:
    body = {"strategy": "manual", "assignments": [{"service": "ai-clip", "gpu_index": 7}]}
    r = await stack.client.put("/api/system/gpu-config", json=body)
    assert r.status_code == 200
    assert any("GPU 7" in w and "not report" in w for w in r.json()["warnings"])
    saved = {a.service: a for a in stack.repo.config.assignments}  # type: ignore[union-attr]
    assert saved["ai-clip"].gpu_indices == (7,)


async def test_no_gpus_gives_a_plan_that_says_so(stack: Stack) -> None:
    await stack.bus.publish(inventory("box"), reference_inventory(gpus=()))
    await stack.bus.settle()
    r = await stack.client.get("/api/system/gpu-config/preview", params={"strategy": "balanced"})
    body = r.json()
    assert body["message"] == "No GPUs detected"
    assert body["warnings"][0].startswith("No GPUs detected")
    assert body["gpus"] == [] and body["feasible"] is False


async def test_failed_save_is_500_with_reason_and_changes_nothing(stack: Stack) -> None:
    await stack.client.put("/api/system/gpu-config", json={"strategy": "vram_based"})
    stack.repo.fail_with = OperationFailed("cannot write config/gpu-assignments.yml: Is a directory")
    r = await stack.client.put("/api/system/gpu-config", json={"strategy": "balanced"})
    assert r.status_code == 500
    assert "gpu-assignments.yml" in r.json()["detail"]
    assert stack.repo.config is not None and stack.repo.config.strategy == "vram_based"
    await stack.bus.settle()
    assert [e.config.revision for e in stack.events] == [1]


async def test_without_store_saving_is_503_and_preview_still_works(stack: Stack) -> None:
    stack.planner.store = None
    r = await stack.client.put("/api/system/gpu-config", json={"strategy": "balanced"})
    assert r.status_code == 503 and "GPUPLANE_DATABASE_URL" in r.json()["detail"]
    r = await stack.client.get("/api/system/gpu-config/preview", params={"strategy": "balanced"})
    assert r.status_code == 200


async def test_planner_down_is_503() -> None:
    async with running_gateway(MemoryBus("lonely")) as (_, client):
        r = await client.get("/api/system/gpu-config")
    assert r.status_code == 503 and "is that service running" in r.json()["detail"]
