"""The bus on a real NATS server (nats-py), with JetStream for events late subscribers need."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from shared.bus.base import Handler, M, R
from shared.bus.core import Dispatcher, Tracing, decode_reply, decode_stored, encode, work_stream
from shared.contracts import ErrorReply, Message
from shared.errors import BusError, BusUnavailable, NoResponders, RequestTimeout
from shared.identities import Identity, inbox_prefix
from shared.natsauth import NatsCredentials, redact_url
from shared.subjects import STREAMS, StreamSpec, stream_for
from shared.telemetry import bus_metrics

log = logging.getLogger(__name__)

# nats-py's default (60 attempts) gives up after about two minutes; a control plane never should.
RECONNECT_FOREVER = -1
# Core publishes made while disconnected wait in this buffer and go out on reconnect. JetStream
# publishes (stream subjects) need the server's acknowledgement and fail after the request
# timeout instead; their callers retry (the detector carries unsent changes forward).
RECONNECT_BUFFER_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class _NatsSubscription:
    sub: Subscription

    async def unsubscribe(self) -> None:
        await self.sub.unsubscribe()


@dataclass(frozen=True)
class _PullConsumer:
    """A work-queue consumer: its fetch loop runs until unsubscribed or the bus drains."""

    loop: asyncio.Task[None]

    async def unsubscribe(self) -> None:
        self.loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.loop


class NatsBus:
    """A ``Bus`` on nats-py. Build it with :func:`connect`."""

    def __init__(
        self,
        nc: Client,
        service: str,
        default_timeout_s: float,
        drain_timeout_s: float = 5.0,
        *,
        trace_status_messages: bool = False,
    ) -> None:
        self._nc = nc
        self._drain_timeout_s = drain_timeout_s
        self._js = nc.jetstream(timeout=default_timeout_s)
        self._service = service
        self._timeout_s = default_timeout_s
        self._tracing = Tracing(trace_status_messages=trace_status_messages)
        self._dispatcher = Dispatcher(service, bus_metrics(), self._tracing)
        self._metrics = bus_metrics()
        self._jetstream_ok = True
        self._consumers: set[_PullConsumer] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._concurrent_subs: list[Subscription] = []

    @property
    def is_connected(self) -> bool:
        return self._nc.is_connected

    @property
    def client(self) -> Client:
        return self._nc

    async def ensure_streams(self, specs: tuple[StreamSpec, ...] = STREAMS) -> None:
        """Create or update the event streams where they differ from ``specs``.

        Only the ``admin`` identity may change them where NATS checks permissions (``gpuplane up``
        does it before starting the services); others find them as they should be and change nothing.
        Without JetStream, events are still published, not kept.
        """
        for spec in specs:
            config = StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                retention=RetentionPolicy.WORK_QUEUE if spec.work_queue else RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                max_msgs_per_subject=spec.max_msgs_per_subject,
                max_age=spec.max_age_s,
                num_replicas=1,
            )
            try:
                try:
                    info = await self._js.stream_info(spec.name)
                except nats.js.errors.NotFoundError:
                    await self._js.add_stream(config)
                    log.info("created JetStream stream %s for %s", spec.name, ", ".join(spec.subjects))
                else:
                    if not _same_stream(info.config, config):
                        await self._js.update_stream(config)
                        log.info("updated JetStream stream %s", spec.name)
            except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
                self._jetstream_ok = False
                log.warning(
                    "JetStream is not enabled on %s (%s): events are published but not kept for late readers",
                    redact_url(self._nc.connected_url.geturl()) if self._nc.connected_url else "nats",
                    type(exc).__name__,
                )
                return
            except (nats.errors.TimeoutError, TimeoutError) as exc:
                # A permissions violation is reported asynchronously; the request itself just times out.
                raise BusError(
                    f"the JetStream stream {spec.name} is missing or out of date and this identity may not "
                    "change it: run `gpuplane nats-init` with the admin credentials (gpuplane up does this)"
                ) from exc

    async def publish(self, subject: str, message: Message) -> None:
        data = encode(message)
        with self._tracing.sending(subject, message) as headers:
            try:
                if self._jetstream_ok and stream_for(subject) is not None:
                    # Acknowledged by the server once stored (fsync'd with sync_interval: always).
                    await self._js.publish(subject, data, headers=headers)
                else:
                    await self._nc.publish(subject, data, headers=headers)
            except (nats.errors.Error, TimeoutError) as exc:
                self._metrics.publish_errors.labels(self._service, message.type).inc()
                raise BusError(f"publish to {subject} failed: {type(exc).__name__}: {exc}") from exc
        self._metrics.published.labels(self._service, message.type).inc()

    async def subscribe(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        queue: str | None = None,
        max_in_flight: int = 1,
    ) -> _NatsSubscription:
        async def handle(msg: Msg) -> None:
            # A JetStream publish carries the publisher's ack inbox as its reply subject:
            # events on stream subjects are never requests, so nothing may answer them.
            wants_reply = bool(msg.reply) and stream_for(msg.subject) is None
            reply = await self._dispatcher.dispatch(
                pattern=subject,
                subject=msg.subject,
                data=msg.data,
                headers=msg.headers,
                message_type=message_type,
                handler=handler,
                reply_expected=wants_reply,
            )
            if reply is not None and wants_reply:
                try:
                    await self._nc.publish(msg.reply, encode(reply.message), headers=reply.headers)
                except nats.errors.Error as exc:
                    log.warning("could not answer on %s: %s", msg.subject, exc)

        if max_in_flight > 1:
            # nats-py runs one callback at a time per subscription; long handlers (an inference)
            # get their own task, at most ``max_in_flight`` at once.
            slots = asyncio.Semaphore(max_in_flight)

            async def guarded(msg: Msg) -> None:
                try:
                    await handle(msg)
                finally:
                    slots.release()

            async def on_message(msg: Msg) -> None:
                await slots.acquire()
                task = asyncio.create_task(guarded(msg), name=f"handle {msg.subject}")
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)

        else:
            on_message = handle

        sub = await self._nc.subscribe(subject, queue=queue or "", cb=on_message)
        if max_in_flight > 1:
            self._concurrent_subs.append(sub)
        if self._nc.is_connected:
            try:
                await self._confirm_sent()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("subscription to %s not confirmed yet: %s", subject, exc)
        return _NatsSubscription(sub)

    async def _confirm_sent(self) -> None:
        """Return once the server has processed every command sent so far (a SUB, say).

        nats-py 2.16's ``flush()`` writes its PING straight to the socket, ahead of commands
        still waiting in the client's pending buffer, so its PONG can come back before the
        server has seen our SUB (and a message published right after is lost). Writing the
        buffer out first, then the PING round trip, restores the ordering ``flush()`` promises.
        """
        timeout = max(1, round(self._timeout_s))
        await asyncio.wait_for(self._nc._flush_pending(force_flush=True), timeout)
        await self._nc.flush(timeout=timeout)

    async def request(
        self, subject: str, message: Message, reply_type: type[R], *, timeout_s: float | None = None
    ) -> R:
        timeout = timeout_s or self._timeout_s
        if not self._nc.is_connected:
            raise BusUnavailable(f"not connected to NATS; cannot ask {subject}")
        with self._tracing.sending(subject, message, request=True) as headers:
            try:
                msg = await self._nc.request(subject, encode(message), timeout=timeout, headers=headers)
            except nats.errors.NoRespondersError as exc:
                raise NoResponders(subject) from exc
            except nats.errors.TimeoutError as exc:
                raise RequestTimeout(subject, timeout) from exc
            except nats.errors.Error as exc:
                raise BusUnavailable(f"request to {subject} failed: {type(exc).__name__}: {exc}") from exc
        return decode_reply(msg.data, reply_type, subject)

    async def gather(
        self, subject: str, message: Message, reply_type: type[R], *, timeout_s: float, max_replies: int | None = None
    ) -> list[R]:
        if not self._nc.is_connected:
            raise BusUnavailable(f"not connected to NATS; cannot ask {subject}")
        arrived: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_reply(msg: Msg) -> None:
            arrived.put_nowait(msg)

        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=on_reply)
        replies: list[R] = []
        try:
            with self._tracing.sending(subject, message, request=True) as headers:
                await self._nc.publish(subject, encode(message), reply=inbox, headers=headers)
            deadline = asyncio.get_running_loop().time() + timeout_s
            while max_replies is None or len(replies) < max_replies:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    msg = await asyncio.wait_for(arrived.get(), remaining)
                except TimeoutError:
                    break
                if msg.headers and msg.headers.get("Status") == "503":
                    raise NoResponders(subject)  # the server says nobody subscribes
                try:
                    replies.append(decode_reply(msg.data, reply_type, subject))
                except BusError as exc:
                    log.warning("ignoring a reply on %s: %s", subject, exc)
        except nats.errors.Error as exc:
            raise BusUnavailable(f"asking {subject} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return replies

    async def latest(self, subject_filter: str, message_type: type[M]) -> list[M]:
        spec = stream_for(subject_filter.replace(">", "x").replace("*", "x"))
        if spec is None or not self._jetstream_ok:
            return []
        try:
            info = await self._js.stream_info(spec.name, subjects_filter=subject_filter)
            stored: list[tuple[str, bytes]] = []
            for subject in sorted((info.state.subjects or {}).keys()):
                raw = await self._js.get_last_msg(spec.name, subject)
                if raw.data is not None:
                    stored.append((subject, raw.data))
            return decode_stored(
                stored, message_type, metrics=self._metrics, service=self._service, pattern=subject_filter
            )
        except nats.js.errors.NotFoundError:
            return []
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"reading the latest {subject_filter} failed: {type(exc).__name__}: {exc}") from exc

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
    ) -> _PullConsumer:
        spec = work_stream(subject)
        if not self._jetstream_ok:
            raise BusUnavailable(f"work queue {subject} needs JetStream, which this NATS server does not offer")
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=max_deliver,
            filter_subject=subject,
        )
        try:
            pull = await self._js.pull_subscribe(subject, durable=durable, stream=spec.name, config=config)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"cannot consume {subject}: {type(exc).__name__}: {exc}") from exc
        consumer = _PullConsumer(
            asyncio.create_task(
                self._pull_loop(pull, subject, message_type, handler, ack_wait_s, retry_delay_s),
                name=f"consume {subject}",
            )
        )
        self._consumers.add(consumer)
        consumer.loop.add_done_callback(lambda _: self._consumers.discard(consumer))
        return consumer

    async def _pull_loop(
        self,
        pull: nats.js.JetStreamContext.PullSubscription,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        ack_wait_s: float,
        retry_delay_s: float,
    ) -> None:
        while True:
            try:
                batch = await pull.fetch(1, timeout=5)
            except TimeoutError:
                continue
            except nats.errors.Error as exc:
                log.warning("fetching from %s failed (%s); retrying", subject, exc)
                await asyncio.sleep(1.0)
                continue
            for msg in batch:
                await self._work_on(msg, subject, message_type, handler, ack_wait_s, retry_delay_s)

    async def _work_on(
        self,
        msg: Msg,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        ack_wait_s: float,
        retry_delay_s: float,
    ) -> None:
        async def keep_alive() -> None:
            # Without this, a run longer than ack_wait would be handed to another consumer.
            while True:
                await asyncio.sleep(ack_wait_s / 3)
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()

        alive = asyncio.create_task(keep_alive())
        try:
            reply = await self._dispatcher.dispatch(
                pattern=subject,
                subject=msg.subject,
                data=msg.data,
                headers=msg.headers,
                message_type=message_type,
                handler=handler,
                reply_expected=True,
            )
        finally:
            alive.cancel()
        try:
            if reply is not None and isinstance(reply.message, ErrorReply):
                await msg.nak(delay=retry_delay_s)
            else:
                await msg.ack()
        except nats.errors.Error as exc:
            log.warning("could not settle work item on %s (it will be delivered again): %s", subject, exc)

    async def drain(self) -> None:
        for consumer in list(self._consumers):
            await consumer.unsubscribe()
        if self._nc.is_closed:
            return
        if not self._nc.is_connected:
            # Nothing can be flushed to a server that is gone; waiting would only delay exit.
            await self._nc.close()
            return
        if self._handlers:
            # Stop taking new messages, then let the handlers in their own tasks answer.
            for sub in self._concurrent_subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            _, late = await asyncio.wait(set(self._handlers), timeout=self._drain_timeout_s)
            if late:
                log.warning("%d handler(s) still running after %.1f s of draining", len(late), self._drain_timeout_s)
        try:
            # nats-py's own flush wait can outlast its drain timeout if the server dies mid-drain.
            await asyncio.wait_for(self._nc.drain(), self._drain_timeout_s)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("drain did not finish cleanly: %s", exc or "timed out")
            await self._nc.close()


def _same_stream(have: StreamConfig, want: StreamConfig) -> bool:
    """Whether the server's stream already has what gpuplane asks of it (the server fills in other fields)."""
    return (
        sorted(have.subjects or []) == sorted(want.subjects or [])
        and have.retention == want.retention
        and have.storage == want.storage
        and have.discard == want.discard
        and have.max_msgs_per_subject == want.max_msgs_per_subject
        and abs((have.max_age or 0) - (want.max_age or 0)) < 1
        and (have.num_replicas or 1) == (want.num_replicas or 1)
    )


async def connect(
    servers: str,
    *,
    service: str,
    identity: Identity | None = None,
    credentials: NatsCredentials | None = None,
    name: str | None = None,
    request_timeout_s: float = 5.0,
    drain_timeout_s: float = 5.0,
    reconnect_wait_s: float = 1.0,
    trace_status_messages: bool = False,
) -> NatsBus:
    """Connect (waiting for the server as long as it takes) and return a bus.

    ``identity`` picks the inbox prefix this process's replies arrive on (the only one its NATS user may
    read); ``credentials`` prove it. Reconnects forever; while disconnected, publishes are buffered and
    subscriptions are restored on reconnect.
    """
    state = {"last_error_log": 0.0}
    who = identity.value if identity else service
    where = credentials.source if credentials else "none given"

    async def on_error(exc: Exception) -> None:
        now = time.monotonic()
        text = str(exc)
        if "permissions violation" in text.lower():
            # A missing permission is a deployment mistake worth seeing every time (it names the subject).
            log.error("NATS refused identity %r: %s", who, text)
            return
        # A dead server makes nats-py report every attempt; one line every 10 s is enough.
        if now - state["last_error_log"] >= 10.0:
            state["last_error_log"] = now
            if "authorization violation" in text.lower():
                log.error(
                    "NATS refused to let identity %r in (credentials: %s); check GPUPLANE_NATS_CREDENTIALS_FILE "
                    "or GPUPLANE_DATA_DIR; retrying",
                    who,
                    where,
                )
            else:
                log.warning("NATS connection problem (%s): %s", type(exc).__name__, text)

    async def on_disconnected() -> None:
        if nc.is_closed or nc.is_draining:
            return
        log.warning("disconnected from NATS; reconnecting (buffering publishes)")

    async def on_reconnected() -> None:
        state["last_error_log"] = 0.0
        log.info("reconnected to NATS at %s", redact_url(nc.connected_url.geturl()) if nc.connected_url else "?")

    nc = Client()
    bus = NatsBus(nc, service, request_timeout_s, drain_timeout_s, trace_status_messages=trace_status_messages)
    await nc.connect(
        servers=[s.strip() for s in servers.split(",") if s.strip()],
        name=name or f"gpuplane-{service}",
        allow_reconnect=True,
        max_reconnect_attempts=RECONNECT_FOREVER,
        reconnect_time_wait=reconnect_wait_s,  # type: ignore[arg-type]  # nats-py accepts floats
        connect_timeout=2,
        pending_size=RECONNECT_BUFFER_BYTES,
        drain_timeout=int(max(1, drain_timeout_s)),
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        inbox_prefix=inbox_prefix(identity) if identity else "_INBOX",
        **(credentials.connect_options() if credentials else {}),
    )
    await bus.ensure_streams()
    return bus


async def connect_once(
    servers: str,
    *,
    service: str,
    timeout_s: float,
    identity: Identity | None = None,
    credentials: NatsCredentials | None = None,
) -> NatsBus:
    """Like :func:`connect`, but fail with ``BusUnavailable`` if no server answers in time."""
    try:
        return await asyncio.wait_for(
            connect(servers, service=service, identity=identity, credentials=credentials), timeout_s
        )
    except TimeoutError as exc:
        where = redact_url(servers)
        raise BusUnavailable(
            f"no NATS server answered at {where} within {timeout_s:g} s (or it refused {service}'s credentials)"
        ) from exc
