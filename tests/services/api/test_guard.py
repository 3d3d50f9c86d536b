"""The gateway's door, over an in-memory bus: credentials, browsers' marks, limits and bodies, before any route."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from services.api.access import KeyRecord, hash_secret, new_key
from services.api.deps import GatewayState
from shared.bus.base import Delivery
from shared.bus.memory import MemoryBus
from shared.contracts import (
    ConfigPutRequest,
    ConfigSaved,
    GpuConfig,
    Priority,
    WorkerTask,
)
from shared.subjects import PLANNER_CONFIG_PUT
from tests.services.api.gateway import ADMIN_TOKEN, client_for, gateway_settings, running_gateway
from tests.services.router.fakes import FakeWorker

NOW = datetime(2026, 12, 6, tzinfo=UTC)
PUT = {"strategy": "vram_based", "assignments": [{"service": "ai-llm", "gpu_index": 0}]}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Door:
    app: FastAPI
    client: httpx.AsyncClient
    bus: MemoryBus
    saves: list[ConfigPutRequest]
    asked: list[WorkerTask]

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.app.state.gateway
        return state

    def anonymous(self) -> httpx.AsyncClient:
        return client_for(self.app, token=None)

    def holding(self, token: str) -> httpx.AsyncClient:
        return client_for(self.app, token=token)

    def add_key(self, name: str, **limits: object) -> str:
        secret, prefix = new_key()
        record = KeyRecord(name=name, prefix=prefix, hash=hash_secret(secret), created_at=NOW, created_by="t", **limits)
        self.state.keys.replace([*self.state.keys.records(), record])
        return secret


@pytest.fixture
async def door(memory_bus: MemoryBus) -> AsyncIterator[Door]:
    saves: list[ConfigPutRequest] = []

    async def planner(req: ConfigPutRequest, _: Delivery) -> ConfigSaved:
        saves.append(req)
        return ConfigSaved(config=GpuConfig(strategy=req.strategy, saved=True, revision=len(saves)))

    await memory_bus.subscribe(PLANNER_CONFIG_PUT, ConfigPutRequest, planner)
    async with running_gateway(memory_bus) as (app, client):
        # A worker the gateway's data plane reaches over NATS (it advertises no engine address).
        worker = await FakeWorker(memory_bus, "w0", slots=8, models=("m",)).start()
        await memory_bus.settle()
        yield Door(app, client, memory_bus, saves, worker.tasks)
        worker.die()


async def test_a_change_needs_the_admin_token(door: Door) -> None:
    async with door.anonymous() as anonymous:
        r = await anonymous.put("/api/system/gpu-config", json=PUT)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    async with door.holding("not-the-token-at-all") as stranger:
        assert (await stranger.put("/api/system/gpu-config", json=PUT)).status_code == 401
    assert door.saves == []
    r = await door.client.put("/api/system/gpu-config", json=PUT)
    assert r.status_code == 200 and len(door.saves) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/api/system/gpus",
        "/api/system/gpu-config",
        "/api/system/audit",
        "/api/system/backup",
        "/api/events",
        "/docs",
        "/openapi.json",
        "/nope",
    ],
)
async def test_reads_need_a_credential_too(door: Door, path: str) -> None:
    async with door.anonymous() as anonymous:
        assert (await anonymous.get(path)).status_code == 401


async def test_only_healthz_metrics_and_the_login_page_are_open(door: Door) -> None:
    async with door.anonymous() as anonymous:
        for path in ("/healthz", "/metrics", "/", "/console/login.js", "/console/app.css"):
            assert (await anonymous.get(path)).status_code in (200, 503), path
        # Only the console's files are open under /console/, and nothing outside them.
        for path in ("/console/../services/api/settings.py", "/console/%2e%2e/deps.py", "/console/NOPE.js"):
            assert (await anonymous.get(path)).status_code in (401, 404), path


async def test_a_key_may_call_v1_but_change_nothing(door: Door) -> None:
    key = door.add_key("alice")
    async with door.holding(key) as alice:
        assert (await alice.post("/v1/chat/completions", json=CHAT)).status_code == 200
        r = await alice.put("/api/system/gpu-config", json=PUT)
        assert r.status_code == 403 and "admin token" in r.json()["detail"]
        assert (await alice.get("/api/system/keys")).status_code == 403
        # The console's routes are the admin's too.
        assert (await alice.get("/api/events")).status_code == 403
        assert (await alice.get("/api/system/backup")).status_code == 403
        assert (await alice.post("/api/system/gpu-config/preview", json=PUT)).status_code == 403
        yaml_body = {"content": b"kind: gpuplane-backup\n", "headers": {"Content-Type": "application/yaml"}}
        restore = await alice.post("/api/system/backup/restore", **yaml_body)  # type: ignore[arg-type]
        assert restore.status_code == 403
    async with door.anonymous() as anonymous:
        assert (await anonymous.post("/api/system/gpu-config/preview", json=PUT)).status_code == 401
    assert door.saves == []


async def test_v1_refusals_are_in_openais_shape(door: Door) -> None:
    async with door.anonymous() as anonymous:
        r = await anonymous.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error" and r.json()["error"]["code"] == "invalid_api_key"
    r = await door.client.get("/v1/no-such-route")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


async def test_a_keys_rate_and_priority_limits(door: Door) -> None:
    key = door.add_key("bob", rpm_limit=2, max_priority=Priority.NORMAL)
    async with door.holding(key) as bob:
        codes = [(await bob.post("/v1/chat/completions", json=CHAT)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = await bob.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
    key = door.add_key("carol", max_priority=Priority.NORMAL)
    async with door.holding(key) as carol:
        r = await carol.post("/v1/chat/completions", json={**CHAT, "priority": "high"})
        assert r.status_code == 403
        assert r.json()["error"]["param"] == "priority" and r.json()["error"]["type"] == "permission_error"
        assert (await carol.post("/v1/chat/completions", json={**CHAT, "priority": "low"})).status_code == 200


async def test_usage_is_counted_per_key_name_never_per_key(door: Door) -> None:
    key = door.add_key("dave")
    async with door.holding(key) as dave:
        for _ in range(2):
            assert (await dave.post("/v1/chat/completions", json=CHAT)).status_code == 200
    sample = REGISTRY.get_sample_value
    assert sample("gpuplane_api_key_requests_total", {"key": "dave", "outcome": "ok"}) == 2
    assert sample("gpuplane_api_key_prompt_tokens_total", {"key": "dave"}) == 6
    assert sample("gpuplane_api_key_completion_tokens_total", {"key": "dave"}) == 10
    metrics = (await door.client.get("/metrics")).text
    assert key not in metrics and key[:12] not in metrics


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8080", "localhost.attacker.example"])
async def test_an_unknown_host_name_is_refused_before_anything(door: Door, host: str) -> None:
    r = await door.client.put("/api/system/gpu-config", json=PUT, headers={"Host": host})
    assert r.status_code == 421 and "GPUPLANE_ALLOWED_HOSTS" in r.json()["detail"]
    assert (await door.client.get("/healthz", headers={"Host": host})).status_code == 421
    assert door.saves == []


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}],
)
async def test_a_change_a_browser_marks_as_cross_site_is_refused(door: Door, headers: dict[str, str]) -> None:
    r = await door.client.put("/api/system/gpu-config", json=PUT, headers=headers)
    assert r.status_code == 403 and "another site" in r.json()["detail"]
    assert door.saves == []


async def test_changes_take_json_only(door: Door) -> None:
    """What any web page may send anywhere without asking: a form, or text/plain."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        r = await door.client.put(
            "/api/system/gpu-config", content=json.dumps(PUT), headers={"Content-Type": content_type}
        )
        assert r.status_code == 415, content_type
    r = await door.client.post("/api/system/gpu-config/apply", content=b"", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert door.saves == []


async def test_bodies_over_the_limit_are_413(memory_bus: MemoryBus) -> None:
    async with running_gateway(memory_bus, gateway_settings(control_body_max_bytes=1024)) as (_, client):
        r = await client.put("/api/system/gpu-config", json={"strategy": "x" * 2000})
        assert r.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"x" * 600

        # No Content-Length to check first: counted while read.
        chunked = await client.put(
            "/api/system/gpu-config", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert chunked.status_code == 413
        big = await client.post(
            "/v1/chat/completions",
            content=b"{" + b" " * (5 * 1024 * 1024) + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (
            b'{"strategy": "manual", "assignments": [{"service": "ai-llm", "vram_budget_override": NaN}]}',
            ["body", "assignments", 0, "vram_budget_override"],
        ),
        (
            b'{"strategy": "manual", "assignments": [{"service": "ai-llm", "gpu_index": 2147483648}]}',
            ["body", "assignments", 0, "gpu_index"],
        ),
        (b'{"strategy": "manual", "assignments": [{"service": "\\ud800"}]}', ["body", "assignments", 0, "service"]),
        (b'{"strategy": "manual", "assignments": [{"service": "ai*star"}]}', ["body", "assignments", 0, "service"]),
        (b'{"strategy": Infinity}', ["body", "strategy"]),
    ],
)
async def test_bodies_no_field_could_take_are_422_naming_the_field(door: Door, body: bytes, loc: list[object]) -> None:
    r = await door.client.put("/api/system/gpu-config", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc
    assert door.saves == []


@pytest.mark.parametrize(
    "body", [b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', b'{"model": "m", "n": NaN}']
)
async def test_v1_bodies_no_engine_could_take_are_400_naming_the_field(door: Door, body: bytes) -> None:
    r = await door.client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] in ("messages.0.content", "n")
    assert door.asked == []


async def test_the_console_login_link_sets_a_strict_session_and_drops_the_token(door: Door) -> None:
    async with door.anonymous() as browser:
        page = await browser.get("/")
        assert page.status_code == 200 and 'id="login"' in page.text
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        bad = await browser.get("/", params={"token": "wrong"})
        assert bad.status_code == 401 and "session" not in bad.headers.get("set-cookie", "")
        r = await browser.get("/", params={"token": ADMIN_TOKEN})
        assert r.status_code == 303 and r.headers["Location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "gpuplane_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert "secure" not in cookie  # plain HTTP here; Secure over TLS
        signed_in = await browser.get("/")
        assert '<main id="view"' in signed_in.text and '<span id="who" class="who">admin</span>' in signed_in.text
        assert (await browser.get("/api/system/gpu-config/status")).status_code != 401
        # The cookie works for the API from the console's own page, never from another site's.
        r = await browser.put("/api/system/gpu-config", json=PUT, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = await browser.put("/api/system/gpu-config", json=PUT, headers={"Origin": "http://gw"})
        assert r.status_code == 200
        await browser.post("/logout")
        browser.cookies.clear()
        assert (await browser.put("/api/system/gpu-config", json=PUT)).status_code == 401


async def test_the_login_form(door: Door) -> None:
    async with door.anonymous() as browser:
        assert (await browser.post("/login", json={"token": "wrong"})).status_code == 401
        r = await browser.post("/login", json={"token": ADMIN_TOKEN})
        assert r.status_code == 204 and "gpuplane_session=" in r.headers["set-cookie"]
        assert (await browser.get("/api/system/gpu-config/status")).status_code != 401


async def test_auth_off_lets_everyone_in_and_only_on_loopback(memory_bus: MemoryBus) -> None:
    async with running_gateway(memory_bus, gateway_settings(auth="off", api_token=None)) as (app, _):
        async with client_for(app, token=None) as anonymous:
            assert (await anonymous.get("/api/system/audit")).status_code != 401
            # The browser checks stay on.
            r = await anonymous.put("/api/system/gpu-config", json=PUT, headers={"Origin": "http://evil.example"})
            assert r.status_code == 403
    with pytest.raises(ValueError, match="only while every listener is on loopback"):
        gateway_settings(auth="off", http_host="0.0.0.0")


async def test_every_refusal_is_counted_by_reason(door: Door) -> None:
    before = REGISTRY.get_sample_value("gpuplane_http_refused_total", {"reason": "host"}) or 0
    await door.client.get("/healthz", headers={"Host": "attacker.example"})
    assert REGISTRY.get_sample_value("gpuplane_http_refused_total", {"reason": "host"}) == before + 1
