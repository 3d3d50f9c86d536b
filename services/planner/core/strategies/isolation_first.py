"""``isolation_first``: the LLM alone on the largest GPU; everything else shares the rest.

With one GPU (or no GPU left over) isolation is impossible: everything shares, and the plan
says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from services.planner.core.framework import Candidate, Decision, by_size, greedy, most_free
from services.planner.core.ledger import Ledger
from services.planner.core.model import GpuKey, GpuSlot, Problem, Role, ServiceSpec


class IsolationFirst:
    NAME: ClassVar[str] = "isolation_first"
    DESCRIPTION: ClassVar[str] = "The LLM alone on the largest GPU; every other service shares the remaining GPUs."

    def place(self, problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec]) -> Decision:
        llms = by_size([s for s in pending if s.role is Role.LLM])
        others = by_size([s for s in pending if s.role is not Role.LLM])
        if not llms:
            placements = greedy(problem, ledger, others, most_free)
            return Decision(tuple(placements), ("isolation_first: no service has role llm; placed like vram_based.",))

        def largest_and_empty(spec: ServiceSpec, c: Candidate, ledger: Ledger) -> tuple[float, ...]:
            empty = all(not ledger.tenants(k) for k in c.keys)
            return (empty, min(ledger.capacity(k) for k in c.keys))

        # An LLM the user pinned isolates its GPU just the same.
        roles = {s.name: s.role for s in problem.services}
        isolated: set[GpuKey] = {
            GpuKey(p.host, i)
            for p in problem.pins
            if p.gpus and p.host is not None and roles.get(p.service) is Role.LLM
            for i in p.gpus
        }
        placements = []
        for spec in llms:
            placed = greedy(problem, ledger, [spec], largest_and_empty, lambda g: g.key not in isolated)
            placements += placed
            isolated.update(placed[0].gpus)

        def shared(g: GpuSlot) -> bool:
            return g.key not in isolated

        notes: list[str] = []
        if any(shared(g) and g.healthy for g in problem.gpus):
            placements += greedy(problem, ledger, others, most_free, shared)
            spare = [k for k in isolated if ledger.free(k) > 0]
            crowded = [g for g in problem.gpus if shared(g) and g.key in ledger and ledger.free(g.key) < 0]
            if others and spare and crowded:
                notes.append(
                    "isolation_first keeps other services off the LLM's GPU even though they are short of room "
                    f"on {', '.join(problem.gpu_label(g.host, g.index) for g in crowded)}; balanced or "
                    "vram_based would use the spare VRAM there."
                )
        elif others:
            placements += greedy(problem, ledger, others, most_free)
            where = ", ".join(problem.gpu_label(k.host, k.index) for k in sorted(isolated)) or "its GPU"
            notes.append(
                f"isolation_first needs a second GPU to isolate the LLM: {', '.join(s.name for s in llms)} "
                f"shares {where} with {', '.join(s.name for s in pending if s.role is not Role.LLM)}."
            )
        return Decision(tuple(placements), tuple(notes))
