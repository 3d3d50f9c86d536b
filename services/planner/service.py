"""What the planner does with each request: plan with the pure core, keep the result in the store.

No bus and no database driver here: ``main.py`` wires requests to these methods, and the store
is anything that has :class:`ConfigRepository`'s methods (PostgreSQL in production, a fake in
unit tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.planner.core.model import Pin, ServiceSpec
from services.planner.core.planning import make_plan
from services.planner.core.render import diff, preview
from services.planner.core.snapshot import make_problem, pins_from_requests, pins_from_saved, slots_from
from services.planner.core.strategies import STRATEGIES, get_strategy
from services.planner.core.strategies.manual import Manual
from shared.contracts import (
    AssignmentRequest,
    ConfigPutRequest,
    ConfigReply,
    ConfigRestoreRequest,
    ConfigSaved,
    GpuConfig,
    Inventory,
    PlanPreview,
    ServiceAssignment,
    StrategyInfo,
)
from shared.errors import GpuplaneError, InvalidRequest
from shared.fleet import LatestInventories

log = logging.getLogger("gpuplane.planner")


class ConfigRepository(Protocol):
    """Where the configuration is kept (``services.planner.store.ConfigStore``)."""

    def load(self) -> GpuConfig | None: ...

    def save(
        self, strategy: str, assignments: Sequence[ServiceAssignment], warnings: Sequence[str], now: datetime
    ) -> GpuConfig: ...

    def record_devices(self, inventory: Inventory, now: datetime) -> None: ...

    def revision(self, revision: int) -> GpuConfig | None: ...


class NotReady(GpuplaneError):
    """The planner cannot answer yet (no inventory, no database); the message says what is missing."""


@dataclass(frozen=True)
class SaveResult:
    reply: ConfigSaved
    saved: GpuConfig


class Planner:
    """Answers config reads, previews and saves. One save at a time per process."""

    def __init__(
        self,
        catalog: Sequence[ServiceSpec],
        *,
        default_strategy: str,
        headroom_gb: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.catalog = tuple(catalog)
        self.default_strategy = get_strategy(default_strategy).NAME
        self.headroom_gb = headroom_gb
        self.inventories = LatestInventories()
        self.store: ConfigRepository | None = None
        self.store_problem: str | None = "no database configured (GPUPLANE_DATABASE_URL): previews only"
        self._clock = clock
        self._save_lock = asyncio.Lock()

    @staticmethod
    def strategies() -> tuple[StrategyInfo, ...]:
        return tuple(
            StrategyInfo(name=s.NAME, description=s.DESCRIPTION, recommended=s.NAME == "vram_based")
            for s in STRATEGIES.values()
        )

    def _inventories(self) -> tuple[Inventory, ...]:
        if not self.inventories:
            raise NotReady("no GPU inventory received yet from the detector; try again in a few seconds")
        return self.inventories.all()

    def _store(self) -> ConfigRepository:
        if self.store is None:
            raise NotReady(f"the configuration store is not available: {self.store_problem}")
        return self.store

    async def _load(self, store: ConfigRepository) -> GpuConfig | None:
        saved = await asyncio.to_thread(store.load)
        return self._in_catalog_order(saved) if saved is not None else None

    def _in_catalog_order(self, config: GpuConfig) -> GpuConfig:
        position = {s.name: i for i, s in enumerate(self.catalog)}
        ordered = sorted(config.assignments, key=lambda a: (position.get(a.service, len(position)), a.service))
        return config.model_copy(update={"assignments": self._described(ordered)})

    def _described(self, assignments: Sequence[ServiceAssignment]) -> tuple[ServiceAssignment, ...]:
        """``assignments`` with what the catalog says of each service (whether its budget may be set)."""
        adjustable = {s.name for s in self.catalog if s.budget_adjustable}
        return tuple(a.model_copy(update={"budget_adjustable": a.service in adjustable}) for a in assignments)

    def _plan_for(self, strategy_name: str, pins: Sequence[Pin], saved: GpuConfig | None) -> PlanPreview:
        """The plan as a preview, its changes counted from ``saved``."""
        problem = make_problem(self._inventories(), self.catalog, pins, self.headroom_gb)
        plan = make_plan(problem, get_strategy(strategy_name))
        proposal = preview(plan, saved.assignments if saved else ())
        return proposal.model_copy(update={"assignments": self._described(proposal.assignments)})

    def _pins_for(self, strategy: str, saved: GpuConfig | None) -> tuple[Pin, ...]:
        """A strategy on its own plans from scratch; ``manual`` keeps the saved assignments."""
        if strategy == Manual.NAME and saved is not None:
            known = {s.name for s in self.catalog}
            return pins_from_saved([a for a in saved.assignments if a.service in known])
        return ()

    async def preview(
        self, strategy: str | None, assignments: Sequence[AssignmentRequest] | None = None
    ) -> PlanPreview:
        """What a save of ``strategy`` (with ``assignments``, when given) would store; stores nothing."""
        saved = await self._load(self.store) if self.store is not None else None
        if not assignments:
            return self._preview(strategy, saved)
        name = get_strategy(strategy or (saved.strategy if saved else self.default_strategy)).NAME
        pins = pins_from_requests(assignments, self.catalog, slots_from(self._inventories()))
        return self._plan_for(name, pins, saved)

    def _preview(self, strategy: str | None, saved: GpuConfig | None) -> PlanPreview:
        name = get_strategy(strategy or (saved.strategy if saved else self.default_strategy)).NAME
        return self._plan_for(name, self._pins_for(name, saved), saved)

    async def config(self) -> ConfigReply:
        saved = await self._load(self._store())
        if saved is None:
            proposal = self._preview(self.default_strategy, None)
            config = GpuConfig(
                strategy=proposal.strategy, saved=False, assignments=proposal.assignments, warnings=proposal.warnings
            )
            return ConfigReply(config=config, strategies=self.strategies(), message=proposal.message)
        current = self._preview(Manual.NAME, saved)
        known = {a.service for a in saved.assignments}
        missing = [s.name for s in self.catalog if s.name not in known]
        extra = [w for w in current.warnings if w not in saved.warnings and not w.startswith("No GPU chosen for")]
        if missing:
            extra.append(f"{', '.join(missing)} in the catalog but not in the saved configuration; save again to place "
                         f"{'it' if len(missing) == 1 else 'them'}.")
        config = saved.model_copy(update={"warnings": (*saved.warnings, *extra)})
        return ConfigReply(config=config, strategies=self.strategies(), message=current.message)

    async def restore(self, request: ConfigRestoreRequest) -> SaveResult:
        """Save an earlier revision's strategy and assignments again, as they were (a rollback does this)."""
        store = self._store()
        async with self._save_lock:
            saved = await self._load(store)
            old = await asyncio.to_thread(store.revision, request.revision)
            if old is None:
                raise InvalidRequest(f"there is no saved revision {request.revision}", field="revision")
            stored = await asyncio.to_thread(store.save, old.strategy, old.assignments, old.warnings, self._clock())
            config = self._in_catalog_order(stored)
        changes = diff(saved.assignments if saved else (), config.assignments)
        log.info("restored revision %d as revision %d", request.revision, config.revision)
        return SaveResult(ConfigSaved(warnings=config.warnings, config=config, changes=changes), config)

    async def save(self, request: ConfigPutRequest) -> SaveResult:
        strategy = get_strategy(request.strategy).NAME
        store = self._store()
        async with self._save_lock:
            saved = await self._load(store)
            if request.assignments:
                gpus = slots_from(self._inventories())
                pins = pins_from_requests(request.assignments, self.catalog, gpus)
            else:
                pins = self._pins_for(strategy, saved)
            proposal = self._plan_for(strategy, pins, saved)
            stored = await asyncio.to_thread(
                store.save, strategy, proposal.assignments, proposal.warnings, self._clock()
            )
            config = self._in_catalog_order(stored)
        changes = proposal.changes
        log.info("saved GPU configuration revision %d (%s, %d change(s), %d warning(s))",
                 config.revision, strategy, len(changes), len(proposal.warnings))
        return SaveResult(ConfigSaved(warnings=proposal.warnings, config=config, changes=changes), config)
