"""The bus protocol every service talks through, with a NATS and an in-memory implementation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from shared.contracts import Message

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)

CORRELATION_HEADER = "Gpuplane-Correlation-Id"
TYPE_HEADER = "Gpuplane-Type"


@dataclass(frozen=True)
class Delivery:
    """What a handler learns about the message besides its body."""

    subject: str
    headers: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str = ""
    reply_expected: bool = False


Handler = Callable[[M, Delivery], Awaitable[Message | None]]
"""A handler returns a reply message (sent only if the sender asked for one) or None."""


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


class Bus(Protocol):
    """Publish, subscribe, request, and read the latest stored events.

    Publishing to a subject that belongs to a stream in ``shared.subjects.STREAMS`` also
    stores the message, so that ``latest`` can serve subscribers that arrive late.
    """

    @property
    def is_connected(self) -> bool: ...

    async def publish(self, subject: str, message: Message) -> None: ...

    async def subscribe(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        queue: str | None = None,
        max_in_flight: int = 1,
    ) -> Subscription:
        """Call ``handler`` for each message; with ``max_in_flight`` > 1, up to that many at once."""
        ...

    async def request(
        self, subject: str, message: Message, reply_type: type[R], *, timeout_s: float | None = None
    ) -> R:
        """Send and wait for one reply.

        Raises ``NoResponders`` when nobody listens, ``RequestTimeout`` when nobody answers in
        time, ``RemoteError`` when the responder answered with an ``ErrorReply``.
        """
        ...

    async def gather(
        self, subject: str, message: Message, reply_type: type[R], *, timeout_s: float, max_replies: int | None = None
    ) -> list[R]:
        """Send to every subscriber (queue groups: one member each) and collect the replies that come within
        ``timeout_s``, or until ``max_replies`` came. Raises ``NoResponders`` when nobody listens."""
        ...

    async def latest(self, subject_filter: str, message_type: type[M]) -> list[M]:
        """The last stored message of every subject matching ``subject_filter``."""
        ...

    async def consume(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        durable: str,
        ack_wait_s: float = 30.0,
        max_deliver: int = 5,
        retry_delay_s: float = 5.0,
    ) -> Subscription:
        """Take work from a work-queue stream (``StreamSpec.work_queue``), one message at a time.

        A message is acknowledged when ``handler`` returns, and kept alive while it runs (however
        long). If the handler raises, it is delivered again after ``retry_delay_s``, at most
        ``max_deliver`` times in all; if this process dies first, it is delivered again to the
        next consumer with the same ``durable`` name once ``ack_wait_s`` has passed.
        """
        ...

    async def drain(self) -> None:
        """Finish in-flight handlers, flush, and disconnect."""
        ...
