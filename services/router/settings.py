"""Settings of the router service."""

from __future__ import annotations

from shared.settings import CommonSettings


class RouterSettings(CommonSettings):
    """Only the common settings so far."""
