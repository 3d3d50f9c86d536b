"""An in-memory configuration repository with the store's semantics (fakes over mocks)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from shared.contracts import GpuConfig, Inventory, ServiceAssignment
from shared.errors import GpuplaneError


class FakeRepository:
    """Keeps one configuration; ``fail_with`` makes the next saves fail without changing anything."""

    def __init__(self) -> None:
        self.config: GpuConfig | None = None
        self.fail_with: GpuplaneError | None = None
        self.recorded: list[Inventory] = []
        self.revisions: dict[int, GpuConfig] = {}

    def load(self) -> GpuConfig | None:
        return self.config

    def save(
        self, strategy: str, assignments: Sequence[ServiceAssignment], warnings: Sequence[str], now: datetime
    ) -> GpuConfig:
        if self.fail_with is not None:
            raise self.fail_with
        revision = (self.config.revision if self.config else 0) + 1
        self.config = GpuConfig(
            strategy=strategy,
            saved=True,
            saved_at=now,
            revision=revision,
            assignments=tuple(assignments),
            warnings=tuple(warnings),
        )
        self.revisions[revision] = self.config
        return self.config

    def revision(self, revision: int) -> GpuConfig | None:
        return self.revisions.get(revision)

    def record_devices(self, inventory: Inventory, now: datetime) -> None:
        self.recorded.append(inventory)
