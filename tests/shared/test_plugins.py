"""The plugin registry: names in registration order, duplicates refused, unknown names listed; and
the registries built on it (routing policies, planner strategies, worker and detector backends)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.plugins import InvalidPluginName, Registry


@dataclass(frozen=True)
class Greeter:
    """A fake plugin: its factory takes one argument."""

    word: str


def registry(*names: str) -> Registry[[str], Greeter]:
    made: Registry[[str], Greeter] = Registry("greeter")
    for name in names:
        made.register(name, Greeter)
    return made


@pytest.mark.parametrize(
    ("names", "listed"),
    [
        pytest.param((), (), id="empty"),
        pytest.param(("one",), ("one",), id="one"),
        pytest.param(("b", "a", "c"), ("b", "a", "c"), id="registration-order-not-sorted"),
    ],
)
def test_names_keep_the_registration_order(names: tuple[str, ...], listed: tuple[str, ...]) -> None:
    plugins = registry(*names)
    assert plugins.names() == listed
    assert tuple(plugins) == listed
    assert tuple(plugins.view()) == listed
    assert len(plugins) == len(listed)


def test_make_calls_the_factory_with_the_arguments() -> None:
    plugins = registry("hello")
    assert plugins.make("hello", "hi") == Greeter("hi")
    assert plugins.get("hello") is Greeter
    assert plugins.check("hello") == "hello"
    assert "hello" in plugins and "bye" not in plugins


def test_register_returns_the_factory_and_the_decorator_registers_it() -> None:
    plugins: Registry[[str], Greeter] = Registry("greeter")
    assert plugins.register("class", Greeter) is Greeter

    @plugins.registers("shout")
    def shout(word: str) -> Greeter:
        return Greeter(word.upper())

    assert plugins.names() == ("class", "shout")
    assert plugins.make("shout", "hi") == Greeter("HI")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("a", "greeter 'a' is registered already (by Greeter); ", id="duplicate"),
        pytest.param("", "a greeter needs a name without surrounding blanks, not ''", id="empty"),
        pytest.param(" b", "a greeter needs a name without surrounding blanks, not ' b'", id="padded"),
    ],
)
def test_a_taken_or_blank_name_is_refused(name: str, message: str) -> None:
    plugins = registry("a", "b")

    with pytest.raises(InvalidPluginName) as caught:
        plugins.register(name, lambda word: Greeter(word))

    assert str(caught.value).startswith(message)
    assert plugins.names() == ("a", "b")
    assert plugins.make("a", "x") == Greeter("x")  # the first registration stands


def test_a_duplicate_names_both_factories() -> None:
    plugins = registry("a")

    def other(word: str) -> Greeter:
        return Greeter(word)

    with pytest.raises(InvalidPluginName, match=r"\(by Greeter\); .*other needs another name"):
        plugins.register("a", other)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        pytest.param(("b", "a", "c"), "unknown greeter 'x'; valid: b, a, c", id="listed-in-registration-order"),
        pytest.param((), "unknown greeter 'x'; valid: none registered", id="empty"),
    ],
)
@pytest.mark.parametrize("call", ["get", "make", "check"])
def test_an_unknown_name_is_a_config_error_listing_the_valid_ones(
    names: tuple[str, ...], message: str, call: str
) -> None:
    plugins = registry(*names)
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: plugins.get("x"),
        "make": lambda: plugins.make("x", "hi"),
        "check": lambda: plugins.check("x"),
    }

    with pytest.raises(ConfigError) as caught:
        calls[call]()

    assert str(caught.value) == message == plugins.unknown("x")


def test_the_view_is_live_and_read_only() -> None:
    plugins = registry("a")
    view = plugins.view()
    plugins.register("b", Greeter)
    assert list(view) == ["a", "b"]
    with pytest.raises(TypeError):
        view["c"] = Greeter  # type: ignore[index]


# --------------------------------------------------------------------------- the registries built on it


def _policies() -> Registry[Any, Any]:
    from services.router.core.policies import REGISTRY

    return REGISTRY


def _strategies() -> Registry[Any, Any]:
    from services.planner.core.strategies import REGISTRY

    return REGISTRY


def _worker_backends() -> Registry[Any, Any]:
    from services.worker.backends import REGISTRY

    return REGISTRY


def _detector_backends() -> Registry[Any, Any]:
    from services.detector.backends import REGISTRY

    return REGISTRY


@pytest.mark.parametrize(
    ("plugins", "kind", "names"),
    [
        pytest.param(
            _policies, "routing policy", ("affinity", "least_connections", "p2c", "random", "round_robin"), id="router"
        ),
        pytest.param(
            _strategies,
            "strategy",
            ("manual", "vram_based", "latency_optimized", "isolation_first", "balanced"),
            id="planner",
        ),
        pytest.param(_worker_backends, "worker backend", ("llamacpp", "openai", "simulated"), id="worker"),
        pytest.param(
            _detector_backends, "GPU backend", ("auto", "nvml", "nvidia-smi", "simulated", "none"), id="detector"
        ),
    ],
)
def test_every_registry_and_its_names(
    plugins: Callable[[], Registry[Any, Any]], kind: str, names: tuple[str, ...]
) -> None:
    found = plugins()
    assert (found.kind, found.names()) == (kind, names)
    with pytest.raises(InvalidPluginName):
        found.register(names[0], lambda *_: None)
    assert found.names() == names
