"""The strategy registry: one explicit table (``shared.plugins.Registry``), looked up by name."""

from __future__ import annotations

from services.planner.core.framework import Strategy
from services.planner.core.strategies.balanced import Balanced
from services.planner.core.strategies.isolation_first import IsolationFirst
from services.planner.core.strategies.latency_optimized import LatencyOptimized
from services.planner.core.strategies.manual import Manual
from services.planner.core.strategies.vram_based import VramBased
from shared.errors import InvalidRequest
from shared.plugins import Registry

REGISTRY: Registry[[], Strategy] = Registry("strategy")
"""Strategy name -> class; the order is the one the API, the console and ``gpuplane plan`` list."""

for _strategy in (Manual, VramBased, LatencyOptimized, IsolationFirst, Balanced):
    REGISTRY.register(_strategy.NAME, _strategy)

# Strategies are stateless: one instance each serves every plan.
STRATEGIES: dict[str, Strategy] = {name: REGISTRY.make(name) for name in REGISTRY.names()}
STRATEGY_NAMES: tuple[str, ...] = REGISTRY.names()
DEFAULT_STRATEGY = VramBased.NAME


class UnknownStrategy(InvalidRequest):
    """A strategy name that is not in the registry; the message lists the valid ones."""


def get_strategy(name: str, field: str = "strategy") -> Strategy:
    """The strategy called ``name``. A request names it, so an unknown one is the request's error
    (``UnknownStrategy``, a 422 naming ``field``) rather than the registry's ``ConfigError``."""
    if name not in REGISTRY:
        raise UnknownStrategy(f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGY_NAMES)}", field)
    return STRATEGIES[name]
