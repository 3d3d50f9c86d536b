"""The service shell: health replies, heartbeats, draining, and crashing loudly."""

from __future__ import annotations

import asyncio

import pytest

from shared.bus.base import Bus, Delivery
from shared.bus.memory import MemoryBus
from shared.contracts import HealthReply, HealthRequest, Heartbeat, ServiceName
from shared.errors import ServiceCrashed
from shared.service import ServiceContext, serve
from shared.settings import CommonSettings
from shared.subjects import HEARTBEAT_ALL, health


async def run_briefly(start, bus: MemoryBus, ctx: ServiceContext) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
    async def factory(*_: object) -> Bus:
        return bus

    return asyncio.create_task(serve(ServiceName.PLANNER, ctx.settings, start, bus_factory=factory,
                                     install_signal_handlers=False, ctx=ctx))


async def test_answers_health_and_heartbeats_then_drains() -> None:
    bus = MemoryBus("shell")
    beats: list[Heartbeat] = []

    async def on_beat(beat: Heartbeat, _: Delivery) -> None:
        beats.append(beat)

    await bus.subscribe(HEARTBEAT_ALL, Heartbeat, on_beat)
    ctx = ServiceContext(ServiceName.PLANNER, CommonSettings(heartbeat_interval_s=0.05))
    ctx.add_health(lambda: {"strategies": "5"})

    async def start(_: Bus, c: ServiceContext) -> None:
        pass

    task = await run_briefly(start, bus, ctx)
    await asyncio.sleep(0.2)
    reply = await bus.request(health(ServiceName.PLANNER), HealthRequest(), HealthReply)
    assert reply.ok and reply.details == {"strategies": "5"} and reply.instance == ctx.instance
    assert len(beats) >= 2 and beats[0].service is ServiceName.PLANNER
    ctx.stopping.set()
    await asyncio.wait_for(task, 5)
    assert not bus.is_connected


async def test_a_crashed_loop_stops_the_service_with_an_error() -> None:
    bus = MemoryBus("shell")
    ctx = ServiceContext(ServiceName.PLANNER, CommonSettings())

    async def broken_loop() -> None:
        raise RuntimeError("database schema mismatch")

    async def start(_: Bus, c: ServiceContext) -> None:
        c.spawn(broken_loop(), name="sync")

    task = await run_briefly(start, bus, ctx)
    with pytest.raises(ServiceCrashed, match="background task sync crashed.*database schema mismatch"):
        await asyncio.wait_for(task, 5)
