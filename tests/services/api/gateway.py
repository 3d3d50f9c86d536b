"""The gateway app over a given in-memory bus, for tests: started, connected, with a client that holds the
admin token (``anonymous_client`` has none)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.bus.memory import MemoryBus

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
TEST_HOST = "gw"


def gateway_settings(**overrides: Any) -> ApiSettings:
    """Settings for a gateway under test: a known admin token, the test client's host name allowed."""
    values: dict[str, Any] = {"nats_url": "nats://memory", "api_token": ADMIN_TOKEN, "allowed_hosts": TEST_HOST}
    return ApiSettings(**{**values, **overrides})


def client_for(app: FastAPI, token: str | None = ADMIN_TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{TEST_HOST}", headers=headers)


@asynccontextmanager
async def running_gateway(
    bus: MemoryBus, settings: ApiSettings | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Yield once the app's lifespan has connected to ``bus``."""

    async def factory(*_: object) -> MemoryBus:
        return bus

    app = create_app(settings or gateway_settings(), bus_factory=factory)
    async with app.router.lifespan_context(app):
        for _ in range(100):
            if app.state.gateway.dataplane is not None:
                break
            await asyncio.sleep(0.01)
        async with client_for(app) as client:
            yield app, client
