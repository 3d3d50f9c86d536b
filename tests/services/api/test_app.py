"""The gateway over an in-memory bus: shapes, errors and the read model behind GETs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.api.deps import GatewayState
from shared.bus.base import Delivery
from shared.bus.memory import MemoryBus
from shared.contracts import (
    HealthReply,
    HealthRequest,
    Heartbeat,
    Inventory,
    InventorySource,
    RescanRequest,
    ServiceName,
    utc_now,
)
from shared.subjects import DETECTOR_RESCAN, health, heartbeat, inventory
from tests.builders import make_gpu
from tests.services.api.gateway import running_gateway


@dataclass
class Gateway:
    client: httpx.AsyncClient
    bus: MemoryBus
    state: GatewayState


def reference_inventory(host: str = "box", *, sequence: int = 1) -> Inventory:
    return Inventory(
        host=host,
        source=InventorySource.SIMULATED,
        sequence=sequence,
        gpus=(
            make_gpu(0, name="NVIDIA RTX A5500", vram_total_mb=24564, vram_used_mb=1024),
            make_gpu(1, name="NVIDIA RTX A400", vram_total_mb=4094, vram_used_mb=300),
        ),
    )


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    bus = MemoryBus("api-test")
    async with running_gateway(bus) as (app, client):
        yield Gateway(client, bus, app.state.gateway)


async def test_gpus_before_first_inventory_is_503_with_reason(gateway: Gateway) -> None:
    r = await gateway.client.get("/api/system/gpus")
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    assert "no GPU inventory received yet" in r.json()["detail"]


async def test_gpus_lists_reference_pair_with_source(gateway: Gateway) -> None:
    await gateway.bus.publish(inventory("box"), reference_inventory())
    await gateway.bus.settle()
    r = await gateway.client.get("/api/system/gpus")
    assert r.status_code == 200
    body = r.json()
    assert body["source"] == "simulated"
    assert "SIMULATED" in body["message"]
    assert [(g["index"], g["name"], g["vram_total_mb"]) for g in body["gpus"]] == [
        (0, "NVIDIA RTX A5500", 24564),
        (1, "NVIDIA RTX A400", 4094),
    ]
    first = body["gpus"][0]
    for field in ("vram_used_mb", "compute_capability", "uuid", "pci_bus_id", "healthy", "host", "nvlink_peers"):
        assert field in first
    assert body["hosts"][0]["gpu_count"] == 2


async def test_inventory_loaded_from_stream_at_start() -> None:
    bus = MemoryBus("api-test")
    await bus.publish(inventory("early"), reference_inventory("early"))

    async def factory(*_: object) -> MemoryBus:
        return bus

    async with running_gateway(bus) as (_, c):
        r = await c.get("/api/system/gpus")
    assert r.status_code == 200
    assert r.json()["hosts"][0]["host"] == "early"


async def test_detect_asks_the_detector_and_returns_its_inventory(gateway: Gateway) -> None:
    async def fake_detector(_: RescanRequest, __: Delivery) -> Inventory:
        return reference_inventory(sequence=7)

    await gateway.bus.subscribe(DETECTOR_RESCAN, RescanRequest, fake_detector)
    r = await gateway.client.post("/api/system/gpu-config/detect")
    assert r.status_code == 200
    assert r.json()["hosts"][0]["sequence"] == 7


async def test_detect_without_detector_is_503_retry_after(gateway: Gateway) -> None:
    r = await gateway.client.post("/api/system/gpu-config/detect")
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    assert "gpuplane.detector.rescan" in r.json()["detail"]


async def test_no_gpus_is_an_answer_not_an_error(gateway: Gateway) -> None:
    none = Inventory(host="cpu-box", source=InventorySource.NONE, problems=("NVML: NVML Shared Library Not Found",))
    await gateway.bus.publish(inventory("cpu-box"), none)
    await gateway.bus.settle()
    r = await gateway.client.get("/api/system/gpus")
    assert r.status_code == 200
    assert r.json()["gpus"] == []
    assert "No GPUs detected" in r.json()["message"]
    assert "NVML Shared Library Not Found" in r.json()["message"]


async def test_healthz_reports_each_dependency_and_service(gateway: Gateway) -> None:
    r = await gateway.client.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["nats"]["ok"] is True
    assert body["database"]["ok"] is None
    assert body["inventory"]["ok"] is False
    assert set(body["services"]) == {s.value for s in ServiceName}

    await gateway.bus.publish(inventory("box"), reference_inventory())
    for service in ServiceName:
        await gateway.bus.publish(
            heartbeat(service),
            Heartbeat(service=service, instance=f"{service.value}-1", host="box", pid=1,
                      started_at=utc_now(), version="t"),
        )
    await gateway.bus.settle()
    r = await gateway.client.get("/healthz")
    # Heartbeats alone are not enough: every service must also answer a health request now.
    assert r.status_code == 503 and r.json()["services"]["router"]["ok"] is False

    subscriptions = {}
    for service in ServiceName:

        async def answer(_: HealthRequest, __: Delivery, service: ServiceName = service) -> HealthReply:
            return HealthReply(service=service, instance="1", host="box", ok=True, started_at=utc_now(), version="t")

        subscriptions[service] = await gateway.bus.subscribe(health(service), HealthRequest, answer)
    r = await gateway.client.get("/healthz")
    assert r.status_code == 200, r.json()
    assert r.json()["status"] == "ok"
    assert r.json()["services"]["detector"]["instances"] == 1

    # A router that dies leaves its last heartbeat fresh for seconds, but no longer answers: down at once.
    await subscriptions[ServiceName.ROUTER].unsubscribe()
    r = await gateway.client.get("/healthz")
    assert r.status_code == 503 and r.json()["services"]["router"]["ok"] is False


async def test_metrics_expose_gpu_gauges_in_bytes(gateway: Gateway) -> None:
    await gateway.bus.publish(inventory("box"), reference_inventory())
    await gateway.bus.settle()
    await gateway.client.get("/api/system/gpus")
    text = (await gateway.client.get("/metrics")).text
    samples = {
        (s.name, s.labels.get("host"), s.labels.get("gpu")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("gpuplane_gpu_memory_total_bytes", "box", "0")] == 24564 * 1024 * 1024
    assert samples[("gpuplane_gpu_memory_used_bytes", "box", "1")] == 300 * 1024 * 1024
    assert samples[("gpuplane_gpu_power_limit_watts", "box", "0")] == 230
    assert any(name == "gpuplane_http_requests_total" for name, _, _ in samples)


async def test_correlation_id_is_echoed(gateway: Gateway) -> None:
    r = await gateway.client.get("/healthz", headers={"X-Correlation-Id": "abc"})
    assert r.headers["X-Correlation-Id"] == "abc"


async def test_openapi_lists_the_routes(gateway: Gateway) -> None:
    paths = (await gateway.client.get("/openapi.json")).json()["paths"]
    assert {"/api/system/gpus", "/api/system/gpu-config/detect", "/healthz"} <= set(paths)
