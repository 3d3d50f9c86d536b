"""What both bus implementations share: encoding, headers, tracing, metrics, error replies.

Telemetry lives here, at the edge, so handlers stay free of it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from shared.bus.base import CORRELATION_HEADER, TYPE_HEADER, Delivery, Handler, M, R
from shared.contracts import ErrorReply, Message
from shared.errors import BusError, ContractError, GpuplaneError, RemoteError
from shared.subjects import HEARTBEAT_ALL, WORKER_STATUS_ALL, StreamSpec, matches, sender_subject, stream_for
from shared.telemetry import BusMetrics

log = logging.getLogger(__name__)

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpuplane_correlation_id", default=None)


def current_correlation_id() -> str | None:
    return _correlation_id.get()


def set_correlation_id(value: str | None) -> contextvars.Token[str | None]:
    """Bind a correlation id to the current task (the HTTP middleware does this per request)."""
    return _correlation_id.set(value)


def reset_correlation_id(token: contextvars.Token[str | None]) -> None:
    _correlation_id.reset(token)


def outgoing_headers(message: Message) -> dict[str, str]:
    """Headers for a message leaving this process: type, correlation id, and the current span's trace context."""
    headers: dict[str, str] = {TYPE_HEADER: message.type}
    headers[CORRELATION_HEADER] = _correlation_id.get() or uuid.uuid4().hex
    propagate.inject(headers)
    return headers


STATUS_SUBJECTS = (HEARTBEAT_ALL, WORKER_STATUS_ALL)
"""Sent every second or two by every process: traced only when asked (``GPUPLANE_TRACE_STATUS_MESSAGES``)."""


class Tracing:
    """The bus's spans: one per message sent, request made and message handled, with OpenTelemetry's
    messaging attributes; none for status messages unless asked."""

    def __init__(self, *, trace_status_messages: bool = False) -> None:
        self._tracer = trace.get_tracer("gpuplane.bus")
        self._status = trace_status_messages

    def traced(self, subject: str) -> bool:
        return self._status or not any(matches(p, subject) for p in STATUS_SUBJECTS)

    @contextmanager
    def sending(self, subject: str, message: Message, *, request: bool = False) -> Iterator[dict[str, str]]:
        """A producer (or client, for a request) span around a send; yields the headers to send, which
        carry this span's context so that the receivers' spans are its children."""
        if not self.traced(subject):
            yield outgoing_headers(message)
            return
        with self._tracer.start_as_current_span(
            f"{'request' if request else 'send'} {subject}",
            kind=SpanKind.CLIENT if request else SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.operation.type": "send",
                "messaging.operation.name": "request" if request else "publish",
                "gpuplane.message.type": message.type,
            },
        ):
            yield outgoing_headers(message)


def work_stream(subject: str) -> StreamSpec:
    """The work-queue stream that ``subject`` belongs to; ``BusError`` if it is not on one."""
    spec = stream_for(subject)
    if spec is None or not spec.work_queue:
        raise BusError(f"{subject} is not on a work-queue stream; see shared.subjects.STREAMS")
    return spec


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode()


def decode(data: bytes, message_type: type[M], subject: str) -> M:
    try:
        return message_type.model_validate_json(data)
    except ValidationError as exc:
        raise ContractError(f"message on {subject} is not a valid {message_type.__name__}: {exc}") from exc


def decode_reply(data: bytes, reply_type: type[R], subject: str) -> R:
    """Decode a reply; an ``ErrorReply`` becomes ``RemoteError``."""
    if b'"gpuplane.error.v1"' in data:
        try:
            err = ErrorReply.model_validate_json(data)
        except ValidationError:
            pass
        else:
            raise RemoteError(subject, err.code, err.message, err.field, err.context)
    return decode(data, reply_type, subject)


def decode_stored(
    stored: Iterable[tuple[str, bytes]], message_type: type[M], *, metrics: BusMetrics, service: str, pattern: str
) -> list[M]:
    """Decode the latest stored event of each subject; one that breaks its contract is skipped
    (logged and counted), so it cannot hide every other host's."""
    found: list[M] = []
    for subject, data in stored:
        try:
            message = decode(data, message_type, subject)
        except ContractError as exc:
            metrics.errors.labels(service, pattern).inc()
            log.warning("skipping stored message: %s", exc)
            continue
        claimed = sender_subject(message)
        if claimed is not None and claimed != subject:
            metrics.errors.labels(service, pattern).inc()
            log.warning("skipping a stored %s on %s that claims to come from %s", message.type, subject, claimed)
            continue
        found.append(message)
    return found


@dataclass(frozen=True)
class Reply:
    """A reply and the headers it leaves with: the request's correlation id, the handler's span."""

    message: Message
    headers: dict[str, str]


class Dispatcher:
    """Runs one handler for one raw message with decoding, tracing, metrics and error replies."""

    def __init__(self, service: str, metrics: BusMetrics, tracing: Tracing | None = None) -> None:
        self._service = service
        self._metrics = metrics
        self._tracing = tracing or Tracing()
        self._tracer = trace.get_tracer("gpuplane.bus")

    async def dispatch(
        self,
        *,
        pattern: str,
        subject: str,
        data: bytes,
        headers: Mapping[str, str] | None,
        message_type: type[M],
        handler: Handler[M],
        reply_expected: bool,
    ) -> Reply | None:
        """Returns the reply to send (if one is expected), never raises for a bad message."""
        headers = dict(headers or {})
        correlation = headers.get(CORRELATION_HEADER) or uuid.uuid4().hex
        token = _correlation_id.set(correlation)
        started = time.perf_counter()
        outcome = "ok"
        out: Reply | None = None
        run = functools.partial(self._run, subject, data, headers, correlation, message_type, handler, reply_expected)
        try:
            if not self._tracing.traced(subject):
                outcome, out = await run()
                return out
            with self._tracer.start_as_current_span(
                f"process {pattern}",
                context=propagate.extract(headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": subject,
                    "messaging.operation.type": "process",
                    "gpuplane.correlation_id": correlation,
                },
            ) as span:
                outcome, out = await run()
                if outcome != "ok":
                    span.set_status(Status(StatusCode.ERROR, outcome))
                return out
        finally:
            _correlation_id.reset(token)
            self._metrics.handled.labels(self._service, pattern, outcome).inc()
            self._metrics.handler_duration.labels(self._service, pattern).observe(time.perf_counter() - started)
            if outcome != "ok":
                self._metrics.errors.labels(self._service, pattern).inc()

    async def _run(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        correlation: str,
        message_type: type[M],
        handler: Handler[M],
        reply_expected: bool,
    ) -> tuple[str, Reply | None]:
        """Decode, check the sender, call the handler; the outcome and the reply to send."""
        outcome = "ok"
        reply: Message | None = None
        try:
            message = decode(data, message_type, subject)
            claimed = sender_subject(message)
            if claimed is not None and claimed != subject:
                # NATS let the publisher use ``subject`` only; the body speaks for someone else.
                log.warning("dropped a %s on %s that claims to come from %s", message.type, subject, claimed)
                return "forged", None
            reply = await handler(
                message,
                Delivery(subject=subject, headers=headers, correlation_id=correlation, reply_expected=reply_expected),
            )
        except GpuplaneError as exc:
            outcome = "invalid" if exc.reply_code == "bad_request" else "error"
            detail = getattr(exc, "detail", None)
            log.warning(
                "%s on %s: %s%s",
                "rejected request" if outcome == "invalid" else "handler failed",
                subject,
                exc,
                f" ({detail})" if detail else "",
            )
            reply = ErrorReply(
                code=exc.reply_code,
                message=str(exc),
                field=getattr(exc, "field", None),
                context=getattr(exc, "context", {}),
            )
        except Exception as exc:  # noqa: BLE001 - the bus is a boundary: one bad message must not kill the subscription
            outcome = "error"
            trace.get_current_span().record_exception(exc)
            log.exception("handler for %s crashed", subject)
            # What the exception says may name files, addresses or a driver's text: it stays in this log.
            reply = ErrorReply(code="internal", message=f"{type(exc).__name__} while handling {subject}; see its log")
        if reply_expected and reply is not None:
            return outcome, Reply(reply, outgoing_headers(reply))
        return outcome, None
