"""The message bus: a protocol, a NATS implementation and an in-memory one."""

from shared.bus.base import Bus, Delivery, Handler, Subscription
from shared.bus.memory import MemoryBus

__all__ = ["Bus", "Delivery", "Handler", "MemoryBus", "Subscription"]
