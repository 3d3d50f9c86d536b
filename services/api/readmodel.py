"""What the gateway knows, fed by events: GETs read it without a NATS round trip. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.contracts import Gpu, Heartbeat, Inventory, InventorySource, ServiceName
from shared.fleet import LatestInventories


@dataclass(frozen=True)
class ServiceStatus:
    service: ServiceName
    alive: bool
    instances: int
    last_heartbeat_at: datetime | None
    seconds_since_heartbeat: float | None


@dataclass(frozen=True)
class GpuView:
    host: str
    gpu: Gpu


@dataclass(frozen=True)
class FleetView:
    gpus: tuple[GpuView, ...]
    source: str
    inventories: tuple[Inventory, ...]
    message: str


class ReadModel:
    """Latest inventory per host and latest heartbeat per service instance."""

    def __init__(self) -> None:
        self._inventories = LatestInventories()
        # Keyed by instance; stamped with our receive time so other hosts' clocks do not matter.
        self._heartbeats: dict[tuple[ServiceName, str], tuple[Heartbeat, datetime]] = {}

    def apply_inventory(self, inv: Inventory) -> bool:
        """Keep ``inv`` unless a newer inventory of that host is already known."""
        return self._inventories.apply(inv)

    def apply_heartbeat(self, beat: Heartbeat, received_at: datetime, forget_after_s: float = 3600.0) -> None:
        """Record a heartbeat; instances silent for ``forget_after_s`` (restarted processes) are dropped."""
        self._heartbeats[(beat.service, beat.instance)] = (beat, received_at)
        gone = [key for key, (_, at) in self._heartbeats.items() if (received_at - at).total_seconds() > forget_after_s]
        for key in gone:
            del self._heartbeats[key]

    def inventories(self) -> tuple[Inventory, ...]:
        return self._inventories.all()

    def fleet(self) -> FleetView | None:
        """All GPUs of all hosts, or None before the first inventory."""
        inventories = self.inventories()
        if not inventories:
            return None
        sources = {inv.source for inv in inventories}
        source = next(iter(sources)).value if len(sources) == 1 else "mixed"
        gpus = tuple(GpuView(inv.host, gpu) for inv in inventories for gpu in inv.gpus)
        message = "; ".join(f"{inv.host}: {inv.status_message}" for inv in inventories)
        if gpus and InventorySource.SIMULATED in sources:
            message += "; SIMULATED, not real hardware"
        return FleetView(gpus=gpus, source=source, inventories=inventories, message=message)

    def services(self, now: datetime, stale_after_s: float) -> dict[ServiceName, ServiceStatus]:
        """Liveness of every known service, from heartbeats."""
        result: dict[ServiceName, ServiceStatus] = {}
        for service in ServiceName:
            seen = [at for (name, _), (_, at) in self._heartbeats.items() if name is service]
            fresh = [at for at in seen if (now - at).total_seconds() <= stale_after_s]
            latest = max(seen, default=None)
            result[service] = ServiceStatus(
                service=service,
                alive=bool(fresh),
                instances=len(fresh),
                last_heartbeat_at=latest,
                seconds_since_heartbeat=(now - latest).total_seconds() if latest else None,
            )
        return result
