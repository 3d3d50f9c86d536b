"""Logging, Prometheus metrics and OpenTelemetry tracing, set up once per process."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shared.contracts import Inventory


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        from shared.bus.core import current_correlation_id

        payload = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        correlation = current_correlation_id()
        if correlation:
            payload["correlation_id"] = correlation
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def setup_logging(service: str, level: str = "INFO", as_json: bool = False) -> None:
    """Configure the root logger; every line names the service it came from."""
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s [{service}] %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py logs every reconnect attempt at ERROR through our error callback already.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # One INFO line per request would bury `up`'s own messages while it polls /healthz.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def tracing_wanted(otlp_endpoint: str | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether spans should be made at all: an endpoint is set (gpuplane's or OpenTelemetry's own
    variables) and OpenTelemetry is not switched off (``OTEL_SDK_DISABLED``, ``OTEL_TRACES_EXPORTER=none``)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    endpoints = (otlp_endpoint, env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return any(endpoints)


def setup_tracing(service: str, otlp_endpoint: str | None) -> None:
    """Install an OpenTelemetry tracer provider exporting over OTLP/HTTP, when an endpoint is configured.

    The standard ``OTEL_*`` variables apply (endpoint, headers, timeout, sampler, ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``); ``GPUPLANE_OTLP_ENDPOINT`` is a full traces URL and wins. With no
    endpoint, no provider is installed and spans cost next to nothing (they are never recorded).
    """
    if not tracing_wanted(otlp_endpoint):
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": f"gpuplane-{service}"}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint) if otlp_endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose this process's Prometheus registry on ``host:port`` (port 0 leaves it off)."""
    if port:
        start_http_server(port, addr=host)


@dataclass(frozen=True)
class BusMetrics:
    handled: Counter
    errors: Counter
    handler_duration: Histogram
    published: Counter
    publish_errors: Counter


@cache
def bus_metrics(registry: CollectorRegistry = REGISTRY) -> BusMetrics:
    """Bus metrics, created once per registry."""
    return BusMetrics(
        handled=Counter(
            "gpuplane_bus_messages_handled_total",
            "Messages handled by a subscription, by outcome (ok, invalid, error).",
            ["service", "subject", "outcome"],
            registry=registry,
        ),
        errors=Counter(
            "gpuplane_bus_handler_errors_total",
            "Messages whose handler failed or that broke their contract.",
            ["service", "subject"],
            registry=registry,
        ),
        handler_duration=Histogram(
            "gpuplane_bus_handler_duration_seconds",
            "Time spent in a message handler.",
            ["service", "subject"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        ),
        published=Counter(
            "gpuplane_bus_messages_published_total",
            "Messages published, by message type.",
            ["service", "type"],
            registry=registry,
        ),
        publish_errors=Counter(
            "gpuplane_bus_publish_errors_total",
            "Publishes that failed.",
            ["service", "type"],
            registry=registry,
        ),
    )


@dataclass(frozen=True)
class GpuMetrics:
    memory_used: Gauge
    memory_total: Gauge
    utilization: Gauge
    temperature: Gauge
    power_draw: Gauge
    power_limit: Gauge
    healthy: Gauge
    count: Gauge

    def update(self, inventories: Iterable[Inventory]) -> None:
        """Replace every per-GPU series with what the inventories say now."""
        for gauge in (
            self.memory_used,
            self.memory_total,
            self.utilization,
            self.temperature,
            self.power_draw,
            self.power_limit,
            self.healthy,
            self.count,
        ):
            gauge.clear()
        for inv in inventories:
            self.count.labels(inv.host, inv.source.value).set(len(inv.gpus))
            for gpu in inv.gpus:
                labels = (inv.host, str(gpu.index), gpu.uuid, gpu.name, inv.source.value)
                self.memory_used.labels(*labels).set(gpu.vram_used_mb * 1024 * 1024)
                self.memory_total.labels(*labels).set(gpu.vram_total_mb * 1024 * 1024)
                self.healthy.labels(*labels).set(1 if gpu.healthy else 0)
                if gpu.utilization_percent is not None:
                    self.utilization.labels(*labels).set(gpu.utilization_percent / 100.0)
                if gpu.temperature_c is not None:
                    self.temperature.labels(*labels).set(gpu.temperature_c)
                if gpu.power_draw_w is not None:
                    self.power_draw.labels(*labels).set(gpu.power_draw_w)
                if gpu.power_limit_w is not None:
                    self.power_limit.labels(*labels).set(gpu.power_limit_w)


@cache
def gpu_metrics(registry: CollectorRegistry = REGISTRY) -> GpuMetrics:
    """Per-GPU gauges, created once per registry."""
    labels = ["host", "gpu", "uuid", "name", "source"]

    def gauge(name: str, doc: str, names: list[str] = labels) -> Gauge:
        return Gauge(name, doc, names, registry=registry)

    return GpuMetrics(
        memory_used=gauge("gpuplane_gpu_memory_used_bytes", "GPU memory in use."),
        memory_total=gauge("gpuplane_gpu_memory_total_bytes", "GPU memory installed."),
        utilization=gauge("gpuplane_gpu_utilization_ratio", "GPU busy fraction over the last sample (0..1)."),
        temperature=gauge("gpuplane_gpu_temperature_celsius", "GPU core temperature."),
        power_draw=gauge("gpuplane_gpu_power_draw_watts", "GPU power draw."),
        power_limit=gauge("gpuplane_gpu_power_limit_watts", "GPU enforced power limit."),
        healthy=gauge("gpuplane_gpu_healthy", "1 when the GPU answers its queries, else 0."),
        count=gauge("gpuplane_gpus", "GPUs in the latest inventory of a host.", ["host", "source"]),
    )


@dataclass(frozen=True)
class HttpMetrics:
    requests: Counter
    duration: Histogram


@cache
def http_metrics(registry: CollectorRegistry = REGISTRY) -> HttpMetrics:
    return HttpMetrics(
        requests=Counter(
            "gpuplane_http_requests_total",
            "HTTP requests served by the gateway.",
            ["method", "route", "status"],
            registry=registry,
        ),
        duration=Histogram(
            "gpuplane_http_request_duration_seconds",
            "HTTP request handling time.",
            ["method", "route"],
            registry=registry,
        ),
    )
