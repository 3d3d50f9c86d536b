"""The gateway's inference requests out at the routers, and what happens when an answer is lost.

When NATS or a router restarts, a request (or its answer) can vanish; without this its client would
wait ``GPUPLANE_INFERENCE_TIMEOUT_S`` (10 minutes). Every ``answer_check_interval_s`` the gateway asks
all routers which of its older requests they hold (``shared.answers`` decides); one nobody holds and
still unanswered after a grace is sent once more, or, when that cannot help (its stream had begun, the
bound ``lost_request_bound_s`` has passed, it was lost twice), answered 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.api.metrics import gateway_metrics
from shared.answers import AnswerWatch
from shared.bus.base import Bus
from shared.contracts import InferenceRequest, InferenceResult, RouterHeld, RouterHeldQuery, ServiceName, utc_now
from shared.errors import BusError, BusUnavailable, NoResponders
from shared.subjects import ROUTER_HELD, ROUTER_INFER

if TYPE_CHECKING:
    from services.api.deps import GatewayState

log = logging.getLogger("gpuplane.api.inflight")

GATHER_TIMEOUT_S = 1.0
NO_ROUTER_RETRY_S = 0.5


class AnswerLost(BusUnavailable):
    """A request's answer was lost (a router or NATS restarted) and sending it again did not help."""


@dataclass
class _Out:
    sent_at: float
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class InFlight:
    def __init__(self, state: GatewayState) -> None:
        self._state = state
        settings = state.settings
        self._watch = AnswerWatch(settings.answer_check_after_s, settings.answer_grace_s)
        self._out: dict[str, _Out] = {}
        self._metrics = gateway_metrics()

    def __len__(self) -> int:
        return len(self._out)

    async def ask(
        self, bus: Bus, request: InferenceRequest, *, may_retry: Callable[[], bool] = lambda: True
    ) -> InferenceResult:
        """The router's answer to ``request``; sent once more if it was lost and ``may_retry()`` (for a stream:
        nothing of it reached the client yet) and the bound has not passed; else ``AnswerLost``."""
        settings = self._state.settings
        clock = self._state.clock
        deadline = clock() + settings.lost_request_bound_s
        retried = False
        while True:
            try:
                return await self._once(bus, request)
            except _Lost:
                if retried or not may_retry() or clock() >= deadline:
                    self._metrics.lost_answers.labels("failed").inc()
                    raise AnswerLost(
                        f"the answer to request {request.request_id} was lost (a router or NATS restarted); "
                        "try again"
                    ) from None
                retried = True
                self._metrics.lost_answers.labels("retried").inc()
                log.warning("the answer to request %s was lost; sending it once more", request.request_id)
            except NoResponders:
                if not retried or clock() >= deadline:
                    raise
                # Sent again after a loss: give a restarting router the rest of the bound to come back.
                await asyncio.sleep(NO_ROUTER_RETRY_S)

    async def _once(self, bus: Bus, request: InferenceRequest) -> InferenceResult:
        rid = request.request_id
        out = _Out(self._state.clock())
        self._out[rid] = out
        call = asyncio.ensure_future(
            bus.request(ROUTER_INFER, request, InferenceResult, timeout_s=self._state.settings.inference_timeout_s)
        )
        lost = asyncio.ensure_future(out.lost.wait())
        try:
            await asyncio.wait({call, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            lost.cancel()
            if self._out.get(rid) is out:
                del self._out[rid]
            self._watch.forget(rid)
        if call.done():
            return call.result()
        call.cancel()
        raise _Lost()

    async def watch(self) -> None:
        """Check every ``answer_check_interval_s`` (cancelled when the gateway stops)."""
        while True:
            await asyncio.sleep(self._state.settings.answer_check_interval_s)
            await self.check()

    async def check(self) -> None:
        """One round: ask every router about the requests out for a while; mark the lost ones."""
        bus = self._state.bus
        if bus is None or not bus.is_connected:
            return
        due = self._watch.due({rid: o.sent_at for rid, o in self._out.items()}, self._state.clock())
        if due:
            routers = self._state.read_model.services(utc_now(), self._state.settings.heartbeat_stale_s)
            count = routers[ServiceName.ROUTER].instances if ServiceName.ROUTER in routers else 0
            try:
                replies = await bus.gather(
                    ROUTER_HELD,
                    RouterHeldQuery(request_ids=tuple(due)),
                    RouterHeld,
                    timeout_s=GATHER_TIMEOUT_S,
                    max_replies=count or None,
                )
            except NoResponders:
                replies = [RouterHeld(router="none")]  # no router at all: nobody holds anything
            except BusError as exc:
                log.debug("could not ask the routers what they hold: %s", exc)
                return
            if not replies:
                return  # nobody answered in time: no verdict this round
            held = {rid for reply in replies for rid in reply.request_ids}
            self._watch.heard(due, held, self._state.clock())
        for rid in self._watch.lost(self._out, self._state.clock()):
            out = self._out.get(rid)
            if out is not None:
                out.lost.set()


class _Lost(Exception):
    """Internal: this attempt's answer is lost."""
