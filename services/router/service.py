"""The router service: requests over NATS (``ROUTER_INFER``), placed and carried by a ``Dispatcher``.

The gateway's /v1 requests do not pass here (the gateway hosts its own dispatcher); this service answers the
requests other programs send over NATS, the state the console and ``gpuplane`` read, and which requests it holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from services.router.core.policies import RoutingPolicy
from services.router.core.pools import Pools
from services.router.dispatcher import Dispatcher
from services.router.settings import RouterSettings
from services.router.transports import StreamMeta
from shared.bus.base import Bus, Delivery
from shared.contracts import (
    InferenceRequest,
    InferenceResult,
    RouterHeld,
    RouterHeldQuery,
    RouterState,
    RouterStateRequest,
    ServiceName,
    StreamChunk,
)
from shared.errors import GpuplaneError, InvalidRequest, NotFound, Overloaded
from shared.modelgroups import ModelCatalog
from shared.subjects import ROUTER_HELD, ROUTER_INFER, ROUTER_STATE, queue_group


class BusStream:
    """A streamed answer's chunks out to the subject the requester named, numbered, who served it first."""

    def __init__(self, bus: Bus, subject: str, request_id: str) -> None:
        self._bus = bus
        self._subject = subject
        self._request_id = request_id
        self._seq = 0
        self._meta: StreamMeta | None = None
        self._ended = False

    async def _publish(self, **fields: object) -> None:
        first = self._seq == 0 and self._meta is not None
        meta = self._meta
        chunk = StreamChunk(
            request_id=self._request_id,
            seq=self._seq,
            worker_id=meta.worker_id if first and meta else None,
            device=meta.device if first and meta else None,
            host=meta.host if first and meta else None,
            route=meta.route if first and meta else None,
            attempt=meta.attempt if meta else 1,
            **fields,  # type: ignore[arg-type]
        )
        self._seq += 1
        await self._bus.publish(self._subject, chunk)

    async def begin(self, meta: StreamMeta) -> None:
        self._meta = meta

    async def data(self, payload: bytes) -> None:
        await self._publish(data=json.loads(payload))

    async def end(self, error: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        await self._publish(done=error is None, error=error)


class Router:
    """One router instance. Several may run; they share no state but what workers report."""

    def __init__(
        self,
        bus: Bus,
        settings: RouterSettings,
        catalog: ModelCatalog,
        instance: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: RoutingPolicy | None = None,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.instance = instance
        self.clock = clock
        self.dispatcher = Dispatcher(
            bus,
            settings,
            catalog,
            instance,
            ServiceName.ROUTER,
            clock=clock,
            policy=policy,
            engine_token=settings.engine_token_value(),
        )
        self.metrics = self.dispatcher.metrics

    @property
    def pools(self) -> Pools:
        return self.dispatcher.pools

    async def start(self) -> None:
        await self.dispatcher.start()
        group = queue_group(ServiceName.ROUTER)
        await self.bus.subscribe(
            ROUTER_INFER, InferenceRequest, self.handle, queue=group, max_in_flight=self.settings.max_in_flight_requests
        )
        await self.bus.subscribe(ROUTER_STATE, RouterStateRequest, self._on_state, queue=group)
        # No queue group: a gateway asks every router which of its requests it holds.
        await self.bus.subscribe(ROUTER_HELD, RouterHeldQuery, self._on_held)

    async def run_timers(self) -> None:
        await self.dispatcher.run_timers()

    async def watch_answers(self) -> None:
        await self.dispatcher.watch_answers()

    async def check_answers(self) -> None:
        await self.dispatcher.check_answers()

    def tick(self) -> None:
        self.dispatcher.tick()

    async def close(self) -> None:
        await self.dispatcher.close()

    def health(self) -> dict[str, str]:
        return self.dispatcher.health()

    def state(self) -> RouterState:
        return self.dispatcher.state()

    async def _on_state(self, _: RouterStateRequest, __: Delivery) -> RouterState:
        return self.state()

    async def _on_held(self, query: RouterHeldQuery, _: Delivery) -> RouterHeld:
        """Which of a gateway's requests this router holds: waiting in a batch or the queue, or out."""
        mine = self.dispatcher.held_request_ids()
        return RouterHeld(router=self.instance, request_ids=tuple(r for r in query.request_ids if r in mine))

    async def handle(self, request: InferenceRequest, _: Delivery) -> InferenceResult:
        """Place, send and answer one request (the ``ROUTER_INFER`` handler)."""
        started = self.clock()
        kind = request.kind.value
        sink = BusStream(self.bus, request.stream_subject, request.request_id) if request.stream_subject else None
        try:
            answer = await self.dispatcher.submit(request, sink)
        except (InvalidRequest, NotFound):
            self.metrics.requests.labels(kind, "client_error").inc()
            raise
        except Overloaded:
            self.metrics.requests.labels(kind, "rejected").inc()
            raise
        except GpuplaneError:
            self.metrics.requests.labels(kind, "failed").inc()
            raise
        self.metrics.requests.labels(kind, "ok").inc()
        self.metrics.request_duration.labels(kind).observe(self.clock() - started)
        body = answer.body
        if isinstance(body, bytes | bytearray):
            body = json.loads(body)
        return InferenceResult(
            request_id=answer.request_id,
            body=None if sink is not None else body,
            worker_id=answer.worker_id,
            device=answer.device,
            host=answer.host,
            route=answer.route,
            group=answer.group,
            reason=answer.reason,
            attempts=answer.attempts,
            batch_size=answer.batch_size,
            queued_s=answer.queued_s,
        )
