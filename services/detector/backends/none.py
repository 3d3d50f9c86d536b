"""The "none" backend: no GPUs, and the reasons why, so the inventory says what to fix."""

from __future__ import annotations

from typing import ClassVar

from services.detector.backends.base import HostScan
from shared.contracts import InventorySource


class NoneBackend:
    """Reports an empty inventory carrying the problems that led here."""

    NAME: ClassVar[str] = "none"
    SOURCE: ClassVar[InventorySource] = InventorySource.NONE

    def __init__(self, *, host: str, problems: tuple[str, ...] = ()) -> None:
        self._host = host
        self._problems = problems

    def scan(self) -> list[HostScan]:
        """One empty ``HostScan`` with the problems."""
        return [HostScan(host=self._host, source=self.SOURCE, gpus=(), problems=self._problems)]

    def close(self) -> None:
        """Nothing to release."""
