"""``balanced``: bin-packing that minimizes the variance of VRAM use across GPUs.

Objective: minimize ``sum(L_g**2 / C_g)`` over GPUs, where ``L_g`` is the VRAM a GPU is asked
for and ``C_g`` its capacity. That sum equals ``(sum L)**2 / sum C`` (a constant) plus the
capacity-weighted variance of utilization ``L_g / C_g``; so on equal GPUs it is the variance of
VRAM use, and on mismatched GPUs it fills each in proportion to its size. VRAM that cannot fit
even with adjustable budgets at their minimum costs far more than any imbalance.

Algorithm (deterministic):
1. Two starting plans: greedy in decreasing size (LPT), each service onto the GPU where it
   raises the objective least; and the ``vram_based`` plan.
2. Local search on each until no step improves: move one service; swap two services between
   two GPUs; exchange two services on one GPU for one (or none) on another. With many
   services (over ``FULL_SEARCH_SERVICES``) each GPU holds many small ones and greedy is
   already close: moves, plus a few rounds of swaps that involve the most or the least
   utilized GPU, and no exchanges (their cost grows with the cube of services per GPU).
3. The better of the two results. Multi-GPU and pinned services stay where step 1 or the user
   put them.

The problem is NP-hard (it contains partition), so this carries no exact guarantee.
``bench/planner`` measures it against an exact branch-and-bound on the sizes where that
finishes: see docs/benchmarks.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import combinations
from typing import ClassVar

from services.planner.core.framework import Candidate, Decision, by_size, candidates, greedy, most_free, tenant_of
from services.planner.core.ledger import Ledger, Tenant
from services.planner.core.model import GpuKey, Placement, Problem, ServiceSpec

RELATIVE_EPS = 1e-9
"""A step must lower the objective by this fraction of it: fine enough to even out two 24 GB cards
to within a few MiB, coarse enough that float noise never counts as progress."""
MAX_ROUNDS = 100
MAX_MOVE_PASSES = 50
LARGE_ROUNDS = 3
"""With many services each GPU holds many small ones, greedy is already within a fraction of a percent
of the balance optimum, and a few rounds of swaps polish it; more rounds cost seconds for crumbs."""
FULL_SEARCH_SERVICES = 80


class Balanced:
    NAME: ClassVar[str] = "balanced"
    DESCRIPTION: ClassVar[str] = "Spread VRAM so every GPU is used in proportion to its size (minimum variance)."

    def place(self, problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec]) -> Decision:
        tenants = {s.name: tenant_of(problem, s) for s in pending}

        def least_increase(spec: ServiceSpec, c: Candidate, ledger: Ledger) -> tuple[float, ...]:
            t = tenants[spec.name]
            return (-sum(ledger.cost_with(k, t) - ledger.cost(k) for k in c.keys),)

        best: tuple[float, list[Placement]] | None = None
        # The vram_based start rescues small instances where LPT's first choices trap the local search.
        starts = (least_increase, most_free) if len(pending) <= FULL_SEARCH_SERVICES else (least_increase,)
        for score in starts:
            trial = ledger.copy()
            placements = greedy(problem, trial, by_size(pending), score)
            where = LocalSearch(problem, trial, pending, placements).run()
            result = [Placement(p.service, where.get(p.service, p.gpus), reason=p.reason) for p in placements]
            cost = trial.total_cost()
            if best is None or cost < best[0]:
                best = (cost, result)
        assert best is not None
        for p in best[1]:
            if p.gpus:
                ledger.add(p.gpus, tenants[p.service])
        return Decision(tuple(best[1]))


class LocalSearch:
    """Improving moves, swaps and two-for-one exchanges of single-GPU services, to a local optimum."""

    def __init__(
        self, problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec], placements: Sequence[Placement]
    ) -> None:
        self.ledger = ledger
        self.tenant: dict[str, Tenant] = {}
        self.options: dict[str, frozenset[GpuKey]] = {}
        self.on: dict[str, GpuKey] = {}
        self.members: dict[GpuKey, list[str]] = {g.key: [] for g in problem.gpus}
        placed = {p.service: p.gpus for p in placements}
        for spec in pending:
            keys = placed.get(spec.name, ())
            if spec.gpu_count == 1 and len(keys) == 1:
                self.tenant[spec.name] = tenant_of(problem, spec)
                self.options[spec.name] = frozenset(c.keys[0] for c in candidates(problem, spec))
                self.on[spec.name] = keys[0]
                self.members[keys[0]].append(spec.name)
        self.full = len(self.on) <= FULL_SEARCH_SERVICES
        self.cost = {k: ledger.cost(k) for k in self.members}
        self.eps = max(RELATIVE_EPS * sum(self.cost.values()), 1e-9)
        # GPUs changed since their moves were last checked: only moves touching them can have turned
        # into improvements, which keeps each pass after the first cheap.
        self.dirty: set[GpuKey] = set(self.members)

    def run(self) -> dict[str, tuple[GpuKey, ...]]:
        for _ in range(MAX_ROUNDS if self.full else LARGE_ROUNDS):
            moved = False
            for _ in range(MAX_MOVE_PASSES):
                if not self._moves():
                    break
                moved = True
            if not (self._swaps() or (self.full and self._exchanges()) or moved):
                break
        return {name: (key,) for name, key in self.on.items()}

    def _relocate(self, name: str, dst: GpuKey) -> None:
        src = self.on[name]
        self.ledger.remove((src,), name)
        self.ledger.add((dst,), self.tenant[name])
        self.members[src].remove(name)
        self.members[dst].append(name)
        self.on[name] = dst
        for k in (src, dst):
            self.cost[k] = self.ledger.cost(k)
        self.dirty.update((src, dst))

    def _moves(self) -> bool:
        """One pass of best single moves, over the moves the last changes may have made worthwhile."""
        dirty, self.dirty = self.dirty, set()
        if not dirty:
            return False
        improved = False
        ledger, cost = self.ledger, self.cost
        for name, t in self.tenant.items():
            src = self.on[name]
            targets = self.options[name] if src in dirty else self.options[name] & dirty
            if not targets:
                continue
            leave = ledger.cost_with(src, t, -1) - cost[src]
            best, gain = None, -self.eps
            for dst in targets:
                if dst != src:
                    delta = leave + ledger.cost_with(dst, t) - cost[dst]
                    if delta < gain:
                        best, gain = dst, delta
            if best is not None:
                self._relocate(name, best)
                improved = True
        return improved

    def _pairs(self) -> Iterator[tuple[GpuKey, GpuKey]]:
        """GPU pairs to try swaps on: all of them for small problems, else those with an extreme GPU."""
        used = [k for k in self.members if self.members[k] or self.full]
        if self.full:
            yield from ((a, b) for a in used for b in used if a != b)
            return
        ratio = {k: self.ledger.demand(k) / self.ledger.capacity(k) for k in used}
        extremes = {max(ratio, key=ratio.__getitem__), min(ratio, key=ratio.__getitem__)}
        for a in extremes:
            for b in used:
                if a != b:
                    yield a, b
                    yield b, a

    def _gain(self, a: GpuKey, b: GpuKey, out_a: Sequence[str], out_b: Sequence[str]) -> float:
        """Cost change if ``out_a`` moved from ``a`` to ``b`` and ``out_b`` from ``b`` to ``a``."""
        ta = [self.tenant[n] for n in out_a]
        tb = [self.tenant[n] for n in out_b]
        ledger = self.ledger
        return (ledger.cost_after(a, tb, ta) + ledger.cost_after(b, ta, tb)) - self.cost[a] - self.cost[b]

    def _allowed(self, names: Sequence[str], dst: GpuKey) -> bool:
        return all(dst in self.options[n] for n in names)

    def _swaps(self) -> bool:
        """Every improving one-for-one swap a scan over the GPU pairs finds."""
        return self._exchange_scan(lambda a, b: (((x,), (y,)) for x in list(self.members[a])
                                                 for y in list(self.members[b])))

    def _exchanges(self) -> bool:
        """Every improving two-for-one (or two-for-none) exchange a scan over the GPU pairs finds."""
        return self._exchange_scan(lambda a, b: ((two, one) for two in combinations(list(self.members[a]), 2)
                                                 for one in [(), *((y,) for y in list(self.members[b]))]))

    def _exchange_scan(self, offers: Callable[[GpuKey, GpuKey], Iterable[tuple[tuple[str, ...], tuple[str, ...]]]]
                       ) -> bool:
        improved = False
        for a, b in self._pairs():
            for out_a, out_b in offers(a, b):
                # An earlier exchange in this scan may have moved one of them already.
                if any(self.on[n] != a for n in out_a) or any(self.on[n] != b for n in out_b):
                    continue
                if not (self._allowed(out_a, b) and self._allowed(out_b, a)):
                    continue
                if self._gain(a, b, out_a, out_b) < -self.eps:
                    for n in out_a:
                        self._relocate(n, b)
                    for n in out_b:
                        self._relocate(n, a)
                    improved = True
        return improved
