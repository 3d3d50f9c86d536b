"""gpuplane's policy: group affinity first, giving way when the holder is much busier; otherwise
the worker that would finish the request soonest (capacity, speed and health all count). Then prefix
affinity: a worker that likely still holds the request's prompt prefix in its cache takes it, unless
it would take ``give_way_factor`` times longer than the worker picked so far."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from services.router.core.model import Choice, PlacementRequest, WorkerSnapshot
from services.router.core.policies.estimate import expected_s
from services.router.core.policies.ties import least
from services.router.core.prefix import MIN_PREFIX_CHARS
from shared.contracts import Route

DEFAULT_GIVE_WAY_FACTOR = 1.1
"""With per-model estimates a holder needs little margin: 2.0 (when one latency average per worker
decided) kept queues on four equal GPUs long enough for p99 to reach 1.9x the oracle's (docs/benchmarks.md)."""
EVICTING_GIVE_WAY_FACTOR = 2.0
"""A switch that must evict another group (so that group's next request loads it again) needs the holder
twice as slow: with 1.1 the reference pair reloaded a small group on the big card 20 times per 1000 requests."""
PREFIX_GIVE_WAY_FACTOR = 1.5
"""A worker with more of the prompt cached takes it unless it would take 1.5 times as long as the pick (both
estimates with the whole prompt): 2.0, with the cached part left out of the holder's estimate, piled a
benchmark's conversations onto one llama.cpp engine (docs/benchmarks.md, Engines)."""


def _best(
    request: PlacementRequest, workers: Sequence[WorkerSnapshot], rng: random.Random
) -> tuple[WorkerSnapshot, float] | None:
    """The soonest to finish. With a free slot the expected time ignores load, so among equals the one
    with fewer requests goes first, then ``rng``: equal idle workers share the work."""
    best = least(workers, lambda w: (expected_s(w, request), w.load), rng)
    return None if best is None else (best[0], best[1][0])


def evicts(worker: WorkerSnapshot, request: PlacementRequest) -> bool:
    """Loading the request's group there must evict another (only known where the worker reports its VRAM)."""
    return worker.vram_free_mb is not None and request.group_vram_mb > worker.vram_free_mb


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
        if best_other is not None and evicts(best_other[0], request):
            give_way_factor = max(give_way_factor, EVICTING_GIVE_WAY_FACTOR)
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


def holds(worker: WorkerSnapshot, group: str) -> bool:
    """Holds the group, or will load it for a request already sent there (and it fits beside the rest):
    that switch is paid, so it competes with the first holder on time alone."""
    return group in worker.groups_loaded or group in worker.groups_coming


def with_prefix(
    request: PlacementRequest, choice: Choice, candidates: Sequence[WorkerSnapshot], give_way_factor: float
) -> Choice:
    """``choice``, or a worker likely to hold more of this prompt in its cache if it is not much busier.

    Only the longest prefix known anywhere counts, and only where ``choice`` holds at least
    ``MIN_PREFIX_CHARS`` less of it: a prefix every worker holds (one system prompt for everyone) says
    nothing about where to go, and a short difference is not worth a busier engine.
    """
    most = max((w.prefix_chars for w in candidates), default=0)
    chosen = next((w for w in candidates if w.worker_id == choice.worker_id), None)
    if most == 0 or chosen is None:
        return choice
    if chosen.prefix_chars == most:
        return Choice(
            choice.worker_id, choice.route, f"{choice.reason}; has this prompt's first {most} characters cached"
        )
    if most - chosen.prefix_chars < MIN_PREFIX_CHARS:
        # The pick holds nearly as much (the shared system prompt, say): the rest is prefilled in milliseconds.
        return choice
    holders = [w for w in candidates if w.prefix_chars == most]
    cached = min(holders, key=lambda w: (expected_s(w, request), w.load, w.worker_id))
    cached_s, chosen_s = expected_s(cached, request), expected_s(chosen, request)
    # Never a detour to a busier engine: the estimates learn how much a neighbour slows a request only from
    # answers, and on a one-thread CPU engine a second request halves both (a benchmark's TTFT doubled).
    if cached.load <= chosen.load and cached_s <= give_way_factor * chosen_s:
        return Choice(
            cached.worker_id,
            Route.AFFINITY,
            f"prefix: has this prompt's first {most} characters cached (~{cached_s:.2f} s; "
            f"{chosen.worker_id} ~{chosen_s:.2f} s)",
        )
    return Choice(
        choice.worker_id,
        choice.route,
        f"{choice.reason}; prefix affinity gave way: {cached.worker_id} has the prompt's first "
        f"{most} characters cached but needs ~{cached_s:.2f} s ({cached.load} requests there)",
    )


class AffinityLeastLoaded:
    """The default policy."""

    NAME: ClassVar[str] = "affinity"

    def __init__(self, give_way_factor: float = DEFAULT_GIVE_WAY_FACTOR) -> None:
        self.give_way_factor = give_way_factor

    def choose(
        self, request: PlacementRequest, candidates: Sequence[WorkerSnapshot], rng: random.Random
    ) -> Choice | None:
        holders = [w for w in candidates if holds(w, request.group)]
        others = [w for w in candidates if not holds(w, request.group)]
        choice = pick_with_affinity(
            request, self.narrow(holders, rng), self.narrow(others, rng), self.give_way_factor, rng
        )
        if choice is None or not request.prefix:
            return choice
        return with_prefix(request, choice, candidates, max(self.give_way_factor, PREFIX_GIVE_WAY_FACTOR))

    def narrow(self, workers: Sequence[WorkerSnapshot], rng: random.Random) -> Sequence[WorkerSnapshot]:
        """The workers compared on each side (all of them here)."""
        return workers
