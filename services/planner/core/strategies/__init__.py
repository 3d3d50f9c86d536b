"""The strategy registry: one explicit table, looked up by name."""

from __future__ import annotations

from services.planner.core.framework import Strategy
from services.planner.core.strategies.balanced import Balanced
from services.planner.core.strategies.isolation_first import IsolationFirst
from services.planner.core.strategies.latency_optimized import LatencyOptimized
from services.planner.core.strategies.manual import Manual
from services.planner.core.strategies.vram_based import VramBased
from shared.errors import InvalidRequest

STRATEGIES: dict[str, Strategy] = {
    s.NAME: s for s in (Manual(), VramBased(), LatencyOptimized(), IsolationFirst(), Balanced())
}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)
DEFAULT_STRATEGY = VramBased.NAME


class UnknownStrategy(InvalidRequest):
    """A strategy name that is not in the registry; the message lists the valid ones."""


def get_strategy(name: str, field: str = "strategy") -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(
            f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGY_NAMES)}", field
        ) from None
