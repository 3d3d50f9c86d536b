"""The routing-policy plugin interface."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar, Protocol

from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot


class RoutingPolicy(Protocol):
    """Picks one worker among candidates the core has already filtered (alive, healthy GPU, circuit
    closed, serves the model). Candidates without room (``has_room`` False) are shown too: picking one
    keeps the request queued in the router until that worker has room, as does returning None.
    Pure: the same inputs and ``rng`` state give the same pick."""

    NAME: ClassVar[str]

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot], rng: random.Random
    ) -> Choice | None: ...
