"""make_plan around any strategy: pins, budgets, the wording of warnings, and the odd fleets."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.planner.core import snapshot
from services.planner.core.model import Assignment, Pin, Plan, Precision, Role, ServiceSpec, mb
from services.planner.core.planning import make_plan
from services.planner.core.strategies import STRATEGY_NAMES, get_strategy
from shared.contracts import Inventory
from tests.builders import (
    make_gpu,
    make_inventory,
    make_reference_gpus,
    make_rtx3090,
    make_service,
    reference_catalog,
)

CATALOG = reference_catalog()
LLM, YOLO, FLORENCE, CLIP, ENRICH = "ai-llm", "ai-yolo26", "ai-florence", "ai-clip", "ai-enrichment"
REFERENCE = (make_inventory(make_reference_gpus()),)
TWO_HOSTS = (
    make_inventory(make_reference_gpus(), host="box-a"),
    make_inventory((make_rtx3090(0, nvlink_peers=(1,)), make_rtx3090(1, nvlink_peers=(0,))), host="box-b"),
)
UNHEALTHY_0 = (
    make_inventory((make_gpu(0, healthy=False, health_reason="XID 79: GPU has fallen off the bus"), make_gpu(1))),
)
TURING_AND_AMPERE = (
    make_inventory(
        (
            make_gpu(0, name="Tesla T4", vram_total_mb=15360, compute_capability="7.5", sm_count=40,
                     max_sm_clock_mhz=1590),
            make_gpu(1, vram_total_mb=8192),
        )
    ),
)
BF16 = make_service("ai-bf16", 2, precision=Precision.BF16)
TP_LLM = make_service("ai-vllm", 40, gpus=2, role=Role.LLM, critical=True, short_name="Llama-70B")


def plan_for(
    fleet: tuple[Inventory, ...],
    pins: Sequence[Pin] = (),
    services: Sequence[ServiceSpec] = CATALOG,
    strategy: str = "vram_based",
    headroom_gb: float = 0.5,
) -> Plan:
    return make_plan(snapshot.make_problem(fleet, services, pins, headroom_gb), get_strategy(strategy))


def by_name(plan: Plan) -> dict[str, Assignment]:
    return {a.service: a for a in plan.assignments}


def pin_all(gpu: int, *, but: dict[str, int] | None = None, host: str = "box-a") -> tuple[Pin, ...]:
    """Every catalog service on ``gpu`` except those ``but`` sends elsewhere."""
    elsewhere = but or {}
    return tuple(Pin(s.name, (elsewhere.get(s.name, gpu),), host) for s in CATALOG)


# --- warnings, word for word -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fleet", "pins", "services", "expected"),
    [
        pytest.param(
            REFERENCE,
            (Pin(LLM, (1,), "box-a"),),
            CATALOG,
            ("Nemotron-30B requires ~21.7 GB, GPU 1 only has 4 GB",),
            id="llm-pinned-to-the-4gb-card",
        ),
        pytest.param(
            REFERENCE,
            (Pin(LLM, (1,), "box-a"), Pin(CLIP, (1,), "box-a")),
            CATALOG,
            (
                "Nemotron-30B requires ~21.7 GB, GPU 1 only has 4 GB",
                "Combined VRAM (~22.9 GB) exceeds GPU 1 capacity (4 GB): ai-llm 21.7 GB, ai-clip 1.2 GB",
            ),
            id="combined-overflow",
        ),
        pytest.param(
            REFERENCE,
            pin_all(0, but={ENRICH: 1}),
            CATALOG,
            (
                "ai-enrichment budget (6.8 GB) exceeds GPU 1 (4 GB). Auto-adjusted to 3.5 GB; some of its models may "
                "not load.",
                "Combined VRAM (~25.1 GB) exceeds GPU 0 capacity (24 GB): ai-llm 21.7 GB, ai-yolo26 0.65 GB, "
                "ai-florence 1.5 GB, ai-clip 1.2 GB",
            ),
            id="enrichment-alone-on-4gb-gets-3.5",
        ),
        pytest.param(
            REFERENCE,
            (Pin(ENRICH, (1,), "box-a", budget_mb=mb(3)),),
            CATALOG,
            (
                "ai-enrichment budget (6.8 GB) exceeds GPU 1 (4 GB); set to 3 GB as you asked. Some of its models "
                "may not load.",
                "Combined VRAM (~4.2 GB) exceeds GPU 1 capacity (4 GB): ai-clip 1.2 GB, ai-enrichment 3 GB",
            ),
            id="override-is-kept-and-named",
        ),
        pytest.param(
            REFERENCE,
            (*(p for p in pin_all(0) if p.service != ENRICH), Pin(ENRICH, (1,), "box-a", budget_mb=mb(1))),
            CATALOG,
            (
                "ai-enrichment budget (6.8 GB) exceeds GPU 1 (4 GB); set to 1 GB as you asked. Some of its models "
                "may not load.",
                "ai-enrichment budget of 1 GB is below its minimum (2 GB); some of its models will not load.",
                "Combined VRAM (~25.1 GB) exceeds GPU 0 capacity (24 GB)",
            ),
            id="override-below-minimum",
        ),
        pytest.param(
            REFERENCE,
            (Pin(CLIP, (5,), "box-a"),),
            CATALOG,
            (
                "ai-clip is set to GPU 5, which the detector does not report (it may be gone for now); kept as you "
                "set it.",
                "ai-enrichment budget (6.8 GB) exceeds GPU 1 (4 GB). Auto-adjusted to 3.5 GB",
            ),
            id="unknown-gpu-index",
        ),
        pytest.param(
            UNHEALTHY_0,
            (Pin(CLIP, (0,), "box-a"),),
            (make_service(CLIP, 1.2), make_service("ai-other", 2)),
            ("ai-clip is set to GPU 0, which is unhealthy (XID 79: GPU has fallen off the bus).",),
            id="pinned-to-unhealthy",
        ),
        pytest.param(
            (make_inventory((make_rtx3090(0, nvlink_peers=(1,)), make_rtx3090(1, nvlink_peers=(0,)))),),
            (Pin("ai-vllm", (0,), "box-a"),),
            (TP_LLM,),
            ("ai-vllm needs 2 GPU(s) but is set to 1.",),
            id="pinned-to-too-few-gpus",
        ),
        pytest.param(
            (make_inventory((make_gpu(0, vram_total_mb=4094), make_gpu(1, vram_total_mb=4094))),),
            (),
            (TP_LLM,),
            (
                "Llama-70B requires ~40 GB (20 GB per GPU), GPU 0 only has 4 GB",
                "ai-vllm splits its model over GPU 0, GPU 1, which are not all joined by NVLink",
            ),
            id="multi-gpu-too-big",
        ),
        pytest.param(
            TWO_HOSTS,
            (
                *(Pin(s.name, (0,), "box-b") for s in CATALOG if s.name != ENRICH),
                Pin(ENRICH, (1,), "box-a"),
                Pin("ai-extra", (0,), "box-z"),
            ),
            (*CATALOG, make_service("ai-extra", 1)),
            (
                "ai-enrichment budget (6.8 GB) exceeds GPU box-a:1 (4 GB). Auto-adjusted to 3.5 GB",
                "ai-extra is set to GPU box-z:0, which the detector does not report",
                "Combined VRAM (~25.1 GB) exceeds GPU box-b:0 capacity (24 GB)",
            ),
            id="two-hosts-name-the-host",
        ),
        pytest.param(
            (make_inventory((make_gpu(0, healthy=False), make_gpu(1, healthy=False))),),
            (),
            (make_service(CLIP, 1.2),),
            ("ai-clip could not be placed: no healthy GPU.",),
            id="no-healthy-gpu",
        ),
    ],
)
def test_warnings_are_plain_sentences(
    fleet: tuple[Inventory, ...], pins: tuple[Pin, ...], services: tuple[ServiceSpec, ...], expected: tuple[str, ...]
) -> None:
    plan = plan_for(fleet, pins, services)

    for fragment in expected:
        assert sum(fragment in w for w in plan.warnings) == 1, f"{fragment!r} in {plan.warnings}"
    assert len(plan.warnings) == len(expected), plan.warnings


# --- budgets -------------------------------------------------------------------------------------


def test_adjustable_service_alone_on_the_4gb_card_gets_capacity_minus_headroom() -> None:
    plan = plan_for(REFERENCE, pin_all(0, but={ENRICH: 1}))

    enrichment = by_name(plan)[ENRICH]
    assert enrichment.budget_mb == mb(3.5)
    assert enrichment.override_mb is None
    assert plan.loads[1].planned_mb == mb(3.5)
    assert not plan.loads[1].overcommitted


def test_headroom_is_a_setting() -> None:
    plan = plan_for(REFERENCE, pin_all(0, but={ENRICH: 1}), headroom_gb=1.0)

    assert by_name(plan)[ENRICH].budget_mb == mb(3.0)


def test_an_adjustable_service_with_room_keeps_its_estimate_and_gets_no_budget() -> None:
    plan = plan_for(REFERENCE, (Pin(ENRICH, (0,), "box-a"),), services=[s for s in CATALOG if s.name != LLM])

    assert by_name(plan)[ENRICH].budget_mb is None
    assert plan.warnings == ()


def test_an_override_that_fits_is_used_silently() -> None:
    plan = plan_for(REFERENCE, (Pin(ENRICH, (0,), "box-a", budget_mb=mb(3)),), services=CATALOG[1:])

    enrichment = by_name(plan)[ENRICH]
    assert (enrichment.budget_mb, enrichment.override_mb, enrichment.pinned) == (mb(3), mb(3), True)
    assert plan.loads[0].planned_mb == mb(3) + sum(
        s.vram_mb for s in CATALOG[1:] if s.name in plan.loads[0].services and s.name != ENRICH
    )
    assert plan.warnings == ()


def test_an_override_on_an_auto_placed_service_is_what_its_gpu_carries() -> None:
    plan = plan_for(REFERENCE, (Pin(ENRICH, None, None, budget_mb=mb(6)),))

    enrichment = by_name(plan)[ENRICH]
    assert enrichment.budget_mb == mb(6)
    load = next(load for load in plan.loads if load.index == enrichment.gpus[0])
    others = sum(s.vram_mb for s in CATALOG if s.name in load.services and s.name != ENRICH)
    assert load.planned_mb == mb(6) + others
    assert not plan.feasible  # 6 GB fits neither beside the LLM (2.3 GB left) nor on the 4 GB card


# --- pins ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_every_strategy_keeps_pins_as_set(strategy: str) -> None:
    pins = (Pin(LLM, (1,), "box-a"), Pin(CLIP, (5,), "box-a"))

    plan = plan_for(REFERENCE, pins, strategy=strategy)

    llm, clip = by_name(plan)[LLM], by_name(plan)[CLIP]
    assert (llm.host, llm.gpus, llm.gpu_uuids, llm.pinned, llm.placed_by) == (
        "box-a", (1,), ("GPU-00000000-0000-4000-8000-000000000001",), True, "manual")
    assert (clip.gpus, clip.gpu_uuids, clip.pinned) == ((5,), (), True)
    assert plan.unplaced == ()
    assert [load.index for load in plan.loads] == [0, 1]
    assert LLM in plan.loads[1].services


def test_a_disabled_service_is_neither_placed_nor_counted() -> None:
    plan = plan_for(REFERENCE, (Pin(ENRICH, (1,), "box-a", enabled=False),))

    enrichment = by_name(plan)[ENRICH]
    assert (enrichment.enabled, enrichment.gpus, enrichment.placed_by, enrichment.pinned) == (
        False, (), "disabled", False)
    assert all(ENRICH not in load.services for load in plan.loads)
    assert plan.unplaced == ()
    assert plan.feasible
    # With the zoo off, the small services fit beside each other without a budget cut.
    assert plan.warnings == ()


# --- odd fleets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_no_gpus_is_a_plan_that_says_so(strategy: str) -> None:
    plan = plan_for((), (Pin(CLIP, (0,), "box-a"),), strategy=strategy)

    assert plan.message == "No GPUs detected"
    assert plan.warnings[0] == "No GPUs detected: nothing can be placed on a GPU until the detector reports one."
    assert plan.loads == ()
    assert plan.unplaced == (LLM, YOLO, FLORENCE, ENRICH)
    assert by_name(plan)[CLIP].gpus == (0,)
    assert not plan.feasible
    assert not any("could not be placed" in w for w in plan.warnings)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_an_unhealthy_gpu_gets_nothing_from_automatic_placement(strategy: str) -> None:
    plan = plan_for(UNHEALTHY_0, services=[s for s in CATALOG if s.name != LLM], strategy=strategy)

    assert all(a.gpus == (1,) for a in plan.assignments)
    assert plan.loads[0].services == ()


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_a_bf16_service_prefers_a_gpu_that_has_bf16(strategy: str) -> None:
    plan = plan_for(TURING_AND_AMPERE, services=(BF16,), strategy=strategy)

    assert by_name(plan)[BF16.name].gpus == (1,)  # not the T4, though it has more free VRAM
    assert not any("needs bf16" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("fleet", "pins"),
    [
        pytest.param((make_inventory((TURING_AND_AMPERE[0].gpus[0],)),), (), id="only-a-cc-7.5-gpu"),
        pytest.param(TURING_AND_AMPERE, (Pin(BF16.name, (0,), "box-a"),), id="pinned-to-the-cc-7.5-gpu"),
    ],
)
def test_bf16_on_a_compute_capability_7_5_gpu_is_placed_with_a_warning(
    fleet: tuple[Inventory, ...], pins: tuple[Pin, ...]
) -> None:
    plan = plan_for(fleet, pins, services=(BF16,))

    assert by_name(plan)[BF16.name].gpus == (0,)
    assert "ai-bf16 needs bf16, which GPU 0 (compute capability 7.5) lacks." in plan.warnings


def test_loads_report_what_each_gpu_carries() -> None:
    plan = plan_for(REFERENCE)

    assert [(load.index, load.name, load.capacity_mb) for load in plan.loads] == [
        (0, "NVIDIA RTX A5500", 24564), (1, "NVIDIA RTX A400", 4094)]
    assert set(plan.loads[0].services) == {LLM, FLORENCE, YOLO}
    assert plan.loads[0].planned_mb == mb(21.7) + mb(1.5) + mb(0.65)
    assert set(plan.loads[1].services) == {CLIP, ENRICH}
    assert plan.loads[1].planned_mb == mb(1.2) + mb(2.3)
    assert plan.feasible
