"""Typed errors. They are raised deep and caught only at a boundary (CLI, HTTP, bus handler)."""

from __future__ import annotations

from typing import ClassVar, Literal

ReplyCode = Literal["bad_request", "unavailable", "internal", "conflict", "not_found", "overloaded", "forbidden"]

HTTP_STATUS: dict[ReplyCode, int] = {
    "bad_request": 422,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "overloaded": 429,
    "unavailable": 503,
    "internal": 500,
}
"""The one table from an error's code to its HTTP status (under /v1, OpenAI's clients get 400 for bad_request)."""


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
