"""The gateway's own Prometheus metrics (HTTP and bus metrics are in shared.telemetry)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class GatewayMetrics:
    key_requests: Counter
    key_prompt_tokens: Counter
    key_completion_tokens: Counter
    refused: Counter
    audit_records: Counter
    audit_dropped: Counter
    audit_pending: Gauge


@cache
def gateway_metrics(registry: CollectorRegistry = REGISTRY) -> GatewayMetrics:
    """Label values stay bounded: key names (never the keys), actions, reasons from fixed lists."""
    return GatewayMetrics(
        key_requests=Counter(
            "gpuplane_api_key_requests_total",
            "Inference requests per key name (the admin token counts as its name), by outcome (ok, error, limited).",
            ["key", "outcome"],
            registry=registry,
        ),
        key_prompt_tokens=Counter(
            "gpuplane_api_key_prompt_tokens_total",
            "Prompt tokens of answered requests per key name, as the engine reported them.",
            ["key"],
            registry=registry,
        ),
        key_completion_tokens=Counter(
            "gpuplane_api_key_completion_tokens_total",
            "Completion tokens of answered requests per key name, as the engine reported them.",
            ["key"],
            registry=registry,
        ),
        refused=Counter(
            "gpuplane_http_refused_total",
            "Requests refused before any route ran, by reason (host, cross_site, content_type, too_large, "
            "bad_json, unauthenticated, forbidden, rate_limited).",
            ["reason"],
            registry=registry,
        ),
        audit_records=Counter(
            "gpuplane_audit_records_total",
            "Audit records written, by action and outcome.",
            ["action", "outcome"],
            registry=registry,
        ),
        audit_dropped=Counter(
            "gpuplane_audit_dropped_total",
            "Audit records dropped because too many waited for the database (or auth failures past the rate).",
            ["reason"],
            registry=registry,
        ),
        audit_pending=Gauge(
            "gpuplane_audit_pending", "Audit records waiting to be written to PostgreSQL.", registry=registry
        ),
    )
