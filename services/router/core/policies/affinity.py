"""gpuplane's policy: group affinity first, giving way when the holder is much busier; otherwise
the worker that would finish the request soonest (capacity, speed and health all count)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot
from services.router.core.policies.estimate import ERROR_PENALTY, expected_s, service_s, switch_s
from shared.contracts import Route


def _best(request: PlacementRequest, workers: Sequence[WorkerSnapshot]) -> tuple[WorkerSnapshot, float] | None:
    scored = [(expected_s(w, request), w.worker_id, w) for w in workers]
    if not scored:
        return None
    est, _, worker = min(scored, key=lambda t: (t[0], t[1]))
    return worker, est


def give_way_above_s(
    request: PlacementRequest, other: WorkerSnapshot, other_s: float, give_way_factor: float
) -> float:
    """The holder's expected time beyond which affinity gives way to ``other``.

    The tolerance is ``give_way_factor`` times what the switch itself costs on ``other`` (loading the
    group plus serving the request), on top of the queue ``other`` already has; it does not grow with
    that queue. Scaling the whole estimate instead would let a holder run up twice the backlog of the
    other workers in a burst, and its last requests wait twice as long as they need to.
    """
    switch_cost_s = (switch_s(other, request) + service_s(other, request)) * (1.0 + ERROR_PENALTY * other.error_rate)
    return other_s + (give_way_factor - 1.0) * switch_cost_s


def pick_with_affinity(
    request: PlacementRequest,
    holders: Sequence[WorkerSnapshot],
    others: Sequence[WorkerSnapshot],
    give_way_factor: float,
) -> Choice | None:
    """Affinity unless the best holder would finish later than the best other worker by more than
    ``give_way_factor - 1`` times the switch's own cost (so a switch must pay for itself several
    times over)."""
    best_holder = _best(request, holders)
    best_other = _best(request, others)
    if best_holder is not None:
        holder, holder_s = best_holder
        if best_other is None or holder_s <= give_way_above_s(request, *best_other, give_way_factor):
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
            request, self.narrow(holders, rng), self.narrow(others, rng), self.give_way_factor
        )

    def narrow(self, workers: Sequence[WorkerSnapshot], rng: random.Random) -> Sequence[WorkerSnapshot]:
        """The workers compared on each side (all of them here)."""
        return workers
