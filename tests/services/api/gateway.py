"""The gateway app over a given in-memory bus, for tests: started, connected, with a client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.bus.memory import MemoryBus


@asynccontextmanager
async def running_gateway(bus: MemoryBus) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Yield once the app's lifespan has connected to ``bus``."""

    async def factory(*_: object) -> MemoryBus:
        return bus

    app = create_app(ApiSettings(nats_url="nats://memory"), bus_factory=factory)
    async with app.router.lifespan_context(app):
        for _ in range(100):
            if app.state.gateway.bus is not None:
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            yield app, client
