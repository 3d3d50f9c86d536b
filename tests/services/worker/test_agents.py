"""The agents of placed services: one openai-backend worker per endpoint the orchestrator announces.

Engines here are small aiohttp servers on real sockets whose ``/metrics`` say how many requests they run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from services.worker.agents import AgentHost
from shared.bus.memory import MemoryBus
from shared.contracts import (
    EndpointDrain,
    EndpointDrained,
    ServiceEndpoint,
    ServiceEndpoints,
    ServiceName,
    WorkerState,
    WorkerStatus,
)
from shared.modelgroups import load_model_catalog
from shared.service import ServiceContext
from shared.subjects import ENDPOINTS_CHANGED, WORKER_STATUS_ALL, agents_drain, matches
from tests.services.worker.helpers import HOST, worker_settings


@dataclass
class Engine:
    """An OpenAI-compatible engine that lists one model and reports ``running`` requests in its metrics."""

    running: int = 0
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> Engine:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "smollm2-135m", "object": "model"}]})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(text=f"llamacpp:requests_processing {self.running}\nllamacpp:requests_deferred 0\n")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def endpoint(engine: Engine, device: str, service: str = "ai-chat") -> ServiceEndpoint:
    return ServiceEndpoint(
        service=service, host=HOST, device=device, url=engine.url, models=("smollm2-135m",), kind="llamacpp"
    )


@pytest.fixture
async def engines() -> AsyncIterator[list[Engine]]:
    running = [await Engine().start(), await Engine().start()]
    yield running
    for engine in running:
        await engine.stop()


@pytest.fixture
async def host(bus: MemoryBus, tmp_path: Path) -> AsyncIterator[AgentHost]:
    settings = worker_settings(
        tmp_path, agents=True, agents_refresh_s=60, agents_drain_grace_s=0.0, engine_probe_interval_s=0.05
    )
    ctx = ServiceContext(ServiceName.WORKER, settings)
    agents = AgentHost(bus, settings, load_model_catalog(settings.model_groups_file))
    await agents.open(ctx)
    yield agents
    await agents.close()
    for task in list(ctx._tasks):
        task.cancel()


def statuses(bus: MemoryBus, worker_id: str) -> list[WorkerStatus]:
    return [
        m
        for s, m in bus.published
        if matches(WORKER_STATUS_ALL, s) and isinstance(m, WorkerStatus) and m.worker_id == worker_id
    ]


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def last_state(bus: MemoryBus, worker_id: str) -> WorkerState | None:
    found = statuses(bus, worker_id)
    return found[-1].state if found else None


async def test_an_announced_endpoint_gets_an_agent_that_advertises_the_engine(
    bus: MemoryBus, host: AgentHost, engines: list[Engine]
) -> None:
    await bus.publish(ENDPOINTS_CHANGED, ServiceEndpoints(host=HOST, endpoints=(endpoint(engines[1], "cuda:1"),)))
    await until(lambda: last_state(bus, "ai-chat-cuda1") is WorkerState.READY)
    status = statuses(bus, "ai-chat-cuda1")[-1]
    assert (status.device, status.backend, status.engine_url, status.models) == (
        "cuda:1",
        "openai",
        engines[1].url,
        ("smollm2-135m",),
    )
    assert status.gpu_name == "NVIDIA RTX A400"  # the detector's GPU, as for any worker on cuda:1


async def test_endpoints_of_another_host_are_not_followed(
    bus: MemoryBus, host: AgentHost, engines: list[Engine]
) -> None:
    other = endpoint(engines[0], "cuda:0").model_copy(update={"host": "elsewhere"})
    await host.on_endpoints(ServiceEndpoints(host="elsewhere", endpoints=(other,)))
    assert host.agents == {}


async def test_drain_stops_new_requests_and_answers_once_the_engine_is_idle(
    bus: MemoryBus, host: AgentHost, engines: list[Engine]
) -> None:
    await host.follow(ServiceEndpoints(host=HOST, endpoints=(endpoint(engines[1], "cuda:1"),)))
    await until(lambda: last_state(bus, "ai-chat-cuda1") is WorkerState.READY)
    engines[1].running = 1
    asking = asyncio.create_task(
        bus.request(agents_drain(HOST), EndpointDrain(service="ai-chat", timeout_s=5), EndpointDrained, timeout_s=10)
    )
    await until(lambda: last_state(bus, "ai-chat-cuda1") is WorkerState.DRAINING)
    await asyncio.sleep(0.2)
    assert not asking.done()  # the engine still runs a request
    engines[1].running = 0
    reply = await asking
    assert (reply.agents, reply.idle) == (1, True)


async def test_drain_gives_up_after_its_timeout_and_says_so(
    bus: MemoryBus, host: AgentHost, engines: list[Engine]
) -> None:
    await host.follow(ServiceEndpoints(host=HOST, endpoints=(endpoint(engines[1], "cuda:1"),)))
    engines[1].running = 2
    reply = await host.on_drain(EndpointDrain(service="ai-chat", timeout_s=0.2))
    assert (reply.agents, reply.idle) == (1, False)


async def test_draining_a_service_without_agents_is_done_at_once(host: AgentHost) -> None:
    reply = await host.on_drain(EndpointDrain(service="nobody", timeout_s=5))
    assert (reply.agents, reply.idle) == (0, True)


async def test_a_move_starts_the_new_place_then_retires_the_old_one(
    bus: MemoryBus, host: AgentHost, engines: list[Engine]
) -> None:
    await host.follow(ServiceEndpoints(host=HOST, endpoints=(endpoint(engines[1], "cuda:1"),)))
    await host.on_drain(EndpointDrain(service="ai-chat", timeout_s=5))
    await host.follow(ServiceEndpoints(host=HOST, endpoints=(endpoint(engines[0], "cuda:0"),)))

    assert list(host.agents) == ["ai-chat-cuda0"]
    new_ready = next(
        i
        for i, (_, m) in enumerate(bus.published)
        if isinstance(m, WorkerStatus) and m.worker_id == "ai-chat-cuda0" and m.state is WorkerState.READY and m.models
    )
    old_stopped = next(
        i
        for i, (_, m) in enumerate(bus.published)
        if isinstance(m, WorkerStatus) and m.worker_id == "ai-chat-cuda1" and m.state is WorkerState.STOPPED
    )
    assert new_ready < old_stopped  # the model never goes unknown to the router: requests wait, none is refused


async def test_put_back_where_it_was_the_drained_agent_takes_requests_again(
    bus: MemoryBus, host: AgentHost, engines: list[Engine]
) -> None:
    place = ServiceEndpoints(host=HOST, endpoints=(endpoint(engines[1], "cuda:1"),))
    await host.follow(place)
    await host.on_drain(EndpointDrain(service="ai-chat", timeout_s=5))
    assert last_state(bus, "ai-chat-cuda1") is WorkerState.DRAINING
    await host.follow(place)  # a rollback, or a recreate on the same GPU
    await until(lambda: last_state(bus, "ai-chat-cuda1") is WorkerState.READY)


async def test_a_service_no_longer_announced_loses_its_agent(
    bus: MemoryBus, host: AgentHost, engines: list[Engine]
) -> None:
    await host.follow(ServiceEndpoints(host=HOST, endpoints=(endpoint(engines[1], "cuda:1"),)))
    await host.follow(ServiceEndpoints(host=HOST, endpoints=()))
    assert host.agents == {}
    assert last_state(bus, "ai-chat-cuda1") is WorkerState.STOPPED


def placed(engine: Engine, device: str, container: str) -> ServiceEndpoints:
    at = endpoint(engine, device).model_copy(update={"container": container})
    return ServiceEndpoints(host=HOST, endpoints=(at,))


async def test_a_refresh_during_a_move_neither_resumes_nor_retires_the_drained_agent(
    bus: MemoryBus, host: AgentHost, engines: list[Engine]
) -> None:
    await host.follow(placed(engines[1], "cuda:1", "aaaaaaaaaaaa"))
    await host.on_drain(EndpointDrain(service="ai-chat", timeout_s=5))
    await host.on_refresh(placed(engines[1], "cuda:1", "aaaaaaaaaaaa"))  # still runs: about to be recreated
    assert host.agents["ai-chat-cuda1"].worker.state is WorkerState.DRAINING
    await host.on_refresh(ServiceEndpoints(host=HOST, endpoints=()))  # gone for a moment while recreated
    assert host.agents["ai-chat-cuda1"].worker.state is WorkerState.DRAINING
    await host.on_endpoints(placed(engines[0], "cuda:0", "bbbbbbbbbbbb"))  # the run's announcement
    assert list(host.agents) == ["ai-chat-cuda0"]
    assert last_state(bus, "ai-chat-cuda1") is WorkerState.STOPPED


async def test_a_refresh_that_finds_a_new_container_at_the_same_place_resumes_the_agent(
    bus: MemoryBus, host: AgentHost, engines: list[Engine]
) -> None:
    await host.follow(placed(engines[1], "cuda:1", "aaaaaaaaaaaa"))
    await host.on_drain(EndpointDrain(service="ai-chat", timeout_s=5))
    await host.on_refresh(placed(engines[1], "cuda:1", "cccccccccccc"))  # recreated in place, healthy
    await until(lambda: last_state(bus, "ai-chat-cuda1") is WorkerState.READY)
