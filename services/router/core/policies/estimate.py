"""Expected completion time of a request on a worker: the figure our policies compare."""

from __future__ import annotations

from services.router.core.model import PlacementRequest, WorkerSnapshot

ERROR_PENALTY = 4.0
"""A worker failing half its requests looks three times slower: a failure costs a retry elsewhere."""


def service_s(worker: WorkerSnapshot, request: PlacementRequest) -> float:
    """The worker's measured time per request, else the catalog's guess (for the reference GPU) over the
    device's speed, so that before anything is measured a fast GPU is not taken for a slow one."""
    if worker.latency_avg_s > 0:
        return worker.latency_avg_s
    return request.expected_latency_s / worker.speed


def switch_s(worker: WorkerSnapshot, request: PlacementRequest) -> float:
    """What loading the request's group would cost on this worker (0 when it holds it)."""
    if request.group in worker.groups_loaded:
        return 0.0
    if request.group in worker.cpu_cached_groups:
        return request.group_load_s * request.cpu_reload_fraction
    return request.group_load_s


def expected_s(worker: WorkerSnapshot, request: PlacementRequest) -> float:
    """Queue wait plus switch plus service, inflated by the worker's error rate.

    Work ahead of the request is spread over the worker's slots; a worker with a free slot
    starts at once.
    """
    service = service_s(worker, request)
    ahead = max(0, worker.load - worker.slots + 1)
    wait = ahead * service / worker.slots
    return (wait + switch_s(worker, request) + service) * (1.0 + ERROR_PENALTY * worker.error_rate)
