"""``balanced``: bin-packing that minimizes the variance of VRAM use across GPUs.

Objective: minimize ``sum(L_g**2 / C_g)`` over GPUs, where ``L_g`` is the VRAM a GPU is asked
for and ``C_g`` its capacity. That sum equals ``(sum L)**2 / sum C`` (a constant) plus the
capacity-weighted variance of utilization ``L_g / C_g``; so on equal GPUs it is the variance of
VRAM use, and on mismatched GPUs it fills each in proportion to its size. VRAM that cannot fit
even with adjustable budgets at their minimum costs far more than any imbalance.

Algorithm (deterministic):
1. Greedy in decreasing size (LPT): each service onto the GPU where it raises the objective
   least, among those where it fits.
2. Local search until no step improves: move one service to another GPU; swap two services
   between the most and least utilized GPUs and any other. Multi-GPU and pinned services stay
   where step 1 or the user put them.

This is the classic LPT-plus-local-search heuristic; the problem is NP-hard (it contains
partition), so it carries no exact guarantee. ``bench/planner`` measures it against an exact
branch-and-bound on the sizes where that finishes: see docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from services.planner.core.framework import Candidate, Decision, by_size, candidates, greedy, tenant_of
from services.planner.core.ledger import Ledger, Tenant
from services.planner.core.model import GpuKey, Placement, Problem, ServiceSpec

IMPROVEMENT_EPS = 1e-6
MAX_ROUNDS = 200


class Balanced:
    NAME: ClassVar[str] = "balanced"
    DESCRIPTION: ClassVar[str] = "Spread VRAM so every GPU is used in proportion to its size (minimum variance)."

    def place(self, problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec]) -> Decision:
        def least_increase(spec: ServiceSpec, c: Candidate, ledger: Ledger) -> tuple[float, ...]:
            t = tenant_of(problem, spec)
            return (-sum(ledger.cost_with(k, t) - ledger.cost(k) for k in c.keys),)

        placements = greedy(problem, ledger, by_size(pending), least_increase)
        where = improve(problem, ledger, pending, {p.service: p.gpus for p in placements})
        return Decision(tuple(Placement(p.service, where.get(p.service, p.gpus), reason=p.reason)
                              for p in placements))


def improve(
    problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec], where: dict[str, tuple[GpuKey, ...]]
) -> dict[str, tuple[GpuKey, ...]]:
    """Local search over single-GPU services: improving moves, then swaps, until neither helps."""
    movable: dict[str, tuple[Tenant, list[GpuKey]]] = {}
    for spec in pending:
        keys = where.get(spec.name, ())
        if spec.gpu_count == 1 and len(keys) == 1:
            options = [c.keys[0] for c in candidates(problem, spec)]
            movable[spec.name] = (tenant_of(problem, spec), options)
    on: dict[str, GpuKey] = {name: where[name][0] for name in movable}

    def delta_move(t: Tenant, src: GpuKey, dst: GpuKey) -> float:
        return (ledger.cost_with(src, t, -1) - ledger.cost(src)) + (ledger.cost_with(dst, t) - ledger.cost(dst))

    def move(name: str, dst: GpuKey) -> None:
        t = ledger.remove((on[name],), name)
        ledger.add((dst,), t)
        on[name] = dst

    for _ in range(MAX_ROUNDS):
        improved = False
        for name, (t, options) in movable.items():
            src = on[name]
            best, gain = None, -IMPROVEMENT_EPS
            for dst in options:
                if dst != src:
                    d = delta_move(t, src, dst)
                    if d < gain:
                        best, gain = dst, d
            if best is not None:
                move(name, best)
                improved = True
        if _swap_round(ledger, movable, on, move):
            improved = True
        if not improved:
            break
    return {**where, **{name: (key,) for name, key in on.items()}}


def _swap_round(ledger: Ledger, movable: dict[str, tuple[Tenant, list[GpuKey]]], on: dict[str, GpuKey],
                move: object) -> bool:
    """One improving swap between the fullest or emptiest GPU and any other, if there is one."""
    by_gpu: dict[GpuKey, list[str]] = {}
    for name, key in on.items():
        by_gpu.setdefault(key, []).append(name)
    if len(by_gpu) < 2:
        return False
    ratio = {k: ledger.demand(k) / ledger.capacity(k) for k in by_gpu}
    extremes = {max(ratio, key=lambda k: ratio[k]), min(ratio, key=lambda k: ratio[k])}
    for a in extremes:
        for b in by_gpu:
            if a == b:
                continue
            for x in by_gpu[a]:
                tx, ox = movable[x]
                if b not in ox:
                    continue
                for y in by_gpu[b]:
                    ty, oy = movable[y]
                    if a not in oy or tx.share_mb == ty.share_mb:
                        continue
                    before = ledger.cost(a) + ledger.cost(b)
                    ledger.remove((a,), x)
                    ledger.remove((b,), y)
                    ledger.add((a,), ty)
                    ledger.add((b,), tx)
                    if ledger.cost(a) + ledger.cost(b) < before - IMPROVEMENT_EPS:
                        on[x], on[y] = b, a
                        return True
                    ledger.remove((a,), y)
                    ledger.remove((b,), x)
                    ledger.add((a,), tx)
                    ledger.add((b,), ty)
    return False
