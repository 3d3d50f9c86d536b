"""Power of two choices: affinity and give-way as the default policy, but each side compares two
workers drawn at random instead of all of them (for pools of dozens of workers)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot
from services.router.core.policies.affinity import pick_with_affinity


def _two(workers: Sequence[WorkerSnapshot], rng: random.Random) -> Sequence[WorkerSnapshot]:
    return workers if len(workers) <= 2 else rng.sample(list(workers), 2)


class PowerOfTwoChoices:
    NAME: ClassVar[str] = "p2c"

    def __init__(self, give_way_factor: float = 2.0) -> None:
        self.give_way_factor = give_way_factor

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot], rng: random.Random
    ) -> Choice | None:
        holders = [w for w in candidates if request.group in w.groups_loaded]
        others = [w for w in candidates if request.group not in w.groups_loaded]
        return pick_with_affinity(request, _two(holders, rng), _two(others, rng), self.give_way_factor)
