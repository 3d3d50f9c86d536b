"""Detector service: scan GPUs, publish inventory and health changes, answer rescans."""

from __future__ import annotations

import asyncio
import logging
import time

from services.detector.backends import open_backend
from services.detector.backends.base import Backend, HostScan
from services.detector.core import PublishDecider
from services.detector.settings import DetectorSettings
from shared.bus.base import Bus, Delivery
from shared.contracts import GpuHealthChanged, Inventory, InventoryChange, RescanRequest, ServiceName, utc_now
from shared.errors import BusError, DetectionError
from shared.service import ServiceContext, StartFn, run
from shared.subjects import DETECTOR_RESCAN, gpu_health, inventory

log = logging.getLogger("gpuplane.detector")


class Detector:
    """Glue between a backend (blocking I/O, run in a thread), the pure decider and the bus."""

    def __init__(self, bus: Bus, backend: Backend, settings: DetectorSettings) -> None:
        self._bus = bus
        self._backend = backend
        self._decider = PublishDecider(settings.detect_interval_s)
        self._poll_s = settings.detect_poll_s
        self._lock = asyncio.Lock()
        self._latest: dict[str, Inventory] = {}
        self._last_problem: str | None = None
        self._unsent: dict[str, tuple[InventoryChange, ...]] = {}

    @property
    def latest(self) -> dict[str, Inventory]:
        return dict(self._latest)

    async def _scan(self) -> list[HostScan]:
        return await asyncio.to_thread(self._backend.scan)

    async def _publish(self, inv: Inventory) -> None:
        self._latest[inv.host] = inv
        await self._bus.publish(inventory(inv.host), inv)
        for change in inv.changes:
            log.warning("GPU %s (%s) on %s %s%s", change.index, change.name, inv.host, change.kind.value,
                        f": {change.reason}" if change.reason else "")
            await self._bus.publish(
                gpu_health(inv.host),
                GpuHealthChanged(host=inv.host, source=inv.source, change=change, at=inv.detected_at),
            )

    async def tick(self, *, force: bool = False) -> list[Inventory]:
        """Scan once; publish what changed or is due (everything when forced).

        Changes whose publish failed (NATS down) ride along with the next inventory of that host,
        so a GPU failure seen during an outage is still announced once NATS is back.
        """
        async with self._lock:
            scans = await self._scan()
            now = time.monotonic()
            at = utc_now()
            out: list[Inventory] = []
            for scan in scans:
                overdue = force or scan.host in self._unsent
                inv = self._decider.force(scan, now, at) if overdue else self._decider.observe(scan, now, at)
                if inv is None:
                    continue
                carried = self._unsent.pop(inv.host, ())
                if carried:
                    inv = inv.model_copy(update={"changes": carried + inv.changes})
                try:
                    await self._publish(inv)
                except BusError:
                    self._unsent[inv.host] = inv.changes
                    raise
                out.append(inv)
            return out

    async def loop(self) -> None:
        while True:
            try:
                await self.tick()
                self._last_problem = None
            except (DetectionError, BusError) as exc:
                # Transient (NATS restarting, driver hiccup): report once, keep polling.
                if str(exc) != self._last_problem:
                    log.warning("detection round failed: %s", exc)
                    self._last_problem = str(exc)
            await asyncio.sleep(self._poll_s)

    async def on_rescan(self, request: RescanRequest, delivery: Delivery) -> Inventory:
        log.info("rescan requested (%s)", request.reason)
        published = await self.tick(force=True)
        return published[0]


def start_for(settings: DetectorSettings) -> StartFn:
    """The detector's part of the service shell: open the backend, subscribe, start the loop."""

    async def start(bus: Bus, ctx: ServiceContext) -> None:
        backend = open_backend(
            settings.detector_backend if settings.fleet is None else "simulated",
            host=settings.host_name,
            fleet=settings.fleet,
            nvidia_smi=settings.nvidia_smi_path,
        )
        log.info("GPU backend: %s%s", backend.NAME, f" (fleet {settings.fleet})" if settings.fleet else "")
        detector = Detector(bus, backend, settings)
        ctx.add_health(lambda: {
            "backend": backend.NAME,
            "gpus": str(sum(len(i.gpus) for i in detector.latest.values())),
        })
        ctx.on_stop(lambda: asyncio.to_thread(backend.close))
        await bus.subscribe(DETECTOR_RESCAN, RescanRequest, detector.on_rescan)
        ctx.spawn(detector.loop(), name="detect-loop")

    return start


def main(settings: DetectorSettings) -> None:
    run(ServiceName.DETECTOR, settings, start_for(settings))
