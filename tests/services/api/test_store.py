"""Inference keys and the audit trail, kept in a real PostgreSQL, through the gateway's admin API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from services.api.deps import GatewayState
from services.api.migrations import VERSION_TABLE
from services.api.store import METADATA
from shared.bus.base import Delivery
from shared.bus.memory import MemoryBus
from shared.contracts import (
    AuditRecord,
    ConfigPutRequest,
    ConfigSaved,
    GpuConfig,
)
from shared.database import make_engine
from shared.subjects import AUDIT_ALL, PLANNER_CONFIG_PUT
from tests.migrations import downgrade_to_base, drift_from_migrations
from tests.realdeps import Postgres
from tests.services.api.gateway import client_for, gateway_settings, running_gateway
from tests.services.router.fakes import FakeWorker

pytestmark = pytest.mark.integration

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Gateway:
    app: FastAPI
    client: httpx.AsyncClient
    database_url: str

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.app.state.gateway
        return state


@pytest.fixture
async def gateway(memory_bus: MemoryBus, postgres: Postgres) -> AsyncIterator[Gateway]:
    async def planner(req: ConfigPutRequest, _: Delivery) -> ConfigSaved:
        return ConfigSaved(config=GpuConfig(strategy=req.strategy, saved=True, revision=7))

    await memory_bus.subscribe(PLANNER_CONFIG_PUT, ConfigPutRequest, planner)
    url = postgres.fresh_database()
    async with running_gateway(memory_bus, gateway_settings(database_url=url)) as (app, client):
        # A worker the gateway's data plane reaches over NATS, serving the model /v1 asks for.
        worker = await FakeWorker(memory_bus, "w0", slots=8, models=(str(CHAT["model"]),)).start()
        for _ in range(200):
            if app.state.gateway.store is not None:
                break
            await asyncio.sleep(0.05)
        yield Gateway(app, client, url)
        worker.die()


async def test_a_key_is_shown_once_stored_hashed_works_on_v1_and_is_revoked(gateway: Gateway) -> None:
    r = await gateway.client.post("/api/system/keys", json={"name": "alice", "rpm_limit": 100})
    assert r.status_code == 201, r.text
    made = r.json()
    key = made["key"]
    assert key.startswith(made["prefix"]) and made["rpm_limit"] == 100 and made["created_by"] == "admin"

    listed = (await gateway.client.get("/api/system/keys")).json()["keys"]
    assert [(k["name"], k["prefix"]) for k in listed] == [("alice", made["prefix"])]
    assert key not in str(listed)
    with psycopg.connect(gateway.database_url) as conn:
        stored = conn.execute("SELECT hash, prefix FROM api_keys WHERE name = 'alice'").fetchone()
    assert stored is not None and key not in stored and len(stored[0]) == 64

    async with client_for(gateway.app, token=key) as alice:
        assert (await alice.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await gateway.client.post("/api/system/keys", json={"name": "alice"})).status_code == 409
        r = await gateway.client.delete("/api/system/keys/alice")
        assert r.status_code == 200 and r.json()["revoked_at"]
        assert (await alice.post("/v1/chat/completions", json=CHAT)).status_code == 401
    assert (await gateway.client.delete("/api/system/keys/alice")).status_code == 404
    everything = (await gateway.client.get("/api/system/keys", params={"include_revoked": "true"})).json()["keys"]
    assert [k["name"] for k in everything] == ["alice"]
    # The name is free again once revoked.
    assert (await gateway.client.post("/api/system/keys", json={"name": "alice"})).status_code == 201


@pytest.mark.parametrize(
    "body", [{"name": "ai*star"}, {"name": "a", "rpm_limit": 0}, {"name": "a", "max_priority": "urgent"}, {}]
)
async def test_a_bad_key_request_is_422(gateway: Gateway, body: dict[str, object]) -> None:
    assert (await gateway.client.post("/api/system/keys", json=body)).status_code == 422


async def test_the_audit_trail_says_who_did_what_from_where(gateway: Gateway, memory_bus: MemoryBus) -> None:
    published: list[AuditRecord] = []

    async def on_audit(record: AuditRecord, _: Delivery) -> None:
        published.append(record)

    await memory_bus.subscribe(AUDIT_ALL, AuditRecord, on_audit)
    r = await gateway.client.put("/api/system/gpu-config", json={"strategy": "balanced"})
    assert r.status_code == 200
    await gateway.client.post("/api/system/keys", json={"name": "bob"})
    async with client_for(gateway.app, token="definitely-not-a-token") as stranger:
        assert (await stranger.get("/api/system/gpus")).status_code == 401

    async def written() -> list[dict[str, object]]:
        for _ in range(100):
            page = (await gateway.client.get("/api/system/audit")).json()
            if len(page["records"]) >= 3:
                return page["records"]  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)
        raise AssertionError("the audit records were not written")

    records = await written()
    assert [r["action"] for r in records] == ["auth_failure", "key_create", "config_save"]
    failure, created, saved = records
    assert (saved["actor"], saved["actor_kind"], saved["outcome"]) == ("admin", "admin", "ok")
    assert saved["target"] == {"strategy": "balanced", "revision": "7"}
    assert saved["address"] == "127.0.0.1"
    assert created["target"] == {"key": "bob"}
    assert (failure["actor"], failure["outcome"]) == ("unknown", "refused")
    assert failure["target"] == {"path": "/api/system/gpus"}
    await memory_bus.settle()
    assert {r.action.value for r in published} == {"config_save", "key_create", "auth_failure"}

    only_saves = (await gateway.client.get("/api/system/audit", params={"action": "config_save"})).json()
    assert [r["action"] for r in only_saves["records"]] == ["config_save"]
    first = (await gateway.client.get("/api/system/audit", params={"limit": 2})).json()
    assert len(first["records"]) == 2 and first["next_before"] == first["records"][-1]["id"]
    rest = (await gateway.client.get("/api/system/audit", params={"before": first["next_before"]})).json()
    assert [r["action"] for r in rest["records"]] == ["config_save"] and rest["next_before"] is None
    async with client_for(gateway.app, token=None) as anonymous:
        assert (await anonymous.get("/api/system/audit")).status_code == 401


async def test_without_a_database_keys_answer_503_saying_why(memory_bus: MemoryBus) -> None:
    async with running_gateway(memory_bus) as (_, client):
        r = await client.post("/api/system/keys", json={"name": "x"})
    assert r.status_code == 503 and "GPUPLANE_DATABASE_URL" in r.json()["detail"]


def test_the_tables_match_the_migrations_and_downgrade_cleanly(postgres: Postgres) -> None:
    from services.api.store import AccessStore

    engine = make_engine(postgres.fresh_database())
    try:
        AccessStore(engine).migrate()
        assert drift_from_migrations(engine, METADATA, VERSION_TABLE) == []
        from services.api import store

        downgrade_to_base(engine, store.__file__)
    finally:
        engine.dispose()
