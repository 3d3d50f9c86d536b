"""The worker's Prometheus metrics, created once per registry."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class WorkerMetrics:
    tasks: Counter
    task_seconds: Histogram
    group_loads: Counter
    in_flight: Gauge
    queue_depth: Gauge


@cache
def worker_metrics(registry: CollectorRegistry = REGISTRY) -> WorkerMetrics:
    """Worker metrics, created once per registry."""
    return WorkerMetrics(
        tasks=Counter(
            "gpuplane_worker_tasks_total",
            "Tasks a worker finished, by outcome (ok, rejected: the request's fault, error).",
            ["worker", "device", "kind", "outcome"],
            registry=registry,
        ),
        task_seconds=Histogram(
            "gpuplane_worker_task_seconds",
            "Time from a task's start on a slot to its answer, group loads included.",
            ["worker", "device", "kind"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        ),
        group_loads=Counter(
            "gpuplane_worker_group_loads_total",
            "Model groups loaded into VRAM, by source (disk or cpu_cache).",
            ["worker", "group", "source"],
            registry=registry,
        ),
        in_flight=Gauge(
            "gpuplane_worker_in_flight", "Tasks running on a worker's slots.", ["worker"], registry=registry
        ),
        queue_depth=Gauge(
            "gpuplane_worker_queue_depth", "Tasks waiting for a slot of a worker.", ["worker"], registry=registry
        ),
    )
