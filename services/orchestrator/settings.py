"""Settings of the orchestrator service."""

from __future__ import annotations

from shared.settings import CommonSettings


class OrchestratorSettings(CommonSettings):
    """Only the common settings so far."""
