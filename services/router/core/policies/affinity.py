"""gpuplane's policy: group affinity first, giving way when the holder is much busier; otherwise
the worker that would finish the request soonest (capacity, speed and health all count)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot
from services.router.core.policies.estimate import expected_s
from services.router.core.policies.ties import least
from shared.contracts import Route


def _best(
    request: PlacementRequest, workers: Sequence[WorkerSnapshot], rng: random.Random
) -> tuple[WorkerSnapshot, float] | None:
    """The soonest to finish. With a free slot the expected time ignores load, so among equals the one
    with fewer requests goes first, then ``rng``: equal idle workers share the work."""
    best = least(workers, lambda w: (expected_s(w, request), w.load), rng)
    return None if best is None else (best[0], best[1][0])


def pick_with_affinity(
    request: PlacementRequest,
    holders: Sequence[WorkerSnapshot],
    others: Sequence[WorkerSnapshot],
    give_way_factor: float,
    rng: random.Random,
) -> Choice | None:
    """Affinity unless the best holder would take ``give_way_factor`` times longer than the best
    other worker, switch cost included (so a switch must pay for itself several times over)."""
    best_holder = _best(request, holders, rng)
    best_other = _best(request, others, rng)
    if best_holder is not None:
        holder, holder_s = best_holder
        if best_other is None or holder_s <= give_way_factor * best_other[1]:
            return Choice(holder.worker_id, Route.AFFINITY, f"holds {request.group} (~{holder_s:.2f} s)")
        other, other_s = best_other
        return Choice(
            other.worker_id,
            Route.LEAST_LOADED,
            f"affinity gave way: {holder.worker_id} holds {request.group} but needs ~{holder_s:.2f} s, "
            f"{other.worker_id} ~{other_s:.2f} s with the load",
        )
    if best_other is None:
        return None
    other, other_s = best_other
    return Choice(other.worker_id, Route.LEAST_LOADED, f"soonest to finish (~{other_s:.2f} s, loads {request.group})")


class AffinityLeastLoaded:
    """The default policy."""

    NAME: ClassVar[str] = "affinity"

    def __init__(self, give_way_factor: float = 2.0) -> None:
        self.give_way_factor = give_way_factor

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot], rng: random.Random
    ) -> Choice | None:
        holders = [w for w in candidates if request.group in w.groups_loaded]
        others = [w for w in candidates if request.group not in w.groups_loaded]
        return pick_with_affinity(
            request, self.narrow(holders, rng), self.narrow(others, rng), self.give_way_factor, rng
        )

    def narrow(self, workers: Sequence[WorkerSnapshot], rng: random.Random) -> Sequence[WorkerSnapshot]:
        """The workers compared on each side (all of them here)."""
        return workers
