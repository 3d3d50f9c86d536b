"""What both bus implementations share: encoding, headers, tracing, metrics, error replies.

Telemetry lives here, at the edge, so handlers stay free of it.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from shared.bus.base import CORRELATION_HEADER, TYPE_HEADER, Delivery, Handler, M, R
from shared.contracts import ErrorReply, Message
from shared.errors import BusError, ContractError, GpuplaneError, RemoteError
from shared.subjects import StreamSpec, stream_for
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
    """Headers for a message leaving this process: type, correlation id, trace context."""
    headers: dict[str, str] = {TYPE_HEADER: message.type}
    headers[CORRELATION_HEADER] = _correlation_id.get() or uuid.uuid4().hex
    propagate.inject(headers)
    return headers


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
            found.append(decode(data, message_type, subject))
        except ContractError as exc:
            metrics.errors.labels(service, pattern).inc()
            log.warning("skipping stored message: %s", exc)
    return found


@dataclass(frozen=True)
class Reply:
    """A reply and the headers it leaves with: the request's correlation id, the handler's span."""

    message: Message
    headers: dict[str, str]


class Dispatcher:
    """Runs one handler for one raw message with decoding, tracing, metrics and error replies."""

    def __init__(self, service: str, metrics: BusMetrics) -> None:
        self._service = service
        self._metrics = metrics
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
        parent = propagate.extract(headers)
        started = time.perf_counter()
        outcome = "ok"
        reply: Message | None = None
        out: Reply | None = None
        try:
            with self._tracer.start_as_current_span(
                f"receive {pattern}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": subject,
                    "gpuplane.correlation_id": correlation,
                },
            ) as span:
                try:
                    message = decode(data, message_type, subject)
                    reply = await handler(
                        message,
                        Delivery(
                            subject=subject,
                            headers=headers,
                            correlation_id=correlation,
                            reply_expected=reply_expected,
                        ),
                    )
                except GpuplaneError as exc:
                    outcome = "invalid" if exc.reply_code == "bad_request" else "error"
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    log.warning(
                        "%s on %s: %s", "rejected request" if outcome == "invalid" else "handler failed", subject, exc
                    )
                    reply = ErrorReply(
                        code=exc.reply_code,
                        message=str(exc),
                        field=getattr(exc, "field", None),
                        context=getattr(exc, "context", {}),
                    )
                except Exception as exc:  # noqa: BLE001 - the bus is a boundary: one bad message must not kill the subscription
                    outcome = "error"
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, repr(exc)))
                    log.exception("handler for %s crashed", subject)
                    reply = ErrorReply(code="internal", message=f"{type(exc).__name__}: {exc}")
                if reply_expected and reply is not None:
                    out = Reply(reply, outgoing_headers(reply))
        finally:
            _correlation_id.reset(token)
            self._metrics.handled.labels(self._service, pattern, outcome).inc()
            self._metrics.handler_duration.labels(self._service, pattern).observe(time.perf_counter() - started)
            if outcome != "ok":
                self._metrics.errors.labels(self._service, pattern).inc()
        return out
