"""``manual``: the user's assignments as given; nothing is moved.

Services the user left without a GPU ("auto") are placed around the pinned ones the way
``vram_based`` would, and the plan marks them as not pinned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from services.planner.core.framework import Decision
from services.planner.core.ledger import Ledger
from services.planner.core.model import Problem, ServiceSpec
from services.planner.core.strategies.vram_based import VramBased


class Manual:
    NAME: ClassVar[str] = "manual"
    DESCRIPTION: ClassVar[str] = "You choose each service's GPU; services left on auto are placed like vram_based."

    def place(self, problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec]) -> Decision:
        decision = VramBased().place(problem, ledger, pending)
        placed_now = {p.service for p in decision.placements if p.gpus}
        placed = [s.name for s in pending if s.name in placed_now]
        if not placed:
            return decision
        note = f"No GPU chosen for {', '.join(placed)}: placed automatically (vram_based)."
        return Decision(decision.placements, (note,))
