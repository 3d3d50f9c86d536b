"""Typed errors. They are raised deep and caught only at a boundary (CLI, HTTP, bus handler)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeGuard, get_args

ReplyCode = Literal["bad_request", "unavailable", "internal", "conflict", "not_found", "overloaded", "forbidden"]
"""What a bus handler's error reply says went wrong."""

ErrorCode = ReplyCode | Literal["no_responder", "timeout", "bad_gateway"]
"""A reply code, or what went wrong on the way to a responder (seen only by whoever asked)."""

REPLY_CODES: frozenset[str] = frozenset(get_args(ReplyCode))


def is_reply_code(code: str) -> TypeGuard[ReplyCode]:
    return code in REPLY_CODES


@dataclass(frozen=True)
class ErrorKind:
    """How one error code is answered over HTTP: on gpuplane's own paths and, in OpenAI's shape, under /v1."""

    status: int
    openai_type: str
    openai_status: int
    """Under /v1 (OpenAI's clients expect 400 where FastAPI says 422)."""
    openai_code: str | None
    """``error.code`` under /v1; None where ``error.param`` names the culprit instead."""
    retry_after: bool = False
    """Answered with a Retry-After header: trying again later may succeed."""


ERRORS: dict[ErrorCode, ErrorKind] = {
    "bad_request": ErrorKind(422, "invalid_request_error", 400, None),
    "forbidden": ErrorKind(403, "permission_error", 403, "forbidden"),
    "not_found": ErrorKind(404, "not_found_error", 404, None),
    "conflict": ErrorKind(409, "invalid_request_error", 409, "conflict"),
    "overloaded": ErrorKind(429, "rate_limit_error", 429, "overloaded", retry_after=True),
    "unavailable": ErrorKind(503, "server_error", 503, "unavailable", retry_after=True),
    "internal": ErrorKind(500, "server_error", 500, "internal"),
    # "no_router": what OpenAI clients have been told since /v1 existed (only routers answer /v1).
    "no_responder": ErrorKind(503, "server_error", 503, "no_router", retry_after=True),
    "timeout": ErrorKind(504, "server_error", 504, "timeout", retry_after=True),
    "bad_gateway": ErrorKind(502, "server_error", 502, "bad_gateway"),
}
"""The one table from an error's code to its HTTP status and OpenAI error type (see ``error_code``)."""


def error_code(exc: GpuplaneError) -> ErrorCode:
    """The row of ``ERRORS`` that answers ``exc`` at an HTTP boundary.

    A bus failure is the asker's to report (no responder, no answer in time, a broken reply), not the
    ``reply_code`` it would carry if a handler raised it; a remote error keeps its responder's code.
    """
    if isinstance(exc, RemoteError):
        return exc.code if is_reply_code(exc.code) else "bad_gateway"  # a code newer than this table
    if isinstance(exc, NoResponders):
        return "no_responder"
    if isinstance(exc, RequestTimeout):
        return "timeout"
    if isinstance(exc, BusUnavailable):
        return "unavailable"
    if isinstance(exc, BusError):
        return "bad_gateway"
    return exc.reply_code


def openai_type(status: int) -> str:
    """OpenAI's error type for an HTTP status no code of ours produced (a framework's 404 or 405)."""
    for kind in ERRORS.values():
        if kind.openai_status == status or kind.status == status:
            return kind.openai_type
    return "server_error" if status >= 500 else "invalid_request_error"


class GpuplaneError(Exception):
    """Base of every error gpuplane raises on purpose.

    ``reply_code`` is what a bus handler that raises it answers with (see ``shared.bus.core``).
    """

    reply_code: ClassVar[ReplyCode] = "unavailable"


class InvalidRequest(GpuplaneError):
    """A request that cannot be served as sent; ``field`` is the dotted path of the culprit."""

    reply_code: ClassVar[ReplyCode] = "bad_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class OperationFailed(GpuplaneError):
    """The request was valid but could not be carried out; nothing was changed."""

    reply_code: ClassVar[ReplyCode] = "internal"


class Conflict(GpuplaneError):
    """The request collides with work in progress; ``context`` names it (``run_id``)."""

    reply_code: ClassVar[ReplyCode] = "conflict"

    def __init__(self, message: str, context: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.context = dict(context or {})


class Forbidden(GpuplaneError):
    """The credential is valid but may not do this (a key asking above its priority); ``field`` says what."""

    reply_code: ClassVar[ReplyCode] = "forbidden"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(GpuplaneError):
    """The request names something that does not exist (a model, a device); ``field`` says where."""

    reply_code: ClassVar[ReplyCode] = "not_found"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Overloaded(GpuplaneError):
    """Too much work queued already: try again after ``retry_after_s`` (an HTTP 429)."""

    reply_code: ClassVar[ReplyCode] = "overloaded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.context = {"retry_after_s": f"{retry_after_s:.0f}"}


class ConfigError(GpuplaneError):
    """A setting, file or flag is wrong; the message names it."""


class BusError(GpuplaneError):
    """Talking to NATS failed."""


class NoResponders(BusError):
    """A request reached nobody: the service that answers it is not running."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"no service is answering on {subject}")
        self.subject = subject


class RequestTimeout(BusError):
    """A request reached a responder, but no answer came in time."""

    def __init__(self, subject: str, timeout_s: float) -> None:
        super().__init__(f"no answer on {subject} within {timeout_s:g} s")
        self.subject = subject
        self.timeout_s = timeout_s


class DeadlinePassed(RequestTimeout):
    """A request's own deadline passed before its answer came (answered like a bus timeout: 504)."""

    def __init__(self, what: str, timeout_s: float) -> None:
        GpuplaneError.__init__(self, f"no answer within {timeout_s:g} s ({what})")
        self.subject = what
        self.timeout_s = timeout_s


class BusUnavailable(BusError):
    """Not connected to NATS (and the operation cannot be buffered)."""


class RemoteError(BusError):
    """The responder answered with an error reply."""

    def __init__(
        self, subject: str, code: str, message: str, field: str | None = None, context: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{subject}: {message}")
        self.subject = subject
        self.code = code
        self.remote_message = message
        self.field = field
        self.context = dict(context or {})


class ContractError(BusError):
    """A message on the bus did not match its contract."""

    reply_code: ClassVar[ReplyCode] = "bad_request"


class DetectionError(GpuplaneError):
    """A GPU backend could not produce an inventory; the message says why."""


class ProcessStartError(GpuplaneError):
    """An embedded dependency (nats-server, PostgreSQL) did not start."""


class ServiceCrashed(GpuplaneError):
    """A service's background loop died; the process exits non-zero so that it is restarted."""
