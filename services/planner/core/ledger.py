"""What a plan puts on each GPU, and how adjustable VRAM budgets give way.

A service with an adjustable budget (a model zoo, say) counts at its full estimate when it has
room, and shrinks, never below its minimum, when others need the room. The budget rule:

    budget = VRAM left on the GPU by everything else, minus the headroom (0.5 GB), split between
             the adjustable services there in proportion to their estimates, rounded to 0.1 GB,
             and never below a service's minimum.

So ai-enrichment (6.8 GB) alone on a 4 GB card gets 4.0 - 0.5 = 3.5 GB.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.planner.core.model import GpuKey, GpuSlot, ServiceSpec, gb, mb

OVERFLOW_PENALTY = 1000.0
"""Weight of each MiB over capacity in :meth:`Ledger.cost`: packing never trades overflow for balance."""


@dataclass(frozen=True)
class Tenant:
    """One service's share of one GPU."""

    service: str
    share_mb: int
    """What it asks for on this GPU (its fixed size, or its estimate when adjustable)."""
    min_mb: int
    adjustable: bool


def tenant_for(spec: ServiceSpec, budget_override_mb: int | None = None) -> Tenant:
    """The share ``spec`` takes on each of its GPUs; a user's budget fixes an adjustable size."""
    if budget_override_mb is not None:
        share = -(-budget_override_mb // spec.gpu_count)
        return Tenant(spec.name, share, share, adjustable=False)
    return Tenant(spec.name, spec.share_mb, spec.min_share_mb, adjustable=spec.budget_adjustable)


class _GpuState:
    __slots__ = ("capacity", "fixed", "desired", "minimum", "adjustable", "tenants")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.fixed = 0
        self.desired = 0
        self.minimum = 0
        self.adjustable = 0
        self.tenants: list[Tenant] = []

    def add(self, t: Tenant, sign: int = 1) -> None:
        if t.adjustable:
            self.desired += sign * t.share_mb
            self.minimum += sign * t.min_mb
            self.adjustable += sign
        else:
            self.fixed += sign * t.share_mb


def _cost(capacity: int, fixed: int, desired: int, minimum: int, adjustable: int, headroom: int) -> float:
    demand = fixed + desired
    return demand * demand / capacity + OVERFLOW_PENALTY * _overflow(capacity, fixed, desired, minimum, adjustable,
                                                                     headroom)


def _overflow(capacity: int, fixed: int, desired: int, minimum: int, adjustable: int, headroom: int) -> int:
    if fixed + desired <= capacity:
        return 0
    floor = fixed + minimum + (headroom if adjustable else 0)
    return max(0, floor - capacity) if adjustable else fixed - capacity


class Ledger:
    """Mutable working state of one planning run (local to that run, so strategies stay pure)."""

    def __init__(self, gpus: Iterable[GpuSlot], headroom_mb: int) -> None:
        self.headroom_mb = headroom_mb
        self._gpus = {g.key: _GpuState(g.capacity_mb) for g in gpus}

    def __contains__(self, key: GpuKey) -> bool:
        return key in self._gpus

    def add(self, keys: Iterable[GpuKey], tenant: Tenant) -> None:
        for key in keys:
            state = self._gpus[key]
            state.add(tenant)
            state.tenants.append(tenant)

    def remove(self, keys: Iterable[GpuKey], service: str) -> Tenant:
        """Take ``service`` off ``keys``; returns its tenant record."""
        found: Tenant | None = None
        for key in keys:
            state = self._gpus[key]
            tenant = next(t for t in state.tenants if t.service == service)
            state.tenants.remove(tenant)
            state.add(tenant, -1)
            found = tenant
        assert found is not None
        return found

    def capacity(self, key: GpuKey) -> int:
        return self._gpus[key].capacity

    def tenants(self, key: GpuKey) -> tuple[Tenant, ...]:
        return tuple(self._gpus[key].tenants)

    def demand(self, key: GpuKey) -> int:
        """What the tenants ask for, adjustable ones at their full estimate."""
        state = self._gpus[key]
        return state.fixed + state.desired

    def free(self, key: GpuKey) -> int:
        """Capacity minus demand (negative when adjustable budgets must shrink, or when overcommitted)."""
        return self._gpus[key].capacity - self.demand(key)

    def fits(self, key: GpuKey, tenant: Tenant) -> bool:
        """Would ``tenant`` fit here, shrinking adjustable budgets (down to their minimum) if need be?"""
        s = self._gpus[key]
        fixed, desired, minimum, adjustable = s.fixed, s.desired, s.minimum, s.adjustable
        if tenant.adjustable:
            desired, minimum, adjustable = desired + tenant.share_mb, minimum + tenant.min_mb, adjustable + 1
        else:
            fixed += tenant.share_mb
        return _overflow(s.capacity, fixed, desired, minimum, adjustable, self.headroom_mb) == 0

    def cost(self, key: GpuKey) -> float:
        """``demand² / capacity`` plus a steep penalty per MiB that cannot fit even at minimum budgets.

        Summed over GPUs, the first term is the capacity-weighted variance of utilization plus a
        constant, so minimizing the sum balances VRAM use in proportion to each GPU's size.
        """
        s = self._gpus[key]
        return _cost(s.capacity, s.fixed, s.desired, s.minimum, s.adjustable, self.headroom_mb)

    def cost_with(self, key: GpuKey, tenant: Tenant, sign: int = 1) -> float:
        """:meth:`cost` if ``tenant`` were added (``sign`` 1) or removed (-1)."""
        s = self._gpus[key]
        if tenant.adjustable:
            return _cost(s.capacity, s.fixed, s.desired + sign * tenant.share_mb, s.minimum + sign * tenant.min_mb,
                         s.adjustable + sign, self.headroom_mb)
        return _cost(s.capacity, s.fixed + sign * tenant.share_mb, s.desired, s.minimum, s.adjustable,
                     self.headroom_mb)

    def cost_after(self, key: GpuKey, add: Iterable[Tenant] = (), remove: Iterable[Tenant] = ()) -> float:
        """:meth:`cost` if ``add`` joined and ``remove`` left the GPU (nothing is changed)."""
        s = self._gpus[key]
        fixed, desired, minimum, adjustable = s.fixed, s.desired, s.minimum, s.adjustable
        for sign, tenants in ((1, add), (-1, remove)):
            for t in tenants:
                if t.adjustable:
                    desired += sign * t.share_mb
                    minimum += sign * t.min_mb
                    adjustable += sign
                else:
                    fixed += sign * t.share_mb
        return _cost(s.capacity, fixed, desired, minimum, adjustable, self.headroom_mb)

    def total_cost(self) -> float:
        return sum(self.cost(k) for k in self._gpus)

    def copy(self) -> Ledger:
        twin = Ledger((), self.headroom_mb)
        for key, state in self._gpus.items():
            clone = _GpuState(state.capacity)
            for t in state.tenants:
                clone.add(t)
                clone.tenants.append(t)
            twin._gpus[key] = clone
        return twin

    def budgets(self, key: GpuKey) -> dict[str, int]:
        """Settled per-GPU size of every adjustable tenant (only those that had to shrink)."""
        s = self._gpus[key]
        movable = [t for t in s.tenants if t.adjustable]
        if not movable or s.fixed + s.desired <= s.capacity:
            return {}
        available = s.capacity - s.fixed - self.headroom_mb
        settled: dict[str, float] = {}
        pending = list(movable)
        # Proportional shares; whoever would drop below its minimum is held there, the rest re-split.
        while pending:
            total = sum(t.share_mb for t in pending)
            ratio = max(available, 0) / total
            low = [t for t in pending if t.share_mb * ratio < t.min_mb]
            if not low:
                settled.update({t.service: t.share_mb * ratio for t in pending})
                break
            for t in low:
                settled[t.service] = t.min_mb
                available -= t.min_mb
                pending.remove(t)
        by_name = {t.service: t for t in movable}
        return {name: max(by_name[name].min_mb, min(by_name[name].share_mb, mb(round(gb(v), 1))))
                for name, v in settled.items()}

    def planned(self, key: GpuKey) -> int:
        """VRAM the GPU carries once adjustable budgets have settled."""
        s = self._gpus[key]
        shrunk = self.budgets(key)
        return s.fixed + sum(shrunk.get(t.service, t.share_mb) for t in s.tenants if t.adjustable)
