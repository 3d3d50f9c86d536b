"""/api/gpu_stats, /api/models and /api/queue: the pure transforms of a RouterState, and each over HTTP from
the gateway's own data plane, fed worker reports on the in-memory bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from services.api.routes.router_state import gpu_stats, model_groups, queue
from services.router.dispatcher import Dispatcher
from shared.bus.memory import MemoryBus
from shared.contracts import (
    DeviceStats,
    GroupInfo,
    InferenceKind,
    ModelInfo,
    RouterState,
    WorkerState,
    WorkerStatus,
    WorkerView,
)
from shared.subjects import worker_status
from tests.builders import make_worker_status
from tests.services.api.gateway import running_gateway

# --------------------------------------------------------------------------- builders


def device(
    index: int | None,
    host: str = "box",
    *,
    utilization: float = 45.0,
    memory_used: float = 12.5,
    memory_total: float = 24.0,
    memory_percent: float = 52.08,
    peak_utilization: float = 95.0,
) -> DeviceStats:
    """A GPU's figures (``index`` None: the host's CPU)."""
    return DeviceStats(
        host=host,
        device="cpu" if index is None else f"cuda:{index}",
        utilization=utilization,
        memory_used=memory_used,
        memory_total=memory_total,
        memory_percent=memory_percent,
        peak_utilization=peak_utilization,
    )


def worker(
    worker_id: str,
    index: int | None,
    host: str = "box",
    *,
    loaded: tuple[str, ...] = (),
    current: str | None = None,
    alive: bool = True,
    in_flight: int = 0,
    circuit: Literal["closed", "open", "half_open"] = "closed",
    why_not: str | None = None,
) -> WorkerView:
    """A worker on ``cuda:index`` of ``host`` (``index`` None: on the CPU)."""
    return WorkerView(
        status=WorkerStatus(
            worker_id=worker_id,
            host=host,
            device="cpu" if index is None else f"cuda:{index}",
            gpu_index=index,
            backend="simulated",
            state=WorkerState.READY,
            slots=2,
            in_flight=in_flight,
            queue_depth=3,
            groups_loaded=loaded,
            current_group=current,
            latency_avg_s=0.25,
            error_count=1,
            request_count=10,
        ),
        alive=alive,
        gpu_healthy=True,
        circuit=circuit,
        eligible=why_not is None,
        why_not=why_not,
    )


GROUPS = (
    GroupInfo(
        group_id="chat-small",
        models=(ModelInfo(id="qwen-0.5b", kind=InferenceKind.CHAT, small=True),),
        vram_gb=2.0,
        load_time_s=3.5,
    ),
    GroupInfo(
        group_id="embed",
        models=(
            ModelInfo(id="bge-m3", kind=InferenceKind.EMBEDDING),
            ModelInfo(id="e5-large", kind=InferenceKind.EMBEDDING),
        ),
        vram_gb=1.5,
        load_time_s=1.0,
    ),
)


def router_state(
    workers: tuple[WorkerView, ...] = (),
    devices: tuple[DeviceStats, ...] = (),
    groups: tuple[GroupInfo, ...] = GROUPS,
    queued: dict[str, int] | None = None,
) -> RouterState:
    return RouterState(
        router="router-1",
        policy="affinity",
        workers=workers,
        devices=devices,
        groups=groups,
        queued={"high": 1, "normal": 4} if queued is None else queued,
        queue_limit=256,
        in_flight=2,
    )


# --------------------------------------------------------------------------- /api/gpu_stats


def test_gpu_stats_keys_gpus_by_label_and_repeats_the_first_one_at_the_top() -> None:
    state = router_state(
        devices=(
            device(1, utilization=10.04, memory_used=3.26, memory_total=4.0, memory_percent=81.55, peak_utilization=20),
            device(None),
            device(0),
        )
    )

    out = gpu_stats(state).model_dump()

    first = {"utilization": 45.0, "memory_used": 12.5, "memory_total": 24.0, "memory_percent": 52.1}
    assert out == {
        "available": True,
        "devices": {
            "cuda:0": {**first, "peak_utilization": 95.0},
            "cuda:1": {
                "utilization": 10.0,
                "memory_used": 3.3,
                "memory_total": 4.0,
                "memory_percent": 81.5,
                "peak_utilization": 20.0,
            },
        },
        **first,
        "peak_utilization": 95.0,
    }
    assert list(out["devices"]) == ["cuda:0", "cuda:1"]  # the CPU is not a GPU


def test_gpu_stats_names_the_host_when_devices_span_hosts() -> None:
    state = router_state(devices=(device(0, "b"), device(0, "a"), device(1, "a")))

    assert list(gpu_stats(state).devices) == ["a/cuda:0", "a/cuda:1", "b/cuda:0"]


@pytest.mark.parametrize("devices", [(), (device(None),)], ids=["nothing", "cpu only"])
def test_gpu_stats_without_gpus_is_unavailable_with_null_figures(devices: tuple[DeviceStats, ...]) -> None:
    out = gpu_stats(router_state(devices=devices)).model_dump()

    assert out == {
        "available": False,
        "devices": {},
        "utilization": None,
        "memory_used": None,
        "memory_total": None,
        "memory_percent": None,
        "peak_utilization": None,
    }


# --------------------------------------------------------------------------- /api/models


def test_models_say_per_worker_device_where_each_group_is_loaded_and_current() -> None:
    state = router_state(
        workers=(
            worker("w-cpu", None, loaded=("embed",), current="embed"),
            worker("w1", 1, loaded=("chat-small", "embed"), current="embed"),
            worker("w0", 0, loaded=("chat-small",), current="chat-small"),
            worker("w2", 2, loaded=("chat-small",), current="chat-small", alive=False),
        )
    )

    out = model_groups(state).model_dump()

    assert out == {
        "model_groups": [
            {
                "group_id": "chat-small",
                "vram_gb": 2.0,
                "load_time_s": 3.5,
                "device_info": [
                    {"device": "cuda:0", "has_group": True, "is_current": True},
                    {"device": "cuda:1", "has_group": True, "is_current": False},
                    {"device": "cuda:2", "has_group": False, "is_current": False},  # its worker is dead
                    {"device": "cpu", "has_group": False, "is_current": False},
                ],
                "models": [
                    {"id": "qwen-0.5b", "kind": "chat", "small": True, "loaded_on_devices": ["cuda:0", "cuda:1"]}
                ],
            },
            {
                "group_id": "embed",
                "vram_gb": 1.5,
                "load_time_s": 1.0,
                "device_info": [
                    {"device": "cuda:0", "has_group": False, "is_current": False},
                    {"device": "cuda:1", "has_group": True, "is_current": True},
                    {"device": "cuda:2", "has_group": False, "is_current": False},
                    {"device": "cpu", "has_group": True, "is_current": True},
                ],
                "models": [
                    {"id": "bge-m3", "kind": "embedding", "small": False, "loaded_on_devices": ["cuda:1", "cpu"]},
                    {"id": "e5-large", "kind": "embedding", "small": False, "loaded_on_devices": ["cuda:1", "cpu"]},
                ],
            },
        ]
    }


def test_models_name_the_host_when_workers_span_hosts() -> None:
    state = router_state(
        workers=(worker("b0", 0, "b", loaded=("embed",)), worker("a0", 0, "a"), worker("a-cpu", None, "a"))
    )

    embed = model_groups(state).model_groups[1]

    assert [d.device for d in embed.device_info] == ["a/cuda:0", "b/cuda:0", "a/cpu"]
    assert embed.models[0].loaded_on_devices == ["b/cuda:0"]


# --------------------------------------------------------------------------- /api/queue


def test_queue_names_every_priority_and_each_workers_load() -> None:
    state = router_state(
        workers=(
            worker("w1", 1, in_flight=2, loaded=("embed",), current="embed", circuit="open", why_not="circuit open"),
            worker("w0", 0),
        )
    )

    out = queue(state).model_dump()

    assert out["router"] == {
        "router": "router-1",
        "policy": "affinity",
        "queued": {"high": 1, "normal": 4, "low": 0},
        "queue_limit": 256,
        "in_flight": 2,
    }
    assert [w["worker_id"] for w in out["workers"]] == ["w0", "w1"]
    assert out["workers"][1] == {
        "worker_id": "w1",
        "host": "box",
        "device": "cuda:1",
        "backend": "simulated",
        "engine": None,
        "state": "ready",
        "slots": 2,
        "in_flight": 2,
        "queue_size": 3,
        "busy": True,
        "groups_loaded": ["embed"],
        "current_group": "embed",
        "latency_avg_s": 0.25,
        "error_count": 1,
        "request_count": 10,
        "alive": True,
        "gpu_healthy": True,
        "circuit": "open",
        "eligible": False,
        "why_not": "circuit open",
    }
    assert out["workers"][0]["busy"] is False


# --------------------------------------------------------------------------- over HTTP


@dataclass
class Gateway:
    client: httpx.AsyncClient
    bus: MemoryBus
    app: FastAPI

    @property
    def plane(self) -> Dispatcher:
        plane = self.app.state.gateway.dataplane
        assert plane is not None
        return plane

    async def report(self, *statuses: WorkerStatus) -> None:
        """Workers say how they are, as they do over NATS; the gateway's data plane hears it."""
        for status in statuses:
            await self.bus.publish(worker_status(status.host, status.worker_id), status)
        await self.bus.settle()


@pytest.fixture
async def gateway(memory_bus: MemoryBus) -> AsyncIterator[Gateway]:
    async with running_gateway(memory_bus) as (app, client):
        yield Gateway(client, memory_bus, app)


REPORTED = (
    make_worker_status("w0", device="cuda:0", host="box", groups=("ge",), models=("embed",), slots=2),
    make_worker_status("w1", device="cuda:1", host="box", models=("embed",), in_flight=1),
)


@pytest.mark.parametrize(
    ("path", "transform"),
    [("/api/gpu_stats", gpu_stats), ("/api/models", model_groups), ("/api/queue", queue)],
)
async def test_each_endpoint_answers_its_transform_of_the_data_plane_state(
    gateway: Gateway, path: str, transform: Callable[[RouterState], BaseModel]
) -> None:
    await gateway.report(*REPORTED)

    r = await gateway.client.get(path)

    assert r.status_code == 200
    assert r.json() == transform(gateway.plane.state()).model_dump(mode="json")


async def test_the_queue_shows_every_worker_that_reported(gateway: Gateway) -> None:
    await gateway.report(*REPORTED)

    body = (await gateway.client.get("/api/queue")).json()

    assert [(w["worker_id"], w["in_flight"]) for w in body["workers"]] == [("w0", 0), ("w1", 1)]


@pytest.mark.parametrize("path", ["/api/gpu_stats", "/api/models", "/api/queue"])
async def test_before_nats_answers_the_state_is_503(memory_bus: MemoryBus, path: str) -> None:
    async with running_gateway(memory_bus) as (app, client):
        app.state.gateway.dataplane = None  # as before the first connection
        r = await client.get(path)

    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    assert "not connected to NATS" in r.json()["detail"]
