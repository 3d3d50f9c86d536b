"""Routing policies by name: the one registry. ``GPUPLANE_ROUTING_POLICY`` picks one."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from services.router.core.policies.affinity import DEFAULT_GIVE_WAY_FACTOR, AffinityLeastLoaded
from services.router.core.policies.base import RoutingPolicy
from services.router.core.policies.p2c import PowerOfTwoChoices
from services.router.core.policies.simple import LeastConnections, RandomChoice, RoundRobin
from shared.plugins import Registry

REGISTRY: Registry[[float], RoutingPolicy] = Registry("routing policy")
"""Policy name -> factory taking the give-way factor (the classic balancers ignore it)."""

# Registered alphabetically: the error for an unknown name lists them in this order.
REGISTRY.register(AffinityLeastLoaded.NAME, AffinityLeastLoaded)
REGISTRY.register(LeastConnections.NAME, lambda _give_way: LeastConnections())
REGISTRY.register(PowerOfTwoChoices.NAME, PowerOfTwoChoices)
REGISTRY.register(RandomChoice.NAME, lambda _give_way: RandomChoice())
REGISTRY.register(RoundRobin.NAME, lambda _give_way: RoundRobin())

POLICIES: Mapping[str, Callable[[float], RoutingPolicy]] = REGISTRY.view()
"""The registry as a read-only mapping (name -> factory)."""


def check_policy_name(name: str) -> str:
    """``name`` if a policy has it, else ``ConfigError`` listing the valid names."""
    return REGISTRY.check(name)


def make_policy(name: str, give_way_factor: float = DEFAULT_GIVE_WAY_FACTOR) -> RoutingPolicy:
    """A fresh policy instance; ``ConfigError`` lists the valid names for an unknown one."""
    return REGISTRY.make(name, give_way_factor)


__all__ = ["POLICIES", "REGISTRY", "RoutingPolicy", "check_policy_name", "make_policy"]
