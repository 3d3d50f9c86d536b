"""A plan in the contracts' words, and what changes between two configurations."""

from __future__ import annotations

import pytest

from services.planner.core import snapshot
from services.planner.core.model import Assignment, GpuLoad, mb
from services.planner.core.planning import make_plan
from services.planner.core.render import diff, gpu_load, preview, service_assignment, where
from services.planner.core.strategies import get_strategy
from shared.contracts import AssignmentDiff, GpuPlanLoad, ServiceAssignment
from tests.builders import make_inventory, make_reference_gpus, reference_catalog


def saved(
    service: str = "ai-llm",
    gpus: tuple[int, ...] = (0,),
    *,
    host: str | None = "box-a",
    budget_gb: float | None = None,
    enabled: bool = True,
    pinned: bool = False,
    placed_by: str = "vram_based",
) -> ServiceAssignment:
    return ServiceAssignment(
        service=service,
        model=f"{service}-model",
        host=host if gpus else None,
        gpu_indices=gpus,
        vram_estimate_gb=1.0,
        vram_budget_gb=budget_gb,
        pinned=pinned,
        placed_by=placed_by,
        enabled=enabled,
    )


LLM_0 = saved()
ENRICH_1 = saved("ai-enrichment", (1,), budget_gb=2.3)


@pytest.mark.parametrize(
    ("before", "after", "changes"),
    [
        pytest.param([LLM_0, ENRICH_1], [LLM_0, ENRICH_1], [], id="unchanged-left-out"),
        pytest.param([LLM_0], [saved(pinned=True, placed_by="manual")], [], id="same-place-now-pinned"),
        pytest.param([], [LLM_0], [("ai-llm", "added", None, "box-a GPU 0")], id="added"),
        pytest.param([LLM_0, ENRICH_1], [LLM_0], [("ai-enrichment", "removed", "box-a GPU 1, budget 2.3 GB", None)],
                     id="removed"),
        pytest.param([LLM_0], [saved(gpus=(1,))], [("ai-llm", "moved", "box-a GPU 0", "box-a GPU 1")], id="moved"),
        pytest.param([LLM_0], [saved(host="box-b")], [("ai-llm", "moved", "box-a GPU 0", "box-b GPU 0")],
                     id="moved-host"),
        pytest.param([LLM_0], [saved(gpus=(0, 1))], [("ai-llm", "moved", "box-a GPU 0", "box-a GPU 0,1")],
                     id="moved-onto-two"),
        pytest.param([LLM_0], [saved(gpus=())], [("ai-llm", "moved", "box-a GPU 0", "no GPU")], id="lost-its-gpu"),
        pytest.param([LLM_0], [saved(gpus=(), enabled=False)], [("ai-llm", "moved", "box-a GPU 0", "disabled")],
                     id="disabled"),
        pytest.param(
            [ENRICH_1],
            [saved("ai-enrichment", (1,), budget_gb=3.5)],
            [("ai-enrichment", "budget", "box-a GPU 1, budget 2.3 GB", "box-a GPU 1, budget 3.5 GB")],
            id="budget",
        ),
        pytest.param(
            [ENRICH_1],
            [saved("ai-enrichment", (1,))],
            [("ai-enrichment", "budget", "box-a GPU 1, budget 2.3 GB", "box-a GPU 1")],
            id="budget-lifted",
        ),
        pytest.param(
            [saved("a"), saved("b"), saved("c")],
            [saved("c", (1,)), saved("d"), saved("a")],
            [("c", "moved", "box-a GPU 0", "box-a GPU 1"), ("d", "added", None, "box-a GPU 0"),
             ("b", "removed", "box-a GPU 0", None)],
            id="new-order-then-removed",
        ),
    ],
)
def test_diff(
    before: list[ServiceAssignment], after: list[ServiceAssignment], changes: list[tuple[str, str, str, str]]
) -> None:
    assert diff(before, after) == tuple(
        AssignmentDiff(service=s, change=c, before=b, after=a) for s, c, b, a in changes
    )


@pytest.mark.parametrize(
    ("assignment", "text"),
    [
        pytest.param(None, None, id="not-configured"),
        pytest.param(saved(host=None, gpus=(0, 1)), "GPU 0,1", id="no-host"),
        pytest.param(saved(host="box-b", gpus=(1,), budget_gb=3.5), "box-b GPU 1, budget 3.5 GB", id="host-budget"),
        pytest.param(saved(budget_gb=2.0), "box-a GPU 0, budget 2 GB", id="whole-gb"),
        pytest.param(saved(gpus=()), "no GPU", id="unplaced"),
        pytest.param(saved(enabled=False), "disabled", id="disabled"),
    ],
)
def test_where(assignment: ServiceAssignment | None, text: str | None) -> None:
    assert where(assignment) == text


def test_service_assignment_speaks_gb() -> None:
    a = Assignment(
        service="ai-enrichment",
        model="Model Zoo (9 models)",
        host="box-a",
        gpus=(1,),
        gpu_uuids=("GPU-1",),
        vram_mb=mb(6.8),
        budget_mb=3584,
        override_mb=None,
        pinned=False,
        placed_by="vram_based",
    )

    assert service_assignment(a) == ServiceAssignment(
        service="ai-enrichment",
        model="Model Zoo (9 models)",
        host="box-a",
        gpu_indices=(1,),
        gpu_uuids=("GPU-1",),
        vram_estimate_gb=6.8,
        vram_budget_gb=3.5,
        vram_budget_override=None,
        pinned=False,
        placed_by="vram_based",
    )


def test_service_assignment_of_a_disabled_service_keeps_its_override() -> None:
    a = Assignment("ai-yolo26", "YOLO26", None, (), (), mb(0.65), None, mb(0.75), False, "disabled", enabled=False)

    rendered = service_assignment(a)

    assert (rendered.vram_estimate_gb, rendered.vram_budget_override, rendered.enabled) == (0.65, 0.75, False)
    assert (rendered.host, rendered.gpu_indices, rendered.vram_budget_gb) == (None, (), None)


def test_gpu_load_speaks_gb() -> None:
    load = GpuLoad("box-a", 1, "NVIDIA RTX A400", 4094, 5479, ("ai-enrichment", "ai-clip"))

    assert gpu_load(load) == GpuPlanLoad(
        host="box-a",
        index=1,
        name="NVIDIA RTX A400",
        capacity_gb=4.0,
        planned_gb=5.35,
        services=("ai-enrichment", "ai-clip"),
        overcommitted=True,
    )


def test_preview_of_a_plan_against_what_is_saved() -> None:
    problem = snapshot.make_problem([make_inventory(make_reference_gpus())], reference_catalog())
    plan = make_plan(problem, get_strategy("vram_based"))
    unchanged = preview(plan, [service_assignment(a) for a in plan.assignments])

    moved = preview(plan, [saved("ai-llm", (1,)), saved("ai-gone", (0,))])

    assert unchanged.changes == ()
    assert unchanged.strategy == "vram_based"
    assert unchanged.feasible and unchanged.message is None
    assert unchanged.warnings == plan.warnings
    assert [g.planned_gb for g in unchanged.gpus] == [round(load.planned_mb / 1024, 2) for load in plan.loads]
    assert [(c.service, c.change) for c in moved.changes] == [
        ("ai-llm", "moved"), ("ai-yolo26", "added"), ("ai-florence", "added"), ("ai-clip", "added"),
        ("ai-enrichment", "added"), ("ai-gone", "removed")]
