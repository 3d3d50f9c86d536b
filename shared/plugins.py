"""The one plugin registry: named factories of one kind of plugin (routing policies, planner
strategies, worker and detector backends).

Modelled on the Kubernetes scheduler framework's registry: a name maps to a factory, a second
plugin under a taken name is refused when it registers (at import, so a clash never reaches a
running service), and an unknown name fails at start-up with the valid ones listed.

    POLICIES: Registry[[float], RoutingPolicy] = Registry("routing policy")
    POLICIES.register("affinity", AffinityLeastLoaded)
    POLICIES.make("affinity", 2.0)    # a fresh AffinityLeastLoaded(2.0)
    POLICIES.make("fastest", 2.0)     # ConfigError: unknown routing policy 'fastest'; valid: affinity
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import ClassVar, Generic, ParamSpec, TypeVar

from shared.errors import ConfigError, GpuplaneError, ReplyCode

P = ParamSpec("P")
T = TypeVar("T")


class InvalidPluginName(GpuplaneError):
    """A plugin registered under a name its kind has already (or a blank one): a programming error,
    raised at import."""

    reply_code: ClassVar[ReplyCode] = "internal"


class Registry(Generic[P, T]):
    """Factories of one ``kind`` of plugin by name, in the order they were registered.

    ``P`` is what a factory takes and ``T`` what it makes: ``Registry[[BackendConfig], InferenceBackend]``.
    A class is a factory of its instances, so most plugins register their class.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        """What the plugins are, in words, for messages: ``"routing policy"``."""
        self._factories: dict[str, Callable[P, T]] = {}

    def register(self, name: str, factory: Callable[P, T]) -> Callable[P, T]:
        """Add ``factory`` under ``name``; returns it. ``InvalidPluginName`` if the name is taken."""
        if not name or name != name.strip():
            raise InvalidPluginName(f"a {self.kind} needs a name without surrounding blanks, not {name!r}")
        existing = self._factories.get(name)
        if existing is not None:
            raise InvalidPluginName(
                f"{self.kind} {name!r} is registered already (by {_describe(existing)}); "
                f"{_describe(factory)} needs another name"
            )
        self._factories[name] = factory
        return factory

    def registers(self, name: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """Decorator form of ``register``, for factory functions: ``@BACKENDS.registers("nvml")``."""

        def add(factory: Callable[P, T]) -> Callable[P, T]:
            return self.register(name, factory)

        return add

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered, listing the valid ones."""
        return f"unknown {self.kind} {name!r}; valid: {', '.join(self._factories) or 'none registered'}"

    def check(self, name: str) -> str:
        """``name`` if it is registered, else ``ConfigError`` listing the valid names (for settings)."""
        if name not in self._factories:
            raise ConfigError(self.unknown(name))
        return name

    def get(self, name: str) -> Callable[P, T]:
        """The factory registered as ``name``; ``ConfigError`` listing the valid names if none is."""
        return self._factories[self.check(name)]

    def make(self, name: str, *args: P.args, **kwargs: P.kwargs) -> T:
        """A new plugin from the factory registered as ``name``."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order (the order messages and listings use)."""
        return tuple(self._factories)

    def view(self) -> Mapping[str, Callable[P, T]]:
        """A read-only, live name -> factory mapping (for callers that want a dict)."""
        return MappingProxyType(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._factories)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()!r})"


def _describe(factory: object) -> str:
    return getattr(factory, "__qualname__", None) or repr(factory)
