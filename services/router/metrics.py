"""The router's Prometheus metrics, created once per registry."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class RouterMetrics:
    decisions: Counter
    requests: Counter
    request_duration: Histogram
    queue_wait: Histogram
    queue_depth: Gauge
    retries: Counter
    rejected: Counter
    circuit_changes: Counter
    batch_size: Histogram
    placement_duration: Histogram
    lost_answers: Counter


@cache
def router_metrics(registry: CollectorRegistry = REGISTRY) -> RouterMetrics:
    return RouterMetrics(
        decisions=Counter(
            "gpuplane_router_decisions_total",
            "Placements, by route (exclusive, affinity, least-loaded, retry, cpu-fallback), policy and device.",
            ["route", "policy", "device"],
            registry=registry,
        ),
        requests=Counter(
            "gpuplane_router_requests_total",
            "Requests answered, by kind and outcome (ok, client_error, failed, rejected).",
            ["kind", "outcome"],
            registry=registry,
        ),
        request_duration=Histogram(
            "gpuplane_router_request_duration_seconds",
            "From a request's arrival at the router to its answer.",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        ),
        queue_wait=Histogram(
            "gpuplane_router_queue_wait_seconds",
            "Time a request waited in the router's queue before placement.",
            ["priority"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30),
            registry=registry,
        ),
        queue_depth=Gauge(
            "gpuplane_router_queue_depth",
            "Requests waiting in this router, by priority.",
            ["priority"],
            registry=registry,
        ),
        retries=Counter(
            "gpuplane_router_retries_total",
            "Requests sent again to another worker, by reason (failure, worker_lost).",
            ["reason"],
            registry=registry,
        ),
        rejected=Counter(
            "gpuplane_router_rejected_total",
            "Requests refused, by reason (queue_full, not_found, bad_request, no_worker).",
            ["reason"],
            registry=registry,
        ),
        circuit_changes=Counter(
            "gpuplane_router_circuit_changes_total",
            "Circuit breaker transitions, by worker and new state.",
            ["worker", "state"],
            registry=registry,
        ),
        batch_size=Histogram(
            "gpuplane_router_batch_size",
            "Embedding requests per task sent to a worker.",
            buckets=(1, 2, 3, 4, 6, 8, 16),
            registry=registry,
        ),
        placement_duration=Histogram(
            "gpuplane_router_placement_duration_seconds",
            "Time to decide where one request goes (the router's own overhead).",
            buckets=(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01),
            registry=registry,
        ),
        lost_answers=Counter(
            "gpuplane_router_lost_answers_total",
            "Tasks whose worker no longer held them and whose answer never came (sent again).",
            registry=registry,
        ),
    )
