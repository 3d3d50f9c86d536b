"""Every strategy on the fleets users have: none, one, the reference pair, eight equal GPUs, mixed
sizes, NVLink pairs and two hosts. Placements are asserted GPU by GPU, and every warning a plan
carries must be one the row expects."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.planner.core import snapshot
from services.planner.core.ledger import Ledger, tenant_for
from services.planner.core.model import GpuKey, Pin, Plan, Problem, Role, ServiceSpec
from services.planner.core.planning import make_plan
from services.planner.core.strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    STRATEGY_NAMES,
    UnknownStrategy,
    get_strategy,
)
from shared.contracts import Gpu, Inventory
from tests.builders import (
    make_gpu,
    make_inventory,
    make_reference_gpus,
    make_rtx3090,
    make_service,
    reference_catalog,
)

CATALOG = reference_catalog()
NAMES = tuple(s.name for s in CATALOG)
LLM, YOLO, FLORENCE, CLIP, ENRICH = "ai-llm", "ai-yolo26", "ai-florence", "ai-clip", "ai-enrichment"

TP_LLM = make_service("ai-vllm", 40, gpus=2, role=Role.LLM, critical=True, short_name="Llama-70B")
"""vLLM with tensor parallel size 2: 20 GB on each of two GPUs."""
TP_CATALOG = (TP_LLM, *(s for s in CATALOG if s.name != LLM))

SYNTHETIC = (
    make_service("big", 10), make_service("mid", 6), make_service("small", 5), make_service("tiny", 3, critical=True)
)


def h100(index: int) -> Gpu:
    """deploy/fleets/8x-h100.yaml: every GPU an NVLink peer of every other."""
    return make_gpu(
        index,
        name="NVIDIA H100 80GB HBM3",
        vram_total_mb=81559,
        compute_capability="9.0",
        sm_count=132,
        max_sm_clock_mhz=1980,
        nvlink_peers=tuple(i for i in range(8) if i != index),
    )


def gib(*sizes_gb: int, host: str = "box-a") -> Inventory:
    """A host of identical A5500-like GPUs that differ only in size."""
    return make_inventory(tuple(make_gpu(i, vram_total_mb=size * 1024) for i, size in enumerate(sizes_gb)), host=host)


NO_GPUS: tuple[Inventory, ...] = ()
ONE = (make_inventory((make_gpu(0),)),)
REFERENCE = (make_inventory(make_reference_gpus()),)
EIGHT_H100 = (make_inventory(tuple(h100(i) for i in range(8))),)
MIXED = (gib(8, 16, 12),)
FAST_SECOND = (
    make_inventory(
        (
            make_gpu(0),  # RTX A5500: 80 SMs x 1665 MHz, ~34 TFLOPS
            make_gpu(1, name="NVIDIA GeForce RTX 4090", sm_count=128, max_sm_clock_mhz=2520, compute_capability="8.9"),
        )
    ),
)
DUAL_3090 = (make_inventory((make_rtx3090(0, nvlink_peers=(1,)), make_rtx3090(1, nvlink_peers=(0,)))),)
QUAD_LINKED_23 = (
    make_inventory(
        (make_rtx3090(0), make_rtx3090(1), make_rtx3090(2, nvlink_peers=(3,)), make_rtx3090(3, nvlink_peers=(2,)))
    ),
)
TWO_HOSTS = (
    make_inventory(make_reference_gpus(), host="box-a"),
    make_inventory((make_rtx3090(0, nvlink_peers=(1,)), make_rtx3090(1, nvlink_peers=(0,))), host="box-b"),
)

MANUAL_NOTE = "placed automatically (vram_based)."
ONE_GPU_OVERFLOW = "Combined VRAM (~27.1 GB) exceeds GPU 0 capacity (24 GB)"
ONE_GPU_BUDGET = (
    "ai-enrichment budget (6.8 GB) exceeds GPU 0 (24 GB), which it shares with ai-llm (21.7 GB), "
)
REF_BUDGET = (
    "ai-enrichment budget (6.8 GB) exceeds GPU 1 (4 GB), which it shares with ai-clip (1.2 GB). "
    "Auto-adjusted to 2.3 GB; some of its models may not load."
)


def where(problem: Problem, plan: Plan) -> dict[str, str]:
    """Each service as ``"0"``, ``"0,1"``, ``"box-b:0,1"`` (several hosts) or ``""`` (no GPU)."""
    out = {}
    for a in plan.assignments:
        gpus = ",".join(str(i) for i in a.gpus)
        out[a.service] = f"{a.host}:{gpus}" if problem.multi_host and a.gpus else gpus
    return out


def everything_on(gpu: str, services: Sequence[ServiceSpec] = CATALOG) -> dict[str, str]:
    return {s.name: gpu for s in services}


def assert_warnings(plan: Plan, expected: Sequence[str]) -> None:
    """Each expected fragment is in exactly one warning, and no warning is unexpected."""
    for fragment in expected:
        hits = [w for w in plan.warnings if fragment in w]
        assert len(hits) == 1, f"{fragment!r} in {plan.warnings}"
    assert len(plan.warnings) == len(expected), plan.warnings


def row(
    case_id: str,
    strategy: str,
    fleet: tuple[Inventory, ...],
    expected: dict[str, str],
    *,
    services: tuple[ServiceSpec, ...] = CATALOG,
    pins: tuple[Pin, ...] = (),
    warnings: tuple[str, ...] = (),
    budgets: dict[str, float] | None = None,
) -> object:
    if strategy == "manual" and any(s.name not in {p.service for p in pins} for s in services) and fleet:
        warnings = (*warnings, MANUAL_NOTE)
    return pytest.param(strategy, fleet, services, pins, expected, warnings, budgets or {}, id=f"{case_id}-{strategy}")


CASES = [
    # No GPUs: a plan, not an exception, with every service unplaced and the reason up front.
    *(
        row("no-gpus", name, NO_GPUS, everything_on(""), warnings=("No GPUs detected: nothing can be placed",))
        for name in STRATEGY_NAMES
    ),
    # One 24 GB GPU: everything shares it; ai-enrichment drops to its 2 GB minimum.
    *(
        row(
            "one-gpu",
            name,
            ONE,
            everything_on("0"),
            warnings=(ONE_GPU_BUDGET, ONE_GPU_OVERFLOW)
            + (("isolation_first needs a second GPU to isolate the LLM: ai-llm shares GPU 0 with",)
               if name == "isolation_first" else ()),
            budgets={ENRICH: 2.0},
        )
        for name in STRATEGY_NAMES
    ),
    # The reference workstation: RTX A5500 24 GB + RTX A400 4 GB.
    *(
        row(
            "reference",
            name,
            REFERENCE,
            {LLM: "0", YOLO: "0", FLORENCE: "0", CLIP: "1", ENRICH: "1"},
            warnings=(REF_BUDGET,),
            budgets={ENRICH: 2.3},
        )
        for name in ("manual", "vram_based", "latency_optimized", "balanced")
    ),
    row(
        "reference",
        "isolation_first",
        REFERENCE,
        {LLM: "0", YOLO: "1", FLORENCE: "1", CLIP: "1", ENRICH: "1"},
        warnings=(
            "ai-enrichment budget (6.8 GB) exceeds GPU 1 (4 GB), which it shares with ai-yolo26 (0.65 GB), "
            "ai-florence (1.5 GB), ai-clip (1.2 GB). Auto-adjusted to 2 GB (its minimum)",
            "Combined VRAM (~5.4 GB) exceeds GPU 1 capacity (4 GB): ai-yolo26 0.65 GB, ai-florence 1.5 GB, "
            "ai-clip 1.2 GB, ai-enrichment 2 GB",
            "isolation_first keeps other services off the LLM's GPU even though they are short of room on GPU 1",
        ),
        budgets={ENRICH: 2.0},
    ),
    # Eight equal H100s: one service per GPU, largest first onto the emptiest.
    *(
        row("8xH100", name, EIGHT_H100, {LLM: "0", ENRICH: "1", FLORENCE: "2", CLIP: "3", YOLO: "4"})
        for name in ("manual", "vram_based", "isolation_first", "balanced")
    ),
    # Equally fast GPUs: the critical path stays together on one of the fastest.
    row("8xH100", "latency_optimized", EIGHT_H100, {LLM: "0", YOLO: "0", ENRICH: "1", FLORENCE: "2", CLIP: "3"}),
    # Mixed sizes 8 / 16 / 12 GB.
    *(
        row("mixed", name, MIXED, {"big": "1", "mid": "2", "small": "0", "tiny": "1"}, services=SYNTHETIC)
        for name in ("manual", "vram_based")
    ),
    row(
        "mixed",
        "isolation_first",
        MIXED,
        {"big": "1", "mid": "2", "small": "0", "tiny": "1"},
        services=SYNTHETIC,
        warnings=("isolation_first: no service has role llm; placed like vram_based.",),
    ),
    # Utilization 6/8, 10/16, 8/12 (75%, 62%, 67%) instead of vram_based's 62%, 81%, 50%.
    row("mixed", "balanced", MIXED, {"big": "1", "mid": "0", "small": "2", "tiny": "2"}, services=SYNTHETIC),
    row("mixed", "latency_optimized", MIXED, {"tiny": "1", "big": "2", "mid": "0", "small": "1"}, services=SYNTHETIC),
    # GPU 1 is the fast one (RTX 4090, ~83 TFLOPS vs ~34): the index must not decide.
    row("fast-gpu-1", "latency_optimized", FAST_SECOND, {LLM: "1", YOLO: "1", FLORENCE: "0", CLIP: "0", ENRICH: "0"}),
    *(
        row("fast-gpu-1", name, FAST_SECOND, {LLM: "0", YOLO: "1", FLORENCE: "1", CLIP: "1", ENRICH: "1"})
        for name in ("manual", "vram_based", "isolation_first", "balanced")
    ),
    # Tensor parallel 2 on an NVLinked pair of 3090s.
    *(
        row(
            "dual-3090-nvlink",
            name,
            DUAL_3090,
            {TP_LLM.name: "0,1", YOLO: "1", FLORENCE: "1", CLIP: "1", ENRICH: "0"},
            services=TP_CATALOG,
            warnings=("ai-enrichment budget (6.8 GB) exceeds GPU 0 (24 GB), which it shares with ai-vllm (20 GB). "
                      "Auto-adjusted to 3.5 GB",)
            + (("isolation_first needs a second GPU to isolate the LLM: ai-vllm shares GPU 0, GPU 1 with",)
               if name == "isolation_first" else ()),
            budgets={ENRICH: 3.5},
        )
        for name in ("manual", "vram_based", "isolation_first", "balanced")
    ),
    row(
        "dual-3090-nvlink",
        "latency_optimized",
        DUAL_3090,
        {TP_LLM.name: "0,1", YOLO: "0", FLORENCE: "0", CLIP: "0", ENRICH: "1"},
        services=TP_CATALOG,
        warnings=("ai-enrichment budget (6.8 GB) exceeds GPU 1 (24 GB), which it shares with ai-vllm (20 GB). "
                  "Auto-adjusted to 3.5 GB",),
        budgets={ENRICH: 3.5},
    ),
    # Four 3090s, only 2 and 3 bridged: the pair goes there, the rest onto 0 and 1.
    *(
        row(
            "4-gpus-nvlink-2-3",
            name,
            QUAD_LINKED_23,
            {TP_LLM.name: "2,3", YOLO: "1", FLORENCE: "1", CLIP: "1", ENRICH: "0"},
            services=TP_CATALOG,
        )
        for name in ("manual", "vram_based", "isolation_first", "balanced")
    ),
    row(
        "4-gpus-nvlink-2-3",
        "latency_optimized",
        QUAD_LINKED_23,
        {TP_LLM.name: "2,3", YOLO: "2", FLORENCE: "1", CLIP: "1", ENRICH: "0"},
        services=TP_CATALOG,
    ),
    # Two hosts: the pair stays on one host (box-b, the bridged 3090s).
    *(
        row(
            "two-hosts",
            name,
            TWO_HOSTS,
            {TP_LLM.name: "box-b:0,1", YOLO: "box-a:0", FLORENCE: "box-a:0", CLIP: "box-a:0", ENRICH: "box-a:0"},
            services=TP_CATALOG,
        )
        for name in ("manual", "vram_based", "isolation_first")
    ),
    row(
        "two-hosts",
        "latency_optimized",
        TWO_HOSTS,
        {TP_LLM.name: "box-b:0,1", YOLO: "box-b:0", FLORENCE: "box-a:0", CLIP: "box-a:0", ENRICH: "box-a:0"},
        services=TP_CATALOG,
    ),
    row(
        "two-hosts",
        "balanced",
        TWO_HOSTS,
        {TP_LLM.name: "box-b:0,1", YOLO: "box-a:0", FLORENCE: "box-a:1", CLIP: "box-a:0", ENRICH: "box-a:0"},
        services=TP_CATALOG,
    ),
]


@pytest.mark.parametrize(("strategy", "fleet", "services", "pins", "expected", "warnings", "budgets"), CASES)
def test_strategy_places_each_service(
    strategy: str,
    fleet: tuple[Inventory, ...],
    services: tuple[ServiceSpec, ...],
    pins: tuple[Pin, ...],
    expected: dict[str, str],
    warnings: tuple[str, ...],
    budgets: dict[str, float],
) -> None:
    problem = snapshot.make_problem(fleet, services, pins)
    plan = make_plan(problem, get_strategy(strategy))

    assert where(problem, plan) == expected
    assert_warnings(plan, warnings)
    assert {a.service: round(a.budget_mb / 1024, 2) for a in plan.assignments if a.budget_mb} == budgets
    assert plan.strategy == strategy
    assert plan.unplaced == tuple(name for name, gpus in expected.items() if not gpus)
    assert plan.message == ("No GPUs detected" if not fleet else None)
    placed_by = {a.placed_by for a in plan.assignments}
    assert placed_by == {"auto" if strategy == "manual" else strategy}


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize(
    "fleet", [ONE, REFERENCE, EIGHT_H100, MIXED, TWO_HOSTS], ids=["one", "reference", "8xH100", "mixed", "two-hosts"]
)
def test_strategy_is_a_pure_function_of_its_snapshot(strategy: str, fleet: tuple[Inventory, ...]) -> None:
    problem = snapshot.make_problem(fleet, TP_CATALOG)
    first = make_plan(problem, get_strategy(strategy))

    assert make_plan(problem, get_strategy(strategy)) == first
    # Inventories arrive in any order; the snapshot is the same.
    assert make_plan(snapshot.make_problem(tuple(reversed(fleet)), TP_CATALOG), get_strategy(strategy)) == first


# --- manual --------------------------------------------------------------------------------------


def test_manual_keeps_pins_where_the_user_put_them_and_places_the_rest_like_vram_based() -> None:
    pins = (Pin(LLM, (1,), "box-a"), Pin(CLIP, (1,), "box-a"))
    problem = snapshot.make_problem(REFERENCE, CATALOG, pins)

    plan = make_plan(problem, get_strategy("manual"))
    vram_based = make_plan(problem, get_strategy("vram_based"))

    assert where(problem, plan) == {LLM: "1", YOLO: "0", FLORENCE: "0", CLIP: "1", ENRICH: "0"}
    assert where(problem, vram_based) == where(problem, plan)
    by_name = {a.service: a for a in plan.assignments}
    assert (by_name[LLM].pinned, by_name[LLM].placed_by) == (True, "manual")
    assert (by_name[ENRICH].pinned, by_name[ENRICH].placed_by) == (False, "auto")
    assert_warnings(
        plan,
        (
            "Nemotron-30B requires ~21.7 GB, GPU 1 only has 4 GB",
            "Combined VRAM (~22.9 GB) exceeds GPU 1 capacity (4 GB): ai-llm 21.7 GB, ai-clip 1.2 GB",
            "No GPU chosen for ai-yolo26, ai-florence, ai-enrichment: placed automatically (vram_based).",
        ),
    )
    assert not plan.feasible


def test_manual_with_every_service_pinned_changes_nothing_and_adds_no_note() -> None:
    pins = tuple(Pin(s.name, (0,), "box-a") for s in CATALOG)
    problem = snapshot.make_problem(REFERENCE, CATALOG, pins)

    plan = make_plan(problem, get_strategy("manual"))

    assert where(problem, plan) == everything_on("0")
    assert all(a.pinned and a.placed_by == "manual" for a in plan.assignments)
    assert not any("placed automatically" in w for w in plan.warnings)


# --- vram_based ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes_gb", "services", "expected"),
    [
        pytest.param((8, 16, 12), {"a": 10, "b": 6, "c": 5, "d": 3}, {"a": "1", "b": "2", "c": "0", "d": "1"},
                     id="largest-first-onto-most-free"),
        pytest.param((24, 24), {"a": 1, "b": 1, "c": 1}, {"a": "0", "b": "1", "c": "0"}, id="ties-go-to-lower-index"),
        pytest.param((4, 24), {"a": 3, "b": 3}, {"a": "1", "b": "1"}, id="most-free-not-first"),
    ],
)
def test_vram_based_puts_largest_first_onto_the_gpu_with_most_free_vram(
    sizes_gb: tuple[int, ...], services: dict[str, int], expected: dict[str, str]
) -> None:
    problem = snapshot.make_problem((gib(*sizes_gb),), tuple(make_service(n, v) for n, v in services.items()))

    assert where(problem, make_plan(problem, get_strategy("vram_based"))) == expected


# --- latency_optimized ---------------------------------------------------------------------------


def test_latency_optimized_reads_speed_from_the_known_model_table_when_no_sm_count() -> None:
    fleet = (
        make_inventory(
            (
                make_gpu(0, name="NVIDIA RTX A5000", sm_count=None, max_sm_clock_mhz=None),
                make_gpu(1, name="NVIDIA GeForce RTX 4090", sm_count=None, max_sm_clock_mhz=None),
            )
        ),
    )
    problem = snapshot.make_problem(fleet, CATALOG)

    plan = make_plan(problem, get_strategy("latency_optimized"))

    assert where(problem, plan) == {LLM: "1", YOLO: "1", FLORENCE: "0", CLIP: "0", ENRICH: "0"}
    assert plan.warnings == ()


def test_latency_optimized_says_when_a_critical_service_does_not_fit_on_the_fastest_gpu() -> None:
    fleet = (
        make_inventory(
            (
                make_gpu(0),
                make_gpu(1, name="NVIDIA GeForce RTX 4090", vram_total_mb=8192, sm_count=128, max_sm_clock_mhz=2520,
                         compute_capability="8.9"),
            )
        ),
    )
    problem = snapshot.make_problem(fleet, CATALOG)

    plan = make_plan(problem, get_strategy("latency_optimized"))

    assert where(problem, plan)[LLM] == "0"
    assert where(problem, plan)[YOLO] == "1"
    assert (
        "ai-llm is on the critical path but does not fit on the fastest GPU, GPU 1 "
        "(NVIDIA GeForce RTX 4090, ~83 TFLOPS); placed on GPU 0."
    ) in plan.warnings


# --- isolation_first -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fleet", "services", "expected"),
    [
        pytest.param(
            (gib(16, 48, 24),),
            CATALOG,
            {LLM: "1", ENRICH: "2", FLORENCE: "2", CLIP: "0", YOLO: "2"},
            id="largest-gpu-is-not-index-0",
        ),
        pytest.param(
            (gib(24, 24, 24),),
            (*CATALOG, make_service("ai-coder", 10, role=Role.LLM)),
            {LLM: "0", "ai-coder": "1", ENRICH: "2", FLORENCE: "2", CLIP: "2", YOLO: "2"},
            id="two-llms-each-alone",
        ),
        pytest.param(
            (make_inventory((make_gpu(0, vram_total_mb=49152, healthy=False, health_reason="XID 79"), make_gpu(1),
                             make_gpu(2, vram_total_mb=16384))),),
            CATALOG,
            {LLM: "1", ENRICH: "2", FLORENCE: "2", CLIP: "2", YOLO: "2"},
            id="largest-healthy-gpu",
        ),
        pytest.param(
            (gib(16, 24),),
            (make_service("ai-llm", 8, role=Role.LLM), make_service("ai-small", 2)),
            {"ai-llm": "1", "ai-small": "0"},
            id="llm-that-fits-anywhere-still-takes-the-largest",
        ),
    ],
)
def test_isolation_first_keeps_the_llm_alone_on_the_largest_gpu(
    fleet: tuple[Inventory, ...], services: tuple[ServiceSpec, ...], expected: dict[str, str]
) -> None:
    problem = snapshot.make_problem(fleet, services)

    plan = make_plan(problem, get_strategy("isolation_first"))

    assert where(problem, plan) == expected
    llm_gpus = {a.gpus for a in plan.assignments if a.service in {"ai-llm", "ai-coder"}}
    others = {i for a in plan.assignments if a.service not in {"ai-llm", "ai-coder"} for i in a.gpus}
    assert not {i for gpus in llm_gpus for i in gpus} & others


def test_isolation_first_isolates_the_gpu_of_a_pinned_llm() -> None:
    problem = snapshot.make_problem((gib(24, 24, 24),), CATALOG, (Pin(LLM, (2,), "box-a"),))

    plan = make_plan(problem, get_strategy("isolation_first"))

    placed = where(problem, plan)
    assert placed[LLM] == "2"
    assert all(placed[name] in {"0", "1"} for name in NAMES if name != LLM)


# --- balanced ------------------------------------------------------------------------------------


def balance_objective(problem: Problem, plan: Plan) -> float:
    """sum(Ledger.cost) over the GPUs for what ``plan`` puts where: the objective balanced minimizes."""
    specs = {s.name: s for s in problem.services}
    ledger = Ledger(problem.gpus, problem.headroom_mb)
    for a in plan.assignments:
        keys = tuple(k for i in a.gpus if (k := GpuKey(a.host or "", i)) in ledger)
        if keys:
            ledger.add(keys, tenant_for(specs[a.service], a.override_mb))
    return sum(ledger.cost(g.key) for g in problem.gpus)


def sized(*sizes_gb: float) -> tuple[ServiceSpec, ...]:
    return tuple(make_service(f"s{i}", v) for i, v in enumerate(sizes_gb))


@pytest.mark.parametrize(
    ("fleet", "services"),
    [
        pytest.param(ONE, CATALOG, id="one-gpu"),
        pytest.param(REFERENCE, CATALOG, id="reference"),
        pytest.param(EIGHT_H100, CATALOG, id="8xH100"),
        pytest.param(MIXED, SYNTHETIC, id="mixed"),
        pytest.param(FAST_SECOND, CATALOG, id="fast-gpu-1"),
        pytest.param(DUAL_3090, TP_CATALOG, id="dual-3090-tp2"),
        pytest.param(QUAD_LINKED_23, TP_CATALOG, id="4-gpus-tp2"),
        pytest.param(TWO_HOSTS, TP_CATALOG, id="two-hosts"),
        pytest.param((gib(24, 24),), sized(8, 7, 6, 5, 4), id="2x24-partition"),
        pytest.param((gib(24, 12, 24),), sized(5, 4, 9, 4, 15, 11), id="24+12+24"),
        pytest.param(
            (gib(12, 24),),
            sized(11, 8, 6, 4),
            id="12+24-needs-a-two-for-one-swap",
        ),
        pytest.param(
            (gib(4, 16),),
            sized(2, 11, 3, 2),
            id="4+16-needs-a-two-for-one-swap",
        ),
    ],
)
def test_balanced_is_never_worse_than_vram_based_on_the_balance_objective(
    fleet: tuple[Inventory, ...], services: tuple[ServiceSpec, ...]
) -> None:
    problem = snapshot.make_problem(fleet, services)

    balanced = balance_objective(problem, make_plan(problem, get_strategy("balanced")))
    vram_based = balance_objective(problem, make_plan(problem, get_strategy("vram_based")))

    assert balanced <= vram_based + 1e-6


def test_balanced_beats_vram_based_where_greedy_is_uneven() -> None:
    problem = snapshot.make_problem((gib(24, 24),), sized(8, 7, 6, 5, 4))

    balanced = make_plan(problem, get_strategy("balanced"))
    vram_based = make_plan(problem, get_strategy("vram_based"))

    assert sorted(load.planned_mb // 1024 for load in vram_based.loads) == [13, 17]
    assert [load.planned_mb // 1024 for load in balanced.loads] == [15, 15]
    assert balance_objective(problem, balanced) < balance_objective(problem, vram_based)


@pytest.mark.parametrize(
    ("count", "size_gb", "services"),
    [
        pytest.param(2, 24, sized(8, 7, 6, 5, 4), id="2x24"),
        pytest.param(4, 24, sized(6, 6, 5, 5, 4, 4, 3, 3, 2, 2), id="4x24"),
        pytest.param(8, 80, sized(*range(1, 17)), id="8x80"),
        pytest.param(3, 24, sized(6, 6, 6), id="one-each"),
        pytest.param(
            2,
            24,
            sized(9, 6, 5, 4, 2, 2),
            id="2x24-needs-two-for-one",
        ),
        pytest.param(
            3,
            24,
            sized(9, 8, 7, 6, 5, 4, 3, 2, 1),
            id="3x24-plateau",
        ),
    ],
)
def test_balanced_evens_out_equal_gpus(count: int, size_gb: int, services: tuple[ServiceSpec, ...]) -> None:
    problem = snapshot.make_problem((gib(*[size_gb] * count),), services)

    plan = make_plan(problem, get_strategy("balanced"))

    loads = [load.planned_mb for load in plan.loads]
    assert max(loads) == min(loads), loads
    assert plan.feasible


# --- multi-GPU services --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize(
    ("fleet", "gpus", "reason"),
    [
        pytest.param(TWO_HOSTS, 4, "needs 4 GPUs on one host; the most healthy GPUs on one host is 2", id="4-of-2x2"),
        pytest.param(
            (make_inventory((make_rtx3090(0, nvlink_peers=(1,)), make_rtx3090(1, nvlink_peers=(0,), healthy=False))),),
            2,
            "needs 2 GPUs on this host; the most healthy GPUs on one host is 1",
            id="partner-unhealthy",
        ),
        pytest.param(
            (gib(24, host="box-a"), gib(24, host="box-b")),
            2,
            "needs 2 GPUs on one host; the most healthy GPUs on one host is 1",
            id="never-across-hosts",
        ),
    ],
)
def test_a_multi_gpu_service_that_cannot_be_placed_is_reported_not_raised(
    strategy: str, fleet: tuple[Inventory, ...], gpus: int, reason: str
) -> None:
    big = make_service("ai-big", 40, gpus=gpus)
    problem = snapshot.make_problem(fleet, (big, make_service("ai-clip", 1.2)))

    plan = make_plan(problem, get_strategy(strategy))

    assert plan.unplaced == ("ai-big",)
    assert where(problem, plan)["ai-big"] == ""
    assert where(problem, plan)["ai-clip"] != ""
    assert f"ai-big could not be placed: {reason}." in plan.warnings
    assert not plan.feasible


@pytest.mark.parametrize(
    ("fleet", "expected"),
    [
        pytest.param(
            (make_inventory((make_gpu(0, vram_total_mb=49152), make_gpu(1), make_gpu(2))),),
            "0,1",
            id="no-nvlink-lowest-indices",
        ),
        pytest.param(
            (make_inventory((make_gpu(0), make_gpu(1), make_gpu(2, nvlink_peers=(3,)),
                             make_gpu(3, vram_total_mb=49152, nvlink_peers=(2,)))),),
            "2,3",
            id="nvlink-beats-equal-size",
        ),
        pytest.param(
            (make_inventory(tuple(make_gpu(i, nvlink_peers=((i ^ 1),) if i >= 6 else ()) for i in range(10))),),
            "6,7",
            id="10-gpu-host-linked-pair",
        ),
        pytest.param(
            (make_inventory((make_gpu(0), make_gpu(1), make_gpu(2)), host="box-a"),
             make_inventory((make_rtx3090(0, nvlink_peers=(1,)), make_rtx3090(1, nvlink_peers=(0,))), host="box-b")),
            "box-b:0,1",
            id="linked-host-wins",
        ),
    ],
)
def test_a_multi_gpu_service_prefers_nvlinked_gpus_on_one_host(fleet: tuple[Inventory, ...], expected: str) -> None:
    problem = snapshot.make_problem(fleet, (TP_LLM,))

    plan = make_plan(problem, get_strategy("vram_based"))

    assert where(problem, plan)[TP_LLM.name] == expected


def test_a_multi_gpu_service_split_without_nvlink_says_so() -> None:
    problem = snapshot.make_problem((make_inventory((make_rtx3090(0), make_rtx3090(1))),), (TP_LLM,))

    plan = make_plan(problem, get_strategy("vram_based"))

    assert where(problem, plan) == {TP_LLM.name: "0,1"}
    assert plan.warnings == (
        "ai-vllm splits its model over GPU 0, GPU 1, which are not all joined by NVLink; tensor-parallel traffic "
        "goes over PCIe and decoding is slower.",
    )


# --- registry ------------------------------------------------------------------------------------


def test_the_registry_has_the_five_strategies_and_vram_based_is_the_default() -> None:
    assert STRATEGY_NAMES == ("manual", "vram_based", "latency_optimized", "isolation_first", "balanced")
    assert DEFAULT_STRATEGY == "vram_based"
    assert all(STRATEGIES[name].NAME == name and STRATEGIES[name].DESCRIPTION for name in STRATEGY_NAMES)


def test_an_unknown_strategy_names_the_valid_ones() -> None:
    with pytest.raises(UnknownStrategy) as caught:
        get_strategy("fastest", field="strategy")

    assert caught.value.field == "strategy"
    assert str(caught.value) == (
        "unknown strategy 'fastest'; valid strategies: manual, vram_based, latency_optimized, isolation_first, balanced"
    )
