"""Agents of placed services: one openai-backend worker per service that serves an OpenAI-compatible API.

``gpuplane worker --agents`` (started by ``gpuplane up`` when a compose project is set) follows the
orchestrator's ``ServiceEndpoints``: it asks for them at start and every ``agents_refresh_s``, and hears
them after every run. Each endpoint gets an agent named ``<service>-cuda<N>`` on the endpoint's GPU
that advertises the service's URL, so the data plane sends to it like to any engine; nobody starts a
worker by hand.

A move, as the orchestrator carries it out:

1. before recreating the service, it asks ``drain``: the agents of the service say ``draining`` (no
   new request is placed there) and the reply comes once the engine reports no request running or
   waiting (engines that report nothing: after ``agents_drain_grace_s``);
2. the container is recreated on its new GPU; requests that arrive meanwhile wait in the router,
   since the draining agent still names the model;
3. the run's endpoints name the new place: a new agent starts, and once it is ready the old one
   stops. A run that put the service back where it was makes the old agent ready again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from services.worker.backends.openai import OpenAIBackend
from services.worker.service import Worker, resolve_profile, worker_parts
from services.worker.settings import WorkerSettings
from shared.bus.base import Bus, Delivery
from shared.contracts import (
    EndpointDrain,
    EndpointDrained,
    EndpointsQuery,
    ServiceEndpoint,
    ServiceEndpoints,
    WorkerState,
)
from shared.errors import BusError
from shared.modelgroups import ModelCatalog, load_model_catalog
from shared.service import ServiceContext, StartFn
from shared.subjects import ENDPOINTS_CHANGED, ORCHESTRATOR_ENDPOINTS, agents_drain

log = logging.getLogger("gpuplane.worker.agents")

DRAIN_POLL_S = 0.1


def agent_id(endpoint: ServiceEndpoint) -> str:
    return f"{endpoint.service}-{endpoint.device.replace(':', '')}"


class _Tasks:
    """The part of a ``ServiceContext`` a ``Worker`` uses, for one agent: its loops end with it."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@dataclass
class Agent:
    endpoint: ServiceEndpoint
    worker: Worker
    tasks: _Tasks = field(default_factory=_Tasks)

    @property
    def backend(self) -> OpenAIBackend:
        assert isinstance(self.worker.backend, OpenAIBackend)
        return self.worker.backend


class AgentHost:
    """Keeps one agent per endpoint of this host; retires an old place once the new one is ready."""

    def __init__(
        self, bus: Bus, settings: WorkerSettings, catalog: ModelCatalog, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._catalog = catalog
        self._clock = clock
        self.agents: dict[str, Agent] = {}
        self._lock = asyncio.Lock()
        self._held: dict[str, float] = {}
        """Drained services -> until when a periodic refresh leaves their agents alone (the run's announcement
        settles them): mid-run, the old container still runs at its place, then is gone for a while."""

    async def open(self, ctx: ServiceContext) -> None:
        host = self._settings.host_name
        await self._bus.subscribe(ENDPOINTS_CHANGED, ServiceEndpoints, self.on_endpoints)
        await self._bus.subscribe(agents_drain(host), EndpointDrain, self.on_drain)
        ctx.spawn(self._refresh_forever(), name="agents-refresh")
        ctx.on_stop(self.close)

    async def on_endpoints(self, endpoints: ServiceEndpoints, _: Delivery | None = None) -> None:
        if endpoints.host == self._settings.host_name:
            await self.follow(endpoints)

    async def on_refresh(self, endpoints: ServiceEndpoints) -> None:
        if endpoints.host == self._settings.host_name:
            await self.follow(endpoints, refreshed=True)

    async def _refresh_forever(self) -> None:
        while True:
            try:
                endpoints = await self._bus.request(
                    ORCHESTRATOR_ENDPOINTS, EndpointsQuery(), ServiceEndpoints, timeout_s=10.0
                )
                await self.on_refresh(endpoints)
            except BusError as exc:
                log.debug("endpoints not known yet: %s", exc)
            await asyncio.sleep(self._settings.agents_refresh_s)

    async def follow(self, endpoints: ServiceEndpoints, *, refreshed: bool = False) -> None:
        """Start agents for new endpoints; retire those whose service runs elsewhere once that one is ready.

        ``refreshed``: asked for by the periodic refresh rather than announced after a run, which may be
        in progress: a drained service's agents are then left as they are (neither taking requests again
        while its old container still runs, nor retired while it is being recreated) until the run's
        announcement, or a new container at the same place, or the hold's end.
        """
        async with self._lock:
            now = self._clock()
            if not refreshed:
                self._held.clear()
            held = {service for service, until in self._held.items() if until > now}
            wanted = {agent_id(e): e for e in endpoints.endpoints}
            for name, endpoint in wanted.items():
                agent = self.agents.get(name)
                if agent is not None and agent.endpoint.url != endpoint.url:
                    await self._retire(name)
                    agent = None
                if agent is None:
                    self.agents[name] = await self._start(name, endpoint)
                elif agent.worker.state is WorkerState.DRAINING:
                    if endpoint.service in held and endpoint.container == agent.endpoint.container:
                        continue  # the container about to be recreated
                    # Put back where it was (a rollback, or a recreate in place): take requests again.
                    agent.endpoint = endpoint
                    agent.worker.resume()
            for name in [n for n in self.agents if n not in wanted]:
                service = self.agents[name].endpoint.service
                if service in held:
                    continue  # recreated right now: its container may be gone for a moment
                successors = [self.agents[n] for n in wanted if self.agents[n].endpoint.service == service]
                if successors:
                    await self._wait_ready(successors)
                await self._retire(name)

    async def _start(self, name: str, endpoint: ServiceEndpoint) -> Agent:
        settings = self._settings
        profile = await resolve_profile(self._bus, settings, endpoint.device)
        identity, config = worker_parts(
            settings, name, endpoint.device, OpenAIBackend.NAME, profile, self._catalog, upstream_url=endpoint.url
        )
        worker = Worker(self._bus, settings, identity, config, clock=self._clock)
        agent = Agent(endpoint, worker)
        await worker.open(agent.tasks)
        log.info("agent %s: %s (%s) on %s at %s", name, endpoint.service, endpoint.kind, endpoint.device, endpoint.url)
        return agent

    async def _wait_ready(self, agents: list[Agent]) -> None:
        """Until one of ``agents`` is ready with its models listed (at most ``agents_ready_timeout_s``)."""
        deadline = self._clock() + self._settings.agents_ready_timeout_s
        while self._clock() < deadline:
            if any(a.worker.state is WorkerState.READY and a.backend.models for a in agents):
                return
            await asyncio.sleep(DRAIN_POLL_S)
        log.warning("the new place of %s is not ready yet; the old agent stops anyway", agents[0].endpoint.service)

    async def _retire(self, name: str) -> None:
        agent = self.agents.pop(name)
        log.info("agent %s retired (%s left %s)", name, agent.endpoint.service, agent.endpoint.device)
        await agent.worker.stop()
        await agent.tasks.cancel()

    async def on_drain(self, request: EndpointDrain, _: Delivery | None = None) -> EndpointDrained:
        """Stop placing on the service's agents; answer once their engines have no request left."""
        mine = [a for a in self.agents.values() if a.endpoint.service == request.service]
        if mine:
            self._held[request.service] = self._clock() + request.timeout_s + self._settings.agents_ready_timeout_s
        for agent in mine:
            agent.worker.drain()
        idle = await self._engines_idle(mine, request.timeout_s) if mine else True
        return EndpointDrained(service=request.service, agents=len(mine), idle=idle)

    async def _engines_idle(self, agents: list[Agent], timeout_s: float) -> bool:
        # Routers hear "draining" within a status interval; a request placed just before still reaches the engine.
        await asyncio.sleep(self._settings.agents_drain_grace_s)
        deadline = self._clock() + timeout_s
        while True:
            signals = [await a.backend.probe_engine() for a in agents]
            busy = [s for s in signals if s is not None and ((s.requests_running or 0) + (s.requests_waiting or 0)) > 0]
            if not busy:
                return True
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_S)

    async def close(self) -> None:
        for name in list(self.agents):
            await self._retire(name)


def start_agents(settings: WorkerSettings, *, clock: Callable[[], float] = time.monotonic) -> StartFn:
    """The agent host's part of the service shell."""

    async def start(bus: Bus, ctx: ServiceContext) -> None:
        host = AgentHost(bus, settings, load_model_catalog(settings.model_groups_file), clock=clock)
        ctx.add_health(lambda: {"agents": ",".join(sorted(host.agents)) or "-"})
        await host.open(ctx)

    return start
