"""The detector shell over the in-memory bus, with a fake backend whose scans a test scripts."""

from __future__ import annotations

from typing import ClassVar

import pytest

from services.detector.backends.base import HostScan
from services.detector.main import Detector
from services.detector.settings import DetectorSettings
from shared.bus.memory import MemoryBus
from shared.contracts import GpuHealthChanged, Inventory, InventoryChangeKind, InventorySource, RescanRequest
from shared.errors import DetectionError, RemoteError
from shared.subjects import DETECTOR_RESCAN, GPU_HEALTH_ALL, INVENTORY_ALL, matches
from tests.builders import make_gpu


class ScriptedBackend:
    """Returns the scans a test set; raises when told to."""

    NAME: ClassVar[str] = "scripted"
    SOURCE: ClassVar[InventorySource] = InventorySource.NVML

    def __init__(self) -> None:
        self.gpus = (make_gpu(0), make_gpu(1, name="NVIDIA RTX A400", vram_total_mb=4094))
        self.fail: str | None = None
        self.scans = 0

    def scan(self) -> list[HostScan]:
        self.scans += 1
        if self.fail:
            raise DetectionError(self.fail)
        return [HostScan(host="box", source=self.SOURCE, gpus=self.gpus)]

    def close(self) -> None:
        pass


def published(bus: MemoryBus, pattern: str) -> list[object]:
    return [m for subject, m in bus.published if matches(pattern, subject)]


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def detector(memory_bus: MemoryBus, backend: ScriptedBackend) -> Detector:
    # A long interval: only the first scan and changes publish, so each test sees exactly what it caused.
    return Detector(memory_bus, backend, DetectorSettings(detect_interval_s=3600, detect_poll_s=0.01))


async def test_first_scan_publishes_inventory_on_host_subject(detector: Detector, memory_bus: MemoryBus) -> None:
    await detector.tick()
    [inv] = published(memory_bus, "gpuplane.inventory.box")
    assert isinstance(inv, Inventory)
    assert [g.index for g in inv.gpus] == [0, 1] and inv.source is InventorySource.NVML
    assert inv.sequence == 1


async def test_nothing_new_publishes_nothing_until_interval(detector: Detector, memory_bus: MemoryBus) -> None:
    await detector.tick()
    await detector.tick()
    assert len(published(memory_bus, INVENTORY_ALL)) == 1


async def test_gpu_turning_unhealthy_is_published_at_once_with_health_event(
    detector: Detector, memory_bus: MemoryBus, backend: ScriptedBackend
) -> None:
    await detector.tick()
    backend.gpus = (backend.gpus[0], make_gpu(1, name="NVIDIA RTX A400", vram_total_mb=4094,
                                              healthy=False, health_reason="GPU is lost"))
    await detector.tick()
    inventories = published(memory_bus, INVENTORY_ALL)
    assert len(inventories) == 2
    [change] = inventories[1].changes  # type: ignore[attr-defined]
    assert change.kind is InventoryChangeKind.UNHEALTHY and change.index == 1
    [event] = published(memory_bus, GPU_HEALTH_ALL)
    assert isinstance(event, GpuHealthChanged) and event.change.reason == "GPU is lost"


async def test_gpu_disappearing_is_published(
    detector: Detector, memory_bus: MemoryBus, backend: ScriptedBackend
) -> None:
    await detector.tick()
    backend.gpus = backend.gpus[:1]
    await detector.tick()
    last = published(memory_bus, INVENTORY_ALL)[-1]
    assert [c.kind for c in last.changes] == [InventoryChangeKind.DISAPPEARED]  # type: ignore[attr-defined]


async def test_rescan_request_answers_with_a_fresh_inventory(
    detector: Detector, memory_bus: MemoryBus, backend: ScriptedBackend
) -> None:
    await memory_bus.subscribe(DETECTOR_RESCAN, RescanRequest, detector.on_rescan)
    await detector.tick()
    reply = await memory_bus.request(DETECTOR_RESCAN, RescanRequest(reason="test"), Inventory)
    assert reply.sequence == 2 and backend.scans == 2
    assert len(published(memory_bus, INVENTORY_ALL)) == 2


async def test_failed_rescan_is_a_typed_error_for_the_caller(
    detector: Detector, memory_bus: MemoryBus, backend: ScriptedBackend
) -> None:
    await memory_bus.subscribe(DETECTOR_RESCAN, RescanRequest, detector.on_rescan)
    backend.fail = "NVML: Driver Not Loaded"
    with pytest.raises(RemoteError, match="Driver Not Loaded"):
        await memory_bus.request(DETECTOR_RESCAN, RescanRequest(), Inventory)


async def test_loop_keeps_going_after_a_failed_round(
    detector: Detector, memory_bus: MemoryBus, backend: ScriptedBackend
) -> None:
    import asyncio

    backend.fail = "transient"
    task = asyncio.create_task(detector.loop())
    try:
        for _ in range(200):
            if backend.scans >= 3:
                break
            await asyncio.sleep(0.01)
        backend.fail = None
        for _ in range(200):
            if published(memory_bus, INVENTORY_ALL):
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert published(memory_bus, INVENTORY_ALL)


class FlakyBus(MemoryBus):
    """A memory bus whose publishes fail while ``down`` is set (NATS unreachable)."""

    down = False

    async def publish(self, subject: str, message: object) -> None:  # type: ignore[override]
        from shared.errors import BusError

        if self.down:
            raise BusError("publish failed: not connected")
        await super().publish(subject, message)  # type: ignore[arg-type]


async def test_change_seen_during_an_outage_is_published_after_it(backend: ScriptedBackend) -> None:
    from shared.errors import BusError

    bus = FlakyBus("flaky")
    detector = Detector(bus, backend, DetectorSettings(detect_interval_s=3600, detect_poll_s=0.01))
    await detector.tick()
    bus.down = True
    backend.gpus = backend.gpus[:1]
    with pytest.raises(BusError):
        await detector.tick()
    bus.down = False
    await detector.tick()
    last = published(bus, INVENTORY_ALL)[-1]
    assert [c.kind for c in last.changes] == [InventoryChangeKind.DISAPPEARED]  # type: ignore[attr-defined]
    assert len(published(bus, GPU_HEALTH_ALL)) == 1
    await bus.drain()
