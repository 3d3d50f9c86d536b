"""Power of two choices: affinity and give-way as the default policy, but each side compares two
workers drawn at random instead of all of them (for pools of dozens of workers)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from services.router.core.model import WorkerSnapshot
from services.router.core.policies.affinity import AffinityLeastLoaded


class PowerOfTwoChoices(AffinityLeastLoaded):
    NAME: ClassVar[str] = "p2c"

    def narrow(self, workers: Sequence[WorkerSnapshot], rng: random.Random) -> Sequence[WorkerSnapshot]:
        return workers if len(workers) <= 2 else rng.sample(list(workers), 2)
