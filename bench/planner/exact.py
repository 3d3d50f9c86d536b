"""The exact optimum of the objective ``balanced`` minimizes, by branch and bound.

Objective: the sum over GPUs of :meth:`Ledger.cost` (``demand² / capacity`` plus the overflow
penalty, adjustable services counted at their full estimate as the Ledger counts them), over
every assignment of single-GPU services to the GPUs the framework allows each of them
(``framework.candidates``). The search keeps the Ledger's per-GPU totals in flat lists and
prices them with the Ledger's own cost function, ``ledger._cost`` (what :meth:`Ledger.cost`
evaluates), since it visits millions of states; the answer is priced again through a real
:class:`Ledger`. Only the lower bound does arithmetic of its own, on the quadratic term.

Search: services largest first, each onto every allowed GPU, cheapest increase first (so the
first leaf is the LPT greedy answer). Pruning:

- GPUs of equal capacity and equal tenant totals (fixed, desired, minimum, number of
  adjustable) that the remaining services may use alike are interchangeable: one is tried.
- Consecutive identical services (same share, minimum, adjustability, allowed GPUs) go onto
  GPUs in non-decreasing order.
- Lower bound: the overflow penalties so far (they only grow as tenants are added) plus the
  continuous relaxation of the quadratic term, ``min sum((D_g + x_g)² / C_g)`` subject to
  ``sum(x_g) = remaining demand, x_g >= 0``, solved by water-filling: the least-utilized GPUs
  are filled to one common utilization.

The symmetry rules together keep the search exact: an optimal completion that uses a GPU
skipped as equivalent becomes, by swapping the two GPUs' labels for the rest of the search and
re-sorting identical services, one that uses the GPU tried, at the same cost.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.planner.core.framework import candidates
from services.planner.core.ledger import Ledger, Tenant, _cost, tenant_for
from services.planner.core.model import GpuKey, Problem

RELATIVE_EPS = 1e-12
"""Prune a branch when its bound reaches the incumbent within this fraction (float noise only)."""
CHECK_EVERY_NODES = 512


@dataclass(frozen=True)
class ExactResult:
    """The best assignment found; ``proven_optimal`` when the search ran to its end."""

    where: dict[str, GpuKey]
    objective: float
    proven_optimal: bool
    nodes: int
    seconds: float


class UnsupportedProblem(ValueError):
    """The exact solver handles unpinned single-GPU services only."""


def objective(problem: Problem, where: Mapping[str, tuple[GpuKey, ...]]) -> float:
    """Sum of :meth:`Ledger.cost` over the GPUs once every service sits where ``where`` says."""
    ledger = loaded(problem, where)
    return sum(ledger.cost(g.key) for g in problem.gpus)


def loaded(problem: Problem, where: Mapping[str, tuple[GpuKey, ...]]) -> Ledger:
    """A Ledger holding every service of ``problem`` on its GPUs in ``where`` (all must be placed)."""
    ledger = Ledger(problem.gpus, problem.headroom_mb)
    for spec in problem.services:
        keys = where.get(spec.name, ())
        if not keys:
            raise ValueError(f"{spec.name} is not placed: the objective covers every service")
        ledger.add(keys, tenant_for(spec))
    return ledger


def _check(problem: Problem) -> None:
    if problem.pins:
        raise UnsupportedProblem("pins are not supported by the exact solver")
    multi = [s.name for s in problem.services if s.gpu_count != 1]
    if multi:
        raise UnsupportedProblem(f"multi-GPU services are not supported by the exact solver: {', '.join(multi)}")


def _allowed(problem: Problem) -> list[int]:
    """Per service (in problem order), a bit mask of the GPU positions the framework allows it."""
    position = {g.key: i for i, g in enumerate(problem.gpus)}
    masks = []
    for spec in problem.services:
        mask = 0
        for c in candidates(problem, spec):
            mask |= 1 << position[c.keys[0]]
        if not mask:
            raise UnsupportedProblem(f"{spec.name} has no GPU it may use")
        masks.append(mask)
    return masks


def brute_force(problem: Problem) -> tuple[float, dict[str, GpuKey]]:
    """Every assignment, for tests on tiny problems: the optimum and one assignment reaching it."""
    _check(problem)
    masks = _allowed(problem)
    keys = [g.key for g in problem.gpus]
    choices = [[k for i, k in enumerate(keys) if mask >> i & 1] for mask in masks]
    best, best_where = float("inf"), {}
    for combo in itertools.product(*choices):
        where = {s.name: (k,) for s, k in zip(problem.services, combo, strict=True)}
        value = objective(problem, where)
        if value < best:
            best, best_where = value, {name: ks[0] for name, ks in where.items()}
    return best, best_where


def waterfill(demand: Sequence[float], capacity: Sequence[int], remaining: float) -> float:
    """``min sum((D_g + x_g)² / C_g)`` with ``sum(x) = remaining``, ``x >= 0``.

    At the optimum every GPU that receives anything ends at one utilization ``u`` and none
    below it, so the least utilized are filled first until ``remaining`` is used up.
    """
    order = sorted(range(len(demand)), key=lambda g: demand[g] / capacity[g])
    filled_d = 0.0
    filled_c = 0
    for n, g in enumerate(order):
        filled_d += demand[g]
        filled_c += capacity[g]
        level = (filled_d + remaining) / filled_c
        nxt = order[n + 1] if n + 1 < len(order) else None
        if nxt is None or level <= demand[nxt] / capacity[nxt]:
            rest = sum(demand[h] * demand[h] / capacity[h] for h in order[n + 1:])
            return level * level * filled_c + rest
    raise AssertionError("unreachable: the last GPU always closes the loop")


def solve(problem: Problem, time_limit_s: float = 10.0, node_limit: int = 10_000_000) -> ExactResult:
    """The minimum of the summed Ledger cost, proven when the search ends within its limits."""
    _check(problem)
    start = time.perf_counter()
    masks = dict(zip((s.name for s in problem.services), _allowed(problem), strict=True))
    specs = sorted(problem.services, key=lambda s: (-s.share_mb, not s.budget_adjustable, -s.min_share_mb, s.name))
    tenants: list[Tenant] = [tenant_for(s) for s in specs]
    allowed = [masks[s.name] for s in specs]
    n, gpus = len(specs), len(problem.gpus)
    keys = [g.key for g in problem.gpus]
    capacity = [g.capacity_mb for g in problem.gpus]
    headroom = problem.headroom_mb
    identical_to_previous = [
        i > 0
        and (t.share_mb, t.min_mb, t.adjustable, allowed[i])
        == (tenants[i - 1].share_mb, tenants[i - 1].min_mb, tenants[i - 1].adjustable, allowed[i - 1])
        for i, t in enumerate(tenants)
    ]
    # Which later services may use each GPU, from service i on: part of the equivalence test.
    usable_from = [[0] * gpus for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for g in range(gpus):
            usable_from[i][g] = usable_from[i + 1][g] | ((allowed[i] >> g & 1) << i)
    remaining_after = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        remaining_after[i] = remaining_after[i + 1] + tenants[i].share_mb

    # The Ledger's per-GPU totals and its cost function (``ledger._cost``, what Ledger.cost
    # evaluates), kept in flat lists: the search visits millions of states.
    fixed, desired, minimum, adjustable = [0] * gpus, [0] * gpus, [0] * gpus, [0] * gpus
    demand = [0] * gpus
    cost = [_cost(capacity[g], 0, 0, 0, 0, headroom) for g in range(gpus)]
    penalty = [0.0] * gpus
    on = [0] * n
    best = [float("inf")]
    best_on: list[int] = []
    nodes = [0]
    stopped = [False]

    def dfs(i: int, partial: float, penalties: float) -> None:
        nodes[0] += 1
        if nodes[0] % CHECK_EVERY_NODES == 0 and (
            nodes[0] >= node_limit or time.perf_counter() - start > time_limit_s
        ):
            stopped[0] = True
        if stopped[0]:
            return
        if i == n:
            if partial < best[0]:
                best[0] = partial
                best_on[:] = on
            return
        t = tenants[i]
        share, floor, flexible = t.share_mb, t.min_mb, t.adjustable
        lowest = on[i - 1] if identical_to_previous[i] else 0
        seen = set()
        options = []
        for g in range(lowest, gpus):
            if not allowed[i] >> g & 1:
                continue
            state = (capacity[g], fixed[g], desired[g], minimum[g], adjustable[g], usable_from[i + 1][g])
            if state in seen:
                continue
            seen.add(state)
            if flexible:
                after = _cost(capacity[g], fixed[g], desired[g] + share, minimum[g] + floor, adjustable[g] + 1,
                              headroom)
            else:
                after = _cost(capacity[g], fixed[g] + share, desired[g], minimum[g], adjustable[g], headroom)
            options.append((after - cost[g], after, g))
        options.sort()
        limit = best[0] * (1 - RELATIVE_EPS)
        rest = remaining_after[i + 1]
        for increase, after, g in options:
            if partial + increase >= limit:
                break  # sorted: every later option costs at least as much already
            d = demand[g] + share
            extra = after - d * d / capacity[g] - penalty[g]
            demand[g] = d
            low = penalties + extra + waterfill(demand, capacity, rest)
            if low < limit:
                before = cost[g], penalty[g]
                if flexible:
                    desired[g] += share
                    minimum[g] += floor
                    adjustable[g] += 1
                else:
                    fixed[g] += share
                cost[g], penalty[g] = after, penalty[g] + extra
                on[i] = g
                dfs(i + 1, partial + increase, penalties + extra)
                cost[g], penalty[g] = before
                if flexible:
                    desired[g] -= share
                    minimum[g] -= floor
                    adjustable[g] -= 1
                else:
                    fixed[g] -= share
                limit = best[0] * (1 - RELATIVE_EPS)
            demand[g] = d - share
            if stopped[0]:
                return

    dfs(0, sum(cost), 0.0)
    where = {specs[i].name: keys[g] for i, g in enumerate(best_on)}
    seconds = time.perf_counter() - start
    value = objective(problem, {name: (key,) for name, key in where.items()}) if where else float("inf")
    return ExactResult(where, value, not stopped[0], nodes[0], seconds)
