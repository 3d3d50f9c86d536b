"""The console's event hub: every open stream gets each event; a slow one loses old events, not memory."""

from __future__ import annotations

import json

import pytest

from services.api.events import RESYNC, EventHub, TooManyStreams, sse_frame
from shared.contracts import Inventory, InventorySource


def inv(sequence: int) -> Inventory:
    return Inventory(host="box", source=InventorySource.SIMULATED, sequence=sequence)


async def test_every_stream_gets_every_event_in_order() -> None:
    hub = EventHub()
    a, b = hub.open(), hub.open()
    for n in (1, 2):
        hub.publish("inventory", inv(n))
    for stream in (a, b):
        got = [await stream.next(0.1), await stream.next(0.1)]
        assert [(kind, json.loads(data)["sequence"]) for kind, data in got] == [("inventory", 1), ("inventory", 2)]
    assert await a.next(0.01) is None  # nothing more: the caller sends a keepalive


async def test_a_stream_that_falls_behind_keeps_the_newest_and_is_told_to_resync() -> None:
    hub = EventHub(queue_max=2)
    stream = hub.open()
    for n in range(5):
        hub.publish("inventory", inv(n))
    assert await stream.next(0.1) == (RESYNC, "{}")
    kept = [json.loads((await stream.next(0.1))[1])["sequence"] for _ in range(2)]  # type: ignore[index]
    assert kept == [3, 4]


async def test_streams_are_bounded_and_a_closed_one_frees_its_place() -> None:
    hub = EventHub(streams_max=1)
    stream = hub.open()
    with pytest.raises(TooManyStreams, match="GPUPLANE_EVENT_STREAMS_MAX"):
        hub.open()
    hub.close(stream)
    hub.publish("inventory", inv(1))  # nobody listens: nothing kept
    assert len(hub) == 0 and hub.open() is not None


def test_a_frame_is_one_named_event() -> None:
    assert sse_frame("config", '{"a": 1}') == b'event: config\ndata: {"a": 1}\n\n'
