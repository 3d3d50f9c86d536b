"""Shared fixtures. Integration fixtures start the real thing: nats-server and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.bus.memory import MemoryBus
from tests.realdeps import NatsServer, Postgres

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
async def memory_bus() -> AsyncIterator[MemoryBus]:
    bus = MemoryBus("test")
    yield bus
    await bus.drain()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server for the whole session (tests that kill it use ``own_nats_server``)."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    server = Postgres(tmp_path_factory.mktemp("pg"))
    server.start()
    yield server
    server.stop()


REAL_DEPENDENCY_FIXTURES = {"nats_server", "own_nats_server", "postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a real nats-server or PostgreSQL is an integration test, marked or not."""
    for item in items:
        if REAL_DEPENDENCY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
