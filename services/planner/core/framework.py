"""The planning framework every strategy plugs into: filter -> score -> select, per service.

The framework owns what is the same for every strategy: which GPUs a service may use at all
(healthy, precision, enough GPUs on one host, NVLink-connected groups of equal size first),
the user's pins, budgets, warnings and per-GPU totals. A strategy only orders the pending
services and scores candidate GPU groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import ClassVar, Protocol

from services.planner.core.ledger import Ledger, Tenant, tenant_for
from services.planner.core.model import GpuKey, GpuSlot, Placement, Problem, ServiceSpec


@dataclass(frozen=True)
class Candidate:
    """A set of GPUs one service could run on (one GPU, or ``gpu_count`` GPUs of one host)."""

    keys: tuple[GpuKey, ...]
    linked: bool
    """Every pair joined by NVLink (always true for one GPU)."""
    equal: bool
    """Every GPU the same size."""
    precision_ok: bool


@dataclass(frozen=True)
class Decision:
    """What a strategy returns: where pending services go, and anything it wants to say."""

    placements: tuple[Placement, ...]
    notes: tuple[str, ...] = ()


class Strategy(Protocol):
    """An assignment strategy: a name, a one-line description, and ``place``."""

    NAME: ClassVar[str]
    DESCRIPTION: ClassVar[str]

    def place(self, problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec]) -> Decision:
        """Place ``pending`` (the enabled services the user did not pin); ``ledger`` holds the pins."""
        ...


def supports(slot: GpuSlot, spec: ServiceSpec) -> bool:
    """Can ``slot`` run ``spec`` at the precision it needs?"""
    if spec.precision is None:
        return True
    return slot.supports_bf16 if spec.precision.value == "bf16" else slot.supports_fp16


def candidates(
    problem: Problem, spec: ServiceSpec, allowed: Callable[[GpuSlot], bool] | None = None
) -> list[Candidate]:
    """Every GPU group ``spec`` may use: healthy GPUs only, precision-capable ones when any exist."""
    pool = [g for g in problem.gpus if g.healthy and (allowed is None or allowed(g))]
    capable = [g for g in pool if supports(g, spec)]
    if capable:
        pool = capable
    k = spec.gpu_count
    if k == 1:
        return [Candidate((g.key,), True, True, supports(g, spec)) for g in pool]
    found: dict[frozenset[GpuKey], Candidate] = {}
    for host in problem.hosts:
        on_host = [g for g in pool if g.host == host]
        if len(on_host) < k:
            continue
        for group in _groups(on_host, k):
            keys = tuple(g.key for g in group)
            found.setdefault(
                frozenset(keys),
                Candidate(
                    keys,
                    linked=all(b.index in a.nvlink_peers for a, b in combinations(group, 2)),
                    equal=len({g.capacity_mb for g in group}) == 1,
                    precision_ok=all(supports(g, spec) for g in group),
                ),
            )
    return list(found.values())


def _groups(gpus: list[GpuSlot], k: int) -> list[list[GpuSlot]]:
    """Up to one group per seed GPU: partners NVLinked to the whole group first, then the same size.

    Exhaustive for small hosts; seeded greedy (n groups, not n-choose-k) on large ones.
    """
    if len(gpus) <= 8:
        return [list(c) for c in combinations(gpus, k)]
    groups = []
    for seed in gpus:
        group = [seed]
        rest = [g for g in gpus if g is not seed]
        while len(group) < k:
            best = max(
                rest,
                key=lambda g: (all(g.index in m.nvlink_peers for m in group), g.capacity_mb == seed.capacity_mb,
                               -g.index),
            )
            group.append(best)
            rest.remove(best)
        groups.append(sorted(group, key=lambda g: g.index))
    return groups


def tenant_of(problem: Problem, spec: ServiceSpec) -> Tenant:
    """``spec``'s share of each GPU, with the budget the user set for it, if any."""
    pin = problem.pin(spec.name)
    return tenant_for(spec, pin.budget_mb if pin is not None else None)


def unplaceable_reason(problem: Problem, spec: ServiceSpec) -> str:
    healthy = [g for g in problem.gpus if g.healthy]
    if not problem.gpus:
        return "No GPUs detected"
    if not healthy:
        return "no healthy GPU"
    most = max(sum(1 for g in healthy if g.host == h) for h in problem.hosts)
    where = "one host" if problem.multi_host else "this host"
    return f"needs {spec.gpu_count} GPUs on {where}; the most healthy GPUs on one host is {most}"


Score = Callable[[ServiceSpec, Candidate, Ledger], tuple[float, ...]]


def greedy(
    problem: Problem,
    ledger: Ledger,
    order: Sequence[ServiceSpec],
    score: Score,
    allowed: Callable[[GpuSlot], bool] | None = None,
) -> list[Placement]:
    """Place services one by one in ``order``, each on its best candidate.

    Best is, in this order: fits (adjustable budgets may shrink to make room), precision
    supported, NVLinked and equal-sized (for multi-GPU services), then the strategy's ``score``,
    then the lowest GPU position for a stable answer.
    """
    position = {g.key: i for i, g in enumerate(problem.gpus)}
    placements = []
    for spec in order:
        options = candidates(problem, spec, allowed)
        if not options:
            placements.append(Placement(spec.name, (), reason=unplaceable_reason(problem, spec)))
            continue
        tenant = tenant_of(problem, spec)

        def key(c: Candidate, spec: ServiceSpec = spec, tenant: Tenant = tenant) -> tuple[float, ...]:
            fits = all(ledger.fits(k, tenant) for k in c.keys)
            return (fits, c.precision_ok, c.linked and c.equal, c.linked, *score(spec, c, ledger),
                    -min(position[k] for k in c.keys))

        best = max(options, key=key)
        ledger.add(best.keys, tenant)
        placements.append(Placement(spec.name, best.keys))
    return placements


def most_free(spec: ServiceSpec, c: Candidate, ledger: Ledger) -> tuple[float, ...]:
    """Score: the candidate whose tightest GPU has the most VRAM left."""
    return (min(ledger.free(k) for k in c.keys),)


def by_size(services: Sequence[ServiceSpec]) -> list[ServiceSpec]:
    """Largest per-GPU share first; multi-GPU services before single ones of the same share."""
    return sorted(services, key=lambda s: (-s.share_mb, -s.gpu_count, s.name))
