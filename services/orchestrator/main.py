"""Orchestrator service: applies plans to running containers (filled by the orchestrator issue).

For now a thin shell: it connects, answers health requests, heartbeats and drains on signal.
"""

from __future__ import annotations

from services.orchestrator.settings import OrchestratorSettings
from shared.bus.base import Bus
from shared.contracts import ServiceName
from shared.service import ServiceContext, run


async def start(bus: Bus, ctx: ServiceContext) -> None:
    """Nothing to subscribe yet beyond what every service answers."""


def main(settings: OrchestratorSettings) -> None:
    run(ServiceName.ORCHESTRATOR, settings, start)
