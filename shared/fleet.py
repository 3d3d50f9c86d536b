"""The latest inventory of every host, as events deliver them (gateway and planner keep one each)."""

from __future__ import annotations

from shared.contracts import Inventory


class LatestInventories:
    """Latest inventory per host; an older one arriving late does not replace a newer one."""

    def __init__(self) -> None:
        self._by_host: dict[str, Inventory] = {}

    def apply(self, inv: Inventory) -> bool:
        """Keep ``inv`` unless a newer inventory of that host is already known."""
        current = self._by_host.get(inv.host)
        if current is not None and current.detected_at > inv.detected_at:
            return False
        self._by_host[inv.host] = inv
        return True

    def __bool__(self) -> bool:
        return bool(self._by_host)

    def all(self) -> tuple[Inventory, ...]:
        """Every host's inventory, hosts in name order."""
        return tuple(self._by_host[h] for h in sorted(self._by_host))
