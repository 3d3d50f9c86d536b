"""``latency_optimized``: critical-path services on the fastest GPU, the rest spread over the others.

"Fastest" is the GPU's own estimated FP32 throughput (SM count x clock x lanes per SM, else a
table of known models), never its index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from services.planner.core.framework import Candidate, Decision, by_size, greedy
from services.planner.core.ledger import Ledger
from services.planner.core.model import Problem, ServiceSpec


class LatencyOptimized:
    NAME: ClassVar[str] = "latency_optimized"
    DESCRIPTION: ClassVar[str] = "Critical-path services (detector, LLM) on the fastest GPU; the rest on the others."

    def place(self, problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec]) -> Decision:
        speed = {g.key: g.speed for g in problem.gpus}
        critical = by_size([s for s in pending if s.critical_path])
        rest = by_size([s for s in pending if not s.critical_path])
        critical_names = {s.name for s in problem.services if s.critical_path}

        def hosts_critical(c: Candidate) -> bool:
            return any(t.service in critical_names for k in c.keys for t in ledger.tenants(k))

        def fastest_first(spec: ServiceSpec, c: Candidate, ledger: Ledger) -> tuple[float, ...]:
            # Among equally fast GPUs, keep the critical path together (detector -> LLM hand-off).
            return (min(speed[k] for k in c.keys), hosts_critical(c), min(ledger.free(k) for k in c.keys))

        def away_from_critical(spec: ServiceSpec, c: Candidate, ledger: Ledger) -> tuple[float, ...]:
            return (not hosts_critical(c), min(ledger.free(k) for k in c.keys))

        placements = greedy(problem, ledger, critical, fastest_first)
        placements += greedy(problem, ledger, rest, away_from_critical)

        notes = []
        healthy = [g for g in problem.gpus if g.healthy]
        if healthy:
            top = max(healthy, key=lambda g: g.speed)
            label = problem.gpu_label(top.host, top.index)
            for p in placements[: len(critical)]:
                if p.gpus and min(speed[k] for k in p.gpus) < top.speed:
                    notes.append(
                        f"{p.service} is on the critical path but does not fit on the fastest GPU, {label} "
                        f"({top.name}, ~{top.speed:.0f} TFLOPS); placed on "
                        f"{', '.join(problem.gpu_label(k.host, k.index) for k in p.gpus)}."
                    )
        return Decision(tuple(placements), tuple(notes))
