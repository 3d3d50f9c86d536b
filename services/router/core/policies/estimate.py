"""Expected completion time of a request on a worker: the figure our policies compare."""

from __future__ import annotations

from services.router.core.estimates import slowdown
from services.router.core.model import PlacementRequest, WorkerSnapshot

ERROR_PENALTY = 4.0
"""A worker failing half its requests looks three times slower: a failure costs a retry elsewhere."""
EVICTION_FACTOR = 2.0
"""A switch that must evict a group costs twice its load: the evicted group's next request pays a load too."""
KV_FULL = 0.95
"""An engine whose KV cache is this full queues (or preempts) what comes next: it has no free slot."""


def service_s(worker: WorkerSnapshot, request: PlacementRequest) -> float:
    """This request's time alone on the worker: the core's per-model estimate when the snapshot has one;
    else the worker's measured average, else the catalog's guess (reference GPU) over the device's speed."""
    if worker.service_s > 0:
        return worker.service_s
    if worker.latency_avg_s > 0:
        return worker.latency_avg_s
    return request.expected_latency_s / worker.speed


def switch_s(worker: WorkerSnapshot, request: PlacementRequest) -> float:
    """What loading the request's group would cost on this worker (0 when it holds it or will load it
    anyway for a request already sent there: that load is in ``coming_load_s``)."""
    if request.group in worker.groups_loaded or request.group in worker.groups_coming:
        return 0.0
    load = request.group_load_s
    if request.group in worker.cpu_cached_groups:
        load *= request.cpu_reload_fraction
    free = worker.vram_free_mb
    if free is not None and request.group_vram_mb > free:
        # It evicts a group that later requests will likely have to load again.
        load *= EVICTION_FACTOR
    return load


def expected_s(worker: WorkerSnapshot, request: PlacementRequest) -> float:
    """Queue wait plus switch plus service, inflated by the worker's error rate.

    With a free slot it starts at once, slowed by its neighbours (``t1 x (1 + k x (c - 1))``). Otherwise
    it waits for ``load - slots + 1`` requests to finish: that share of the backlog's work, done ``slots``
    at a time at full concurrency. Group loads already due there come first, whole (they hold the device).
    """
    alone = service_s(worker, request)
    slots = worker.slots
    load = worker.load
    if worker.kv_cache_usage is not None and worker.kv_cache_usage >= KV_FULL:
        load = max(load, slots)
    if load < slots:
        wait = 0.0
        service = alone * slowdown(load + 1, worker.batching)
    else:
        full = slowdown(slots, worker.batching)
        backlog = worker.backlog_s if worker.backlog_s is not None and load > 0 else load * alone
        per_request = backlog / load if load > 0 else alone
        wait = per_request * (load - slots + 1) * full / slots
        service = alone * full
    wait += worker.coming_load_s
    return (wait + switch_s(worker, request) + service) * (1.0 + ERROR_PENALTY * worker.error_rate)
