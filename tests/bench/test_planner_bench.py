"""bench/planner: the exact solver is exact, and the report keeps what it does not own.

Correctness only: timings are the benchmark's business (docs/benchmarks.md), never asserted here.
"""

from __future__ import annotations

import pytest

from bench.planner.exact import brute_force, objective, solve, waterfill
from bench.planner.instances import instance
from bench.planner.measure import quality, where_of
from bench.planner.report import BEGIN, END, splice
from services.planner.core.model import Problem
from services.planner.core.planning import make_plan
from services.planner.core.strategies import STRATEGIES
from tests.builders import make_problem, make_service, make_slot

TINY: dict[str, Problem] = {
    # Partition-like: the best split is not the greedy one.
    "unequal GPUs": make_problem(
        [make_slot(0, vram_gb=24), make_slot(1, vram_gb=12), make_slot(2, vram_gb=8)],
        [make_service(f"s{i}", gb) for i, gb in enumerate((7.0, 6.5, 5.0, 4.5, 3.0, 2.5, 1.2))],
    ),
    # Equal GPUs and identical services: exactly what the symmetry rules prune.
    "equal GPUs, identical services": make_problem(
        [make_slot(i, vram_gb=16) for i in range(3)],
        [make_service(f"s{i}", gb) for i, gb in enumerate((5.0, 5.0, 5.0, 3.0, 3.0, 2.0, 2.0))],
    ),
    # More than fits at full size: an adjustable budget shrinks, and the overflow penalty decides.
    "adjustable budget under pressure": make_problem(
        [make_slot(0, vram_gb=8), make_slot(1, vram_gb=4)],
        [make_service("zoo", 6.8, adjustable=True, min_gb=2.0), make_service("llm", 5.0),
         make_service("clip", 1.2), make_service("yolo", 0.65), make_service("tts", 1.0),
         make_service("ocr", 0.5)],
    ),
    # Two GPUs asked for the same 6 GB, one by a fixed service, one by an adjustable one: not
    # interchangeable, since only the adjustable one can shrink for what comes next.
    "same demand, different make-up": make_problem(
        [make_slot(0, vram_gb=8), make_slot(1, vram_gb=8)],
        [make_service("zoo", 6, adjustable=True, min_gb=1), make_service("llm", 6),
         make_service("comfy", 3, adjustable=True, min_gb=0.5), make_service("sd", 2, adjustable=True, min_gb=1),
         make_service("clip", 1)],
    ),
}


@pytest.mark.parametrize("problem", TINY.values(), ids=TINY.keys())
def test_exact_solver_agrees_with_brute_force(problem: Problem) -> None:
    expected, _ = brute_force(problem)

    found = solve(problem)

    assert found.proven_optimal
    assert found.objective == pytest.approx(expected, rel=1e-12)
    assert objective(problem, {name: (key,) for name, key in found.where.items()}) == found.objective


@pytest.mark.parametrize(("gpus", "services", "index"), [(2, 5, 0), (3, 6, 1), (4, 7, 2)])
def test_exact_solver_agrees_with_brute_force_on_generated_instances(gpus: int, services: int, index: int) -> None:
    problem = instance(1, gpus, services, index).problem

    assert solve(problem).objective == pytest.approx(brute_force(problem)[0], rel=1e-12)


@pytest.mark.parametrize(("gpus", "services"), [(2, 10), (4, 10), (8, 10), (8, 16)])
def test_no_strategy_beats_the_proven_optimum(gpus: int, services: int) -> None:
    for index in range(3):
        problem = instance(0, gpus, services, index).problem
        found = solve(problem, time_limit_s=30)
        assert found.proven_optimal
        for name, strategy in STRATEGIES.items():
            value = quality(problem, where_of(make_plan(problem, strategy))).objective
            assert value >= found.objective * (1 - 1e-12), (name, index)


def test_waterfill_fills_the_emptiest_gpus_to_one_level() -> None:
    # 100 MiB into GPUs at 50% and 10% of 100 MiB: the emptier one alone reaches 50% at 40 MiB,
    # then both rise together to (50 + 10 + 100) / 200 = 80%.
    assert waterfill([50, 10], [100, 100], 100) == pytest.approx(0.8**2 * 200)
    assert waterfill([50, 10], [100, 100], 20) == pytest.approx(50**2 / 100 + 30**2 / 100)


def test_splice_replaces_only_the_generated_block() -> None:
    document = f"# Benchmarks\n\n## Planner\n\nWritten by hand.\n\n{BEGIN}\nold\n{END}\n\nAlso by hand.\n\n## Router\n"

    updated = splice(document, f"{BEGIN}\nnew\n{END}")

    assert updated == document.replace("\nold\n", "\nnew\n")
    assert splice("", f"{BEGIN}\nnew\n{END}") == f"# Benchmarks\n\n## Planner\n\n{BEGIN}\nnew\n{END}\n"
