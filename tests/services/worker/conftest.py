"""Fixtures of the worker's tests: an in-memory bus with the reference GPUs' inventory, and workers on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shared.bus.memory import MemoryBus
from shared.contracts import WorkerState
from shared.subjects import inventory
from tests.builders import make_inventory, make_reference_gpus
from tests.services.worker.helpers import HOST, RunningWorker, launch, worker_settings


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    bus = MemoryBus("test")
    await bus.publish(inventory(HOST), make_inventory(make_reference_gpus(), host=HOST))
    yield bus
    await bus.drain()


@pytest.fixture
async def start(bus: MemoryBus, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start workers (settings overridden by keyword) on ``bus``, each once it is ready; stopped after."""
    running: list[RunningWorker] = []

    async def start_worker(**overrides: Any) -> RunningWorker:
        worker = await launch(bus, worker_settings(tmp_path, **overrides))
        running.append(worker)
        await worker.wait_status(lambda s: s.state is WorkerState.READY)
        return worker

    yield start_worker
    for worker in running:
        if not worker.task.done():
            await worker.stop()
