"""Routing policies by name: the one registry. ``GPUPLANE_ROUTING_POLICY`` picks one."""

from __future__ import annotations

from collections.abc import Callable

from services.router.core.policies.affinity import AffinityLeastLoaded
from services.router.core.policies.base import RoutingPolicy
from services.router.core.policies.p2c import PowerOfTwoChoices
from services.router.core.policies.simple import LeastConnections, RandomChoice, RoundRobin
from shared.errors import ConfigError

POLICIES: dict[str, Callable[[float], RoutingPolicy]] = {
    AffinityLeastLoaded.NAME: lambda give_way: AffinityLeastLoaded(give_way),
    PowerOfTwoChoices.NAME: lambda give_way: PowerOfTwoChoices(give_way),
    RoundRobin.NAME: lambda _: RoundRobin(),
    RandomChoice.NAME: lambda _: RandomChoice(),
    LeastConnections.NAME: lambda _: LeastConnections(),
}


def check_policy_name(name: str) -> str:
    if name not in POLICIES:
        raise ConfigError(f"unknown routing policy {name!r}; valid: {', '.join(sorted(POLICIES))}")
    return name


def make_policy(name: str, give_way_factor: float = 2.0) -> RoutingPolicy:
    """A fresh policy instance; ``ConfigError`` lists the valid names for an unknown one."""
    return POLICIES[check_policy_name(name)](give_way_factor)


__all__ = ["POLICIES", "RoutingPolicy", "check_policy_name", "make_policy"]
