"""Settings of the planner service."""

from __future__ import annotations

from shared.settings import CommonSettings


class PlannerSettings(CommonSettings):
    """Only the common settings so far."""
