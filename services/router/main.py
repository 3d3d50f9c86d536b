"""Router service: balances inference across per-GPU workers (filled by the router issue).

For now a thin shell: it connects, answers health requests, heartbeats and drains on signal.
"""

from __future__ import annotations

from services.router.settings import RouterSettings
from shared.bus.base import Bus
from shared.contracts import ServiceName
from shared.service import ServiceContext, run


async def start(bus: Bus, ctx: ServiceContext) -> None:
    """Nothing to subscribe yet beyond what every service answers."""


def main(settings: RouterSettings) -> None:
    run(ServiceName.ROUTER, settings, start)
