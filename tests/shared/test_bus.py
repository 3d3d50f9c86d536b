"""One contract, two buses: every behaviour here must hold for MemoryBus and the real NATS bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.bus.base import Bus, Delivery
from shared.bus.core import set_correlation_id
from shared.bus.memory import MemoryBus
from shared.bus.nats import connect
from shared.contracts import (
    HealthReply,
    HealthRequest,
    Inventory,
    InventorySource,
    RescanRequest,
    ServiceName,
    utc_now,
)
from shared.errors import BusError, NoResponders, RemoteError, RequestTimeout
from shared.subjects import INVENTORY_ALL, inventory
from tests.builders import make_gpu
from tests.realdeps import NatsServer


def make_inventory(host: str, n: int = 1) -> Inventory:
    return Inventory(host=host, source=InventorySource.SIMULATED, gpus=tuple(make_gpu(i) for i in range(n)))


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.integration)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "memory":
        b: Bus = MemoryBus("test")
    else:
        server: NatsServer = request.getfixturevalue("nats_server")
        b = await connect(server.url, service="test", request_timeout_s=1.0)
    yield b
    await b.drain()


async def settle(bus: Bus) -> None:
    if isinstance(bus, MemoryBus):
        await bus.settle()
    else:
        await asyncio.sleep(0.2)


async def test_wildcard_subscriber_sees_every_host(bus: Bus) -> None:
    got: list[str] = []

    async def handler(inv: Inventory, d: Delivery) -> None:
        got.append(f"{d.subject}:{inv.host}")

    await bus.subscribe(INVENTORY_ALL, Inventory, handler)
    await bus.publish(inventory("box-a"), make_inventory("box-a"))
    await bus.publish(inventory("box.b"), make_inventory("box.b"))
    await settle(bus)
    assert sorted(got) == ["gpuplane.inventory.box-a:box-a", "gpuplane.inventory.box_b:box.b"]


async def test_queue_group_delivers_once(bus: Bus) -> None:
    calls: list[int] = []

    def make(i: int):  # type: ignore[no-untyped-def]
        async def handler(_: RescanRequest, __: Delivery) -> None:
            calls.append(i)

        return handler

    for i in range(3):
        await bus.subscribe("gpuplane.test.queue", RescanRequest, make(i), queue="workers")
    await bus.publish("gpuplane.test.queue", RescanRequest())
    await settle(bus)
    assert len(calls) == 1


async def test_request_reply_round_trip(bus: Bus) -> None:
    async def responder(_: HealthRequest, d: Delivery) -> HealthReply:
        assert d.reply_expected
        return HealthReply(
            service=ServiceName.PLANNER, instance="i1", host="h", ok=True,
            started_at="2026-01-01T00:00:00Z", version="t", details={"cid": d.correlation_id},
        )

    await bus.subscribe("gpuplane.test.health", HealthRequest, responder)
    token = set_correlation_id("corr-123")
    try:
        reply = await bus.request("gpuplane.test.health", HealthRequest(), HealthReply)
    finally:
        set_correlation_id(None)
        del token
    assert reply.ok and reply.instance == "i1"
    # The correlation id travels in the headers end to end, on both buses.
    assert reply.details["cid"] == "corr-123"


async def test_request_with_nobody_listening_is_typed(bus: Bus) -> None:
    with pytest.raises(NoResponders) as info:
        await bus.request("gpuplane.test.nobody", HealthRequest(), HealthReply)
    assert "gpuplane.test.nobody" in str(info.value)


async def test_slow_responder_times_out(bus: Bus) -> None:
    async def slow(_: HealthRequest, __: Delivery) -> None:
        await asyncio.sleep(2)

    await bus.subscribe("gpuplane.test.slow", HealthRequest, slow)
    with pytest.raises(RequestTimeout):
        await bus.request("gpuplane.test.slow", HealthRequest(), HealthReply, timeout_s=0.3)


async def test_handler_error_becomes_remote_error(bus: Bus) -> None:
    async def broken(_: HealthRequest, __: Delivery) -> HealthReply:
        raise RuntimeError("boom")

    await bus.subscribe("gpuplane.test.broken", HealthRequest, broken)
    with pytest.raises(RemoteError) as info:
        await bus.request("gpuplane.test.broken", HealthRequest(), HealthReply)
    assert info.value.code == "internal" and "RuntimeError" in info.value.remote_message
    # What an unexpected exception says (paths, addresses, a driver's text) stays in the responder's log.
    assert "boom" not in info.value.remote_message


async def test_wrong_message_type_is_rejected_with_reason(bus: Bus) -> None:
    async def wants_health(_: HealthRequest, __: Delivery) -> HealthReply:
        raise AssertionError("must not be called")

    await bus.subscribe("gpuplane.test.contract", HealthRequest, wants_health)
    with pytest.raises(RemoteError) as info:
        await bus.request("gpuplane.test.contract", RescanRequest(), HealthReply)
    assert info.value.code == "bad_request"
    assert "HealthRequest" in info.value.remote_message


async def test_handler_survives_a_bad_message(bus: Bus) -> None:
    seen: list[str] = []

    async def handler(inv: Inventory, _: Delivery) -> None:
        seen.append(inv.host)

    await bus.subscribe("gpuplane.inventory.*", Inventory, handler)
    # Repeated: a rejected stream event once raced an error reply into the publisher's ack inbox.
    for _ in range(20):
        await bus.publish(inventory("bad"), RescanRequest())
    await bus.publish(inventory("good"), make_inventory("good"))
    await settle(bus)
    assert seen == ["good"]


async def test_latest_returns_last_event_per_subject(bus: Bus) -> None:
    host_a, host_b = f"latest-a-{id(bus)}", f"latest-b-{id(bus)}"
    await bus.publish(inventory(host_a), make_inventory(host_a, 1))
    await bus.publish(inventory(host_a), make_inventory(host_a, 2))
    await bus.publish(inventory(host_b), make_inventory(host_b, 3))
    # A stored message that breaks the contract is skipped, not fatal for the others.
    await bus.publish(inventory(f"broken-{id(bus)}"), RescanRequest())
    latest = {inv.host: inv for inv in await bus.latest(INVENTORY_ALL, Inventory)}
    assert len(latest[host_a].gpus) == 2
    assert len(latest[host_b].gpus) == 3


async def test_publish_after_drain_fails_typed(bus: Bus) -> None:
    await bus.drain()
    with pytest.raises(BusError):
        await bus.publish(inventory("x"), make_inventory("x"))


async def test_a_body_that_claims_another_sender_than_its_subject_is_dropped(bus: Bus) -> None:
    """NATS lets an identity publish only on its own hosts' subjects; the body must say the same host."""
    seen: list[str] = []

    async def handler(inv: Inventory, _: Delivery) -> None:
        seen.append(inv.host)

    await bus.subscribe(INVENTORY_ALL, Inventory, handler)
    await bus.publish(inventory("vm"), make_inventory("evil"))
    await bus.publish(inventory("vm"), make_inventory("vm"))
    await settle(bus)
    assert seen == ["vm"]
    assert [inv.host for inv in await bus.latest(inventory("vm"), Inventory)] == ["vm"]


async def test_gather_collects_a_reply_from_every_subscriber(bus: Bus) -> None:
    async def answer_as(name: str) -> Any:
        async def answer(_: HealthRequest, __: Delivery) -> HealthReply:
            return HealthReply(service=ServiceName.ROUTER, instance=name, host="h", ok=True, started_at=utc_now(),
                               version="t")

        return answer

    with pytest.raises(NoResponders):
        await bus.gather("gpuplane.test.gather", HealthRequest(), HealthReply, timeout_s=0.5)
    for name in ("r1", "r2"):
        await bus.subscribe("gpuplane.test.gather", HealthRequest, await answer_as(name))
    await settle(bus)
    replies = await bus.gather("gpuplane.test.gather", HealthRequest(), HealthReply, timeout_s=0.5, max_replies=2)
    assert sorted(r.instance for r in replies) == ["r1", "r2"]
