"""HTTP telemetry at the edge (ASGI middleware, outermost): correlation id, a server span, metrics.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which copies every request and response
through extra tasks and queues.
"""

from __future__ import annotations

import time
import uuid

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from services.api.guard import ASGIApp, Message, Receive, Scope, Send, scope_header
from shared.bus.core import reset_correlation_id, set_correlation_id
from shared.telemetry import http_metrics

CORRELATION_HTTP_HEADER = "X-Correlation-Id"
TRACE_ID_HEADER = "X-Trace-Id"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Label values stay bounded: any other method a client invents is counted as OTHER."""


class Telemetry:
    """Counts and times every request; with ``tracing`` (an OTLP exporter is set) also a server span each.

    Without an exporter no span is made at all: an unrecorded span still costs a context switch per request.
    """

    def __init__(self, app: ASGIApp, *, tracing: bool = True) -> None:
        self.app = app
        self.metrics = http_metrics()
        self.tracer = trace.get_tracer("gpuplane.http")
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation = scope_header(scope, CORRELATION_KEY) or uuid.uuid4().hex
        token = set_correlation_id(correlation)
        method: str = scope["method"]
        started = time.perf_counter()
        status = 500
        extra: list[tuple[bytes, bytes]] = [(CORRELATION_KEY, correlation.encode())]

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            if not self.tracing:
                await self.app(scope, receive, send_with_ids)
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            with self.tracer.start_as_current_span(
                f"{method} {scope['path']}",
                context=propagate.extract(headers),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope["path"]},
            ) as span:
                context = span.get_span_context()
                if context.is_valid:
                    trace_id = format_trace_id(context.trace_id)
                    extra.append((TRACE_ID_HEADER.lower().encode(), trace_id.encode()))
                    extra.append((b"traceresponse", f"00-{trace_id}-{format_span_id(context.span_id)}-01".encode()))
                await self.app(scope, receive, send_with_ids)
                route = getattr(scope.get("route"), "path", None)
                if span.is_recording():
                    span.set_attribute("http.response.status_code", status)
                    if route:
                        span.set_attribute("http.route", route)
                        span.update_name(f"{method} {route}")
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            label = method if method in METHODS else "OTHER"
            self.metrics.requests.labels(label, route, str(status)).inc()
            self.metrics.duration.labels(label, route).observe(time.perf_counter() - started)
            reset_correlation_id(token)


CORRELATION_KEY = CORRELATION_HTTP_HEADER.lower().encode()
