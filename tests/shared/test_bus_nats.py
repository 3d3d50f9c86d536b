"""What only the real NATS bus does: headers, reconnects, JetStream persistence across restarts."""

from __future__ import annotations

import asyncio

import pytest

from shared.bus.base import CORRELATION_HEADER, Delivery
from shared.bus.nats import connect
from shared.contracts import Heartbeat, Inventory, InventorySource, RescanRequest, ServiceName, utc_now
from shared.subjects import INVENTORY_ALL, heartbeat, inventory
from tests.builders import make_gpu
from tests.realdeps import NatsServer

pytestmark = pytest.mark.integration


def inv(host: str, n: int = 1) -> Inventory:
    return Inventory(host=host, source=InventorySource.SIMULATED, gpus=tuple(make_gpu(i) for i in range(n)))


async def test_trace_context_and_correlation_travel_in_headers(nats_server: NatsServer) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    pub = await connect(nats_server.url, service="pub")
    sub = await connect(nats_server.url, service="sub")
    got: asyncio.Queue[Delivery] = asyncio.Queue()

    async def handler(_: Inventory, d: Delivery) -> None:
        await got.put(d)

    try:
        await sub.subscribe("gpuplane.inventory.hdr", Inventory, handler)
        with trace.get_tracer("t").start_as_current_span("parent"):
            await pub.publish(inventory("hdr"), inv("hdr"))
        d = await asyncio.wait_for(got.get(), 5)
        assert d.headers.get(CORRELATION_HEADER)
        assert d.headers.get("traceparent", "").startswith("00-")
        assert d.headers.get("Gpuplane-Type") == "gpuplane.inventory.v1"
    finally:
        await pub.drain()
        await sub.drain()


async def test_an_events_subscribers_are_children_of_its_send_span(nats_server: NatsServer) -> None:
    """A message published outside any request (a detector's inventory) starts its own trace at the send
    span, and every subscriber's span is that span's child; heartbeats are left out unless asked."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    pub = await connect(nats_server.url, service="pub")
    subs = [await connect(nats_server.url, service=f"sub{i}") for i in range(2)]
    got: asyncio.Queue[str] = asyncio.Queue()

    async def handler(inv: Inventory, _: Delivery) -> None:
        await got.put(inv.host)

    try:
        for sub in subs:
            await sub.subscribe("gpuplane.inventory.spans", Inventory, handler)
            await sub.subscribe("gpuplane.heartbeat.>", Heartbeat, lambda *_: asyncio.sleep(0))
        await pub.publish(inventory("spans"), inv("spans"))
        beat = Heartbeat(service=ServiceName.DETECTOR, instance="i", host="h", pid=1, started_at=utc_now(), version="t")
        await pub.publish(heartbeat(ServiceName.DETECTOR), beat)
        for _ in subs:
            await asyncio.wait_for(got.get(), 5)
        await asyncio.sleep(0.2)
    finally:
        await pub.drain()
        for sub in subs:
            await sub.drain()
    spans = exporter.get_finished_spans()
    [send] = [s for s in spans if s.name == "send gpuplane.inventory.spans"]
    children = [s for s in spans if s.name == "process gpuplane.inventory.spans"]
    assert len(children) == 2
    assert all(c.parent is not None and c.parent.span_id == send.context.span_id for c in children)
    assert all(c.context.trace_id == send.context.trace_id for c in children)
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "nats"
    assert send.attributes["messaging.destination.name"] == "gpuplane.inventory.spans"
    assert send.attributes["messaging.operation.type"] == "send"
    assert not [s for s in spans if "heartbeat" in s.name]


async def test_subscriber_survives_server_restart_and_buffers_publishes(own_nats_server: NatsServer) -> None:
    pub = await connect(own_nats_server.url, service="pub", request_timeout_s=1.0)
    sub = await connect(own_nats_server.url, service="sub", request_timeout_s=1.0)
    got: asyncio.Queue[str] = asyncio.Queue()

    async def handler(msg: RescanRequest, _: Delivery) -> None:
        await got.put(msg.reason)

    try:
        await sub.subscribe("gpuplane.test.restart", RescanRequest, handler)
        await pub.publish("gpuplane.test.restart", RescanRequest(reason="before"))
        assert await asyncio.wait_for(got.get(), 5) == "before"

        own_nats_server.stop()
        for _ in range(50):
            if not pub.is_connected and not sub.is_connected:
                break
            await asyncio.sleep(0.1)
        assert not pub.is_connected
        # Not a stream subject: a core publish, held in the reconnect buffer instead of failing.
        await pub.publish("gpuplane.test.restart", RescanRequest(reason="during"))
        assert pub.client.pending_data_size > 0

        own_nats_server.start()
        for _ in range(150):
            if pub.is_connected and sub.is_connected:
                break
            await asyncio.sleep(0.1)
        assert pub.is_connected and sub.is_connected, "a client did not reconnect"
        await pub.client.flush(timeout=5)
        assert pub.client.pending_data_size == 0

        # The subscription was restored without anyone subscribing again. ("during" may or may
        # not arrive: core NATS is at-most-once if the publisher reconnected first.)
        await sub.client.flush(timeout=5)
        await pub.publish("gpuplane.test.restart", RescanRequest(reason="after"))
        hosts: set[str] = set()
        while "after" not in hosts:
            hosts.add(await asyncio.wait_for(got.get(), 10))
    finally:
        await pub.drain()
        await sub.drain()


async def test_latest_inventory_survives_a_server_restart(own_nats_server: NatsServer) -> None:
    bus = await connect(own_nats_server.url, service="t")
    await bus.publish(inventory("durable"), inv("durable", 2))
    await bus.drain()

    # SIGKILL: nothing is flushed on the way out; sync_interval: always already wrote it.
    import signal

    own_nats_server.stop(signal.SIGKILL)
    own_nats_server.start()
    bus = await connect(own_nats_server.url, service="t")
    try:
        latest = await bus.latest(INVENTORY_ALL, Inventory)
        assert [(i.host, len(i.gpus)) for i in latest] == [("durable", 2)]
    finally:
        await bus.drain()


async def test_reply_carries_the_request_correlation_id(nats_server: NatsServer) -> None:
    from shared.bus.core import set_correlation_id
    from shared.contracts import HealthReply, HealthRequest, ServiceName

    server = await connect(nats_server.url, service="server")
    client = await connect(nats_server.url, service="client")

    async def responder(_: HealthRequest, d: Delivery) -> HealthReply:
        return HealthReply(service=ServiceName.API, instance="i", host="h", ok=True,
                           started_at="2026-01-01T00:00:00Z", version="t")

    raw = await client.client.subscribe("_INBOX.corr-test")
    try:
        await server.subscribe("gpuplane.test.corr", HealthRequest, responder)
        set_correlation_id("corr-xyz")
        await client.client.publish(
            "gpuplane.test.corr", HealthRequest().model_dump_json().encode(),
            reply="_INBOX.corr-test", headers={CORRELATION_HEADER: "corr-xyz"},
        )
        msg = await raw.next_msg(timeout=5)
        assert msg.headers[CORRELATION_HEADER] == "corr-xyz"
        assert msg.headers["Gpuplane-Type"] == "gpuplane.health.reply.v1"
    finally:
        set_correlation_id(None)
        await server.drain()
        await client.drain()


async def test_a_message_published_right_after_subscribe_is_delivered(nats_server: NatsServer) -> None:
    """subscribe() returns only once the server has the SUB (nats-py's flush alone did not ensure it)."""
    pub = await connect(nats_server.url, service="pub")
    sub = await connect(nats_server.url, service="sub")
    got: asyncio.Queue[str] = asyncio.Queue()

    async def handler(msg: RescanRequest, _: Delivery) -> None:
        await got.put(msg.reason)

    try:
        for i in range(30):
            await sub.subscribe(f"gpuplane.test.order.{i}", RescanRequest, handler)
            assert sub.client.pending_data_size == 0
            await pub.publish(f"gpuplane.test.order.{i}", RescanRequest(reason=f"h{i}"))
            assert await asyncio.wait_for(got.get(), 5) == f"h{i}"
    finally:
        await pub.drain()
        await sub.drain()
