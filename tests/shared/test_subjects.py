from __future__ import annotations

import pytest

from shared.contracts import ServiceName
from shared.subjects import (
    EVENTS_STREAM,
    INVENTORY_ALL,
    InvalidSubjectToken,
    health,
    heartbeat,
    inventory,
    matches,
    stream_for,
)


@pytest.mark.parametrize(
    "pattern,subject,expected",
    [
        ("gpuplane.inventory.>", "gpuplane.inventory.box", True),
        ("gpuplane.inventory.>", "gpuplane.inventory", False),
        ("gpuplane.inventory.*", "gpuplane.inventory.box", True),
        ("gpuplane.inventory.*", "gpuplane.inventory.box.x", False),
        ("gpuplane.inventory.>", "gpuplane.inventory.box.x", True),
        ("gpuplane.a.b", "gpuplane.a.b", True),
        ("gpuplane.a.b", "gpuplane.a.c", False),
    ],
)
def test_wildcards(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


@pytest.mark.parametrize(
    "host,subject",
    [
        ("box-a", "gpuplane.inventory.box-a"),
        ("gpu01.lab.local", "gpuplane.inventory.gpu01_lab_local"),
        ("my host", "gpuplane.inventory.my_host"),
    ],
)
def test_inventory_subject_is_one_token_per_host(host: str, subject: str) -> None:
    assert inventory(host) == subject
    assert matches(INVENTORY_ALL, subject)


def test_empty_host_is_rejected() -> None:
    with pytest.raises(InvalidSubjectToken):
        inventory("  ")


def test_inventory_is_kept_for_late_readers_but_heartbeats_are_not() -> None:
    assert stream_for(inventory("h")) is EVENTS_STREAM
    assert stream_for(heartbeat(ServiceName.DETECTOR)) is None
    assert stream_for(health(ServiceName.API)) is None
