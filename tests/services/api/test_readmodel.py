from __future__ import annotations

from datetime import timedelta

import pytest

from services.api.readmodel import ReadModel
from shared.contracts import Heartbeat, Inventory, InventorySource, ServiceName, utc_now
from tests.builders import make_gpu


def inv(host: str, source: InventorySource = InventorySource.NVML, n: int = 1, age_s: float = 0) -> Inventory:
    return Inventory(
        host=host, source=source, gpus=tuple(make_gpu(i) for i in range(n)),
        detected_at=utc_now() - timedelta(seconds=age_s),
    )


def test_empty_model_has_no_fleet() -> None:
    assert ReadModel().fleet() is None


def test_older_inventory_does_not_replace_newer() -> None:
    model = ReadModel()
    assert model.apply_inventory(inv("a", n=2, age_s=0))
    assert not model.apply_inventory(inv("a", n=1, age_s=10))
    fleet = model.fleet()
    assert fleet is not None and len(fleet.gpus) == 2


@pytest.mark.parametrize(
    "sources,expected",
    [
        ((InventorySource.NVML,), "nvml"),
        ((InventorySource.NVML, InventorySource.NVML), "nvml"),
        ((InventorySource.NVML, InventorySource.SIMULATED), "mixed"),
    ],
)
def test_source_across_hosts(sources: tuple[InventorySource, ...], expected: str) -> None:
    model = ReadModel()
    for i, source in enumerate(sources):
        model.apply_inventory(inv(f"h{i}", source))
    fleet = model.fleet()
    assert fleet is not None and fleet.source == expected


def test_gpus_of_several_hosts_keep_their_host() -> None:
    model = ReadModel()
    model.apply_inventory(inv("b", n=1))
    model.apply_inventory(inv("a", n=2))
    fleet = model.fleet()
    assert fleet is not None
    assert [(g.host, g.gpu.index) for g in fleet.gpus] == [("a", 0), ("a", 1), ("b", 0)]


def test_service_liveness_from_heartbeats() -> None:
    model = ReadModel()
    now = utc_now()
    beat = Heartbeat(service=ServiceName.DETECTOR, instance="d1", host="h", pid=1, started_at=now, version="t")
    model.apply_heartbeat(beat, now - timedelta(seconds=30))
    model.apply_heartbeat(beat.model_copy(update={"instance": "d2"}), now - timedelta(seconds=1))
    status = model.services(now, stale_after_s=10)
    assert status[ServiceName.DETECTOR].alive and status[ServiceName.DETECTOR].instances == 1
    assert status[ServiceName.DETECTOR].seconds_since_heartbeat == pytest.approx(1, abs=0.01)
    assert not status[ServiceName.PLANNER].alive
    assert status[ServiceName.PLANNER].last_heartbeat_at is None


def test_instances_long_gone_are_forgotten() -> None:
    model = ReadModel()
    now = utc_now()
    old = Heartbeat(service=ServiceName.ROUTER, instance="r-old", host="h", pid=1, started_at=now, version="t")
    model.apply_heartbeat(old, now - timedelta(hours=2))
    model.apply_heartbeat(old.model_copy(update={"instance": "r-new"}), now)
    status = model.services(now, stale_after_s=10)[ServiceName.ROUTER]
    assert status.alive and status.instances == 1
    assert len(model._heartbeats) == 1
