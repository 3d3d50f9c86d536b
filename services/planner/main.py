"""Planner service: assignment strategies and the stored configuration (filled by the planner issue).

For now a thin shell: it connects, answers health requests, heartbeats and drains on signal.
"""

from __future__ import annotations

from services.planner.settings import PlannerSettings
from shared.bus.base import Bus
from shared.contracts import ServiceName
from shared.service import ServiceContext, run


async def start(bus: Bus, ctx: ServiceContext) -> None:
    """Nothing to subscribe yet beyond what every service answers."""


def main(settings: PlannerSettings) -> None:
    run(ServiceName.PLANNER, settings, start)
