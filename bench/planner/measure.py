"""Planning time and distance from the optimum, per strategy, over a grid of seeded instances.

Quality is read on the objective ``balanced`` minimizes, ``sum(L_g² / C_g)`` plus the overflow
penalty (:meth:`Ledger.cost` summed over GPUs). It splits as ``(sum L)² / sum C``, a constant of
the instance, plus ``sum C_g (u_g - ū)²``, the capacity-weighted variance of utilization: the
only part a plan changes. So besides ``objective / optimum`` each result carries the stricter
``(objective - constant) / (optimum - constant)`` and the utilization spread in percentage points.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

from bench.planner.exact import ExactResult, loaded, solve
from bench.planner.instances import Instance, instance
from services.planner.core.framework import Decision
from services.planner.core.ledger import Ledger
from services.planner.core.model import GpuKey, Placement, Plan, Problem, ServiceSpec
from services.planner.core.planning import make_plan
from services.planner.core.strategies import STRATEGIES


class RoundRobin:
    """Baseline: services in catalog order onto the healthy GPUs in turn, no look at sizes."""

    NAME: ClassVar[str] = "round_robin"
    DESCRIPTION: ClassVar[str] = "Baseline for the benchmark: each service onto the next GPU."

    def place(self, problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec]) -> Decision:
        healthy = [g.key for g in problem.gpus if g.healthy]
        return Decision(tuple(Placement(s.name, (healthy[i % len(healthy)],)) for i, s in enumerate(pending)))


BASELINE = RoundRobin.NAME
STRATEGY_ORDER: tuple[str, ...] = (BASELINE, *STRATEGIES)


@dataclass(frozen=True)
class Config:
    """What one run measures."""

    cells: tuple[tuple[int, int], ...]
    """(GPUs, services) pairs."""
    instances: Callable[[int, int], int]
    """How many instances a cell gets."""
    exact_cells: frozenset[tuple[int, int]]
    """Cells the exact solver is tried on."""
    exact_time_limit_s: float
    timing_budget_s: float
    """Repeat each planning call until this much time has been spent on it (at least 3 runs)."""
    max_runs: int = 200


GPU_COUNTS = (2, 4, 8, 16, 64)
SERVICE_COUNTS = (5, 10, 20, 50, 100, 500)


def grid(gpu_counts: Sequence[int] = GPU_COUNTS, service_counts: Sequence[int] = SERVICE_COUNTS) -> tuple[
        tuple[int, int], ...]:
    """Cells with at least one service per GPU and at most 32: a realistic fleet for that catalog."""
    return tuple((g, s) for g in gpu_counts for s in service_counts if g <= s <= 32 * g)


FULL = Config(
    cells=grid(),
    instances=lambda gpus, services: 6 if services <= 20 else 3 if services < 500 else 2,
    exact_cells=frozenset(c for c in grid() if c[0] <= 16 and c[1] <= 20),
    exact_time_limit_s=4.0,
    timing_budget_s=0.2,
)
QUICK = Config(
    cells=((2, 5), (2, 10), (4, 10), (4, 20), (8, 20), (16, 100), (64, 500)),
    instances=lambda gpus, services: 3 if services <= 20 else 1,
    exact_cells=frozenset({(2, 5), (2, 10), (4, 10), (4, 20), (8, 20)}),
    exact_time_limit_s=0.5,
    timing_budget_s=0.02,
)


@dataclass(frozen=True)
class Quality:
    """How balanced one complete assignment is."""

    objective: float
    constant: float
    """``(sum of demand)² / sum of capacity``: the objective of a perfectly even spread."""
    spread_pp: float
    """Capacity-weighted standard deviation of GPU utilization (demand / capacity), in percentage points."""
    overcommitted: bool

    @property
    def variance(self) -> float:
        """The part of the objective a plan can change (plus any overflow penalty)."""
        return self.objective - self.constant


def quality(problem: Problem, where: dict[str, tuple[GpuKey, ...]]) -> Quality:
    ledger = loaded(problem, where)
    keys = [g.key for g in problem.gpus]
    capacity = sum(ledger.capacity(k) for k in keys)
    demand = sum(ledger.demand(k) for k in keys)
    mean = demand / capacity
    spread = math.sqrt(sum(ledger.capacity(k) * (ledger.demand(k) / ledger.capacity(k) - mean) ** 2
                           for k in keys) / capacity)
    return Quality(
        objective=sum(ledger.cost(k) for k in keys),
        constant=demand * demand / capacity,
        spread_pp=100 * spread,
        overcommitted=any(ledger.planned(k) > ledger.capacity(k) for k in keys),
    )


def where_of(plan: Plan) -> dict[str, tuple[GpuKey, ...]]:
    return {a.service: tuple(GpuKey(a.host or "", i) for i in a.gpus) for a in plan.assignments}


def median_seconds(call: Callable[[], object], budget_s: float, max_runs: int) -> float:
    """Median wall time of ``call`` over repeated runs (garbage collector off, as ``timeit`` does)."""
    times: list[float] = []
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        while len(times) < max_runs and (len(times) < 3 or sum(times) < budget_s):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
            if len(times) == 1 and times[0] > budget_s:
                break  # one call already outlasts the budget: its time is the figure
    finally:
        if enabled:
            gc.enable()
    return statistics.median(times)


@dataclass(frozen=True)
class StrategyResult:
    seconds: float
    quality: Quality


@dataclass(frozen=True)
class InstanceResult:
    instance: Instance
    strategies: dict[str, StrategyResult]
    exact: ExactResult | None
    optimum: Quality | None
    """The exact solver's assignment, when it proved it optimal."""


@dataclass
class CellResult:
    gpus: int
    services: int
    instances: list[InstanceResult] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.gpus} x {self.services}"

    @property
    def exact_tried(self) -> bool:
        return any(r.exact is not None for r in self.instances)

    @property
    def proven(self) -> list[InstanceResult]:
        return [r for r in self.instances if r.optimum is not None]


def measure_instance(inst: Instance, config: Config, exact: bool) -> InstanceResult:
    problem = inst.problem
    strategies = {BASELINE: RoundRobin(), **STRATEGIES}
    results = {}
    for name in STRATEGY_ORDER:
        strategy = strategies[name]
        plan = make_plan(problem, strategy)
        if plan.unplaced:
            raise RuntimeError(f"{name} left {', '.join(plan.unplaced)} unplaced on {inst.label}")
        seconds = median_seconds(partial(make_plan, problem, strategy), config.timing_budget_s, config.max_runs)
        results[name] = StrategyResult(seconds, quality(problem, where_of(plan)))
    found = solve(problem, time_limit_s=config.exact_time_limit_s) if exact else None
    optimum = None
    if found is not None and found.proven_optimal:
        optimum = quality(problem, {name: (key,) for name, key in found.where.items()})
    return InstanceResult(inst, results, found, optimum)


def run(config: Config, seed: int, progress: Callable[[str], None] | None = None) -> list[CellResult]:
    cells = []
    for gpus, services in config.cells:
        cell = CellResult(gpus, services)
        for index in range(config.instances(gpus, services)):
            inst = instance(seed, gpus, services, index)
            cell.instances.append(measure_instance(inst, config, (gpus, services) in config.exact_cells))
            if progress is not None:
                progress(inst.label)
        cells.append(cell)
    return cells
