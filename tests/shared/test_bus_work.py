"""Work queues: one consumer gets each item, acknowledged when its handler returns, delivered again when
the handler fails or its process dies. Both buses; the real one on a server of each test's own (a
work-queue stream allows one consumer per subject)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from shared.bus.base import Bus, Delivery
from shared.bus.memory import MemoryBus
from shared.bus.nats import connect
from shared.contracts import ApplyWork
from shared.errors import BusError, OperationFailed
from shared.subjects import CONFIG_CHANGED, ORCHESTRATOR_WORK
from tests.realdeps import NatsServer

BusFactory = Callable[[], Coroutine[Any, Any, Bus]]


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.integration)])
async def new_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """Connections to one bus: a second one plays a restarted process."""
    opened: list[Bus] = []
    memory = MemoryBus("test")
    # Set up before (so torn down after) the connections that use it.
    server: NatsServer | None = request.getfixturevalue("own_nats_server") if request.param == "nats" else None

    async def make() -> Bus:
        if request.param == "memory":
            memory.reopen()
            opened.append(memory)
            return memory
        assert server is not None
        bus = await connect(server.url, service="test", request_timeout_s=2.0)
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        await bus.drain()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_an_item_queued_before_the_consumer_is_delivered_once(new_bus: BusFactory) -> None:
    bus = await new_bus()
    await bus.publish(ORCHESTRATOR_WORK, ApplyWork(run_id="r1"))
    seen: list[str] = []

    async def handle(work: ApplyWork, _: Delivery) -> None:
        seen.append(work.run_id)

    await bus.consume(ORCHESTRATOR_WORK, ApplyWork, handle, durable="t", ack_wait_s=1.0)
    await bus.publish(ORCHESTRATOR_WORK, ApplyWork(run_id="r2"))
    await wait_for(lambda: seen == ["r1", "r2"])
    await asyncio.sleep(1.5)  # past ack_wait: acknowledged items never come back
    assert seen == ["r1", "r2"]


async def test_a_failing_handler_gets_the_item_again(new_bus: BusFactory) -> None:
    bus = await new_bus()
    attempts: list[str] = []

    async def handle(work: ApplyWork, _: Delivery) -> None:
        attempts.append(work.run_id)
        if len(attempts) == 1:
            raise OperationFailed("database down")

    await bus.consume(ORCHESTRATOR_WORK, ApplyWork, handle, durable="t", retry_delay_s=0.1)
    await bus.publish(ORCHESTRATOR_WORK, ApplyWork(run_id="r1"))
    await wait_for(lambda: attempts == ["r1", "r1"])


async def test_an_item_whose_process_died_mid_handler_goes_to_the_next_consumer(new_bus: BusFactory) -> None:
    first = await new_bus()
    started = asyncio.Event()

    async def dies(work: ApplyWork, _: Delivery) -> None:
        started.set()
        await asyncio.sleep(3600)

    await first.consume(ORCHESTRATOR_WORK, ApplyWork, dies, durable="t", ack_wait_s=1.0)
    await first.publish(ORCHESTRATOR_WORK, ApplyWork(run_id="r1"))
    await asyncio.wait_for(started.wait(), 5)
    await first.drain()  # the handler is cancelled, never acknowledged

    second = await new_bus()
    seen: list[str] = []

    async def handle(work: ApplyWork, _: Delivery) -> None:
        seen.append(work.run_id)

    await second.consume(ORCHESTRATOR_WORK, ApplyWork, handle, durable="t", ack_wait_s=1.0)
    await wait_for(lambda: seen == ["r1"])


async def test_a_handler_longer_than_ack_wait_is_kept_alive_not_redelivered(new_bus: BusFactory) -> None:
    bus = await new_bus()
    deliveries: list[str] = []

    async def slow(work: ApplyWork, _: Delivery) -> None:
        deliveries.append(work.run_id)
        await asyncio.sleep(2.5)

    await bus.consume(ORCHESTRATOR_WORK, ApplyWork, slow, durable="t", ack_wait_s=0.9)
    await bus.publish(ORCHESTRATOR_WORK, ApplyWork(run_id="r1"))
    await asyncio.sleep(4.0)
    assert deliveries == ["r1"]


async def test_consuming_a_subject_outside_a_work_queue_is_refused(new_bus: BusFactory) -> None:
    bus = await new_bus()

    async def handle(work: ApplyWork, _: Delivery) -> None:
        return None

    with pytest.raises(BusError, match="not on a work-queue stream"):
        await bus.consume(CONFIG_CHANGED, ApplyWork, handle, durable="t")
