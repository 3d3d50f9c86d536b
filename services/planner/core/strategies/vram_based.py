"""``vram_based``: largest services first, each onto the GPU with the most free VRAM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from services.planner.core.framework import Decision, by_size, greedy, most_free
from services.planner.core.ledger import Ledger
from services.planner.core.model import Problem, ServiceSpec


class VramBased:
    NAME: ClassVar[str] = "vram_based"
    DESCRIPTION: ClassVar[str] = "Largest services first, each onto the GPU with the most free VRAM (recommended)."

    def place(self, problem: Problem, ledger: Ledger, pending: Sequence[ServiceSpec]) -> Decision:
        return Decision(tuple(greedy(problem, ledger, by_size(pending), most_free)))
