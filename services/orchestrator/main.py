"""Orchestrator service: apply, rollback and status requests over NATS; runs through a JetStream work queue.

A request records a run in PostgreSQL and queues it; the work-queue consumer carries it out and
acknowledges it only at the end, so a run whose orchestrator dies is delivered again. At
start-up a run left active is finished or rolled back first, then the containers are brought
to the saved configuration if they drifted from it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine

from services.orchestrator.core.endpoints import api_specs
from services.orchestrator.core.inspect import project_name
from services.orchestrator.engine import ComposeEngine, container_cmd_for, load_compose_documents
from services.orchestrator.ports import EngineUnavailable, StoreUnavailable
from services.orchestrator.service import Options, Orchestrator
from services.orchestrator.settings import OrchestratorSettings
from shared.bus.base import Bus, Delivery
from shared.contracts import (
    ApplyRequest,
    ApplyRun,
    ApplyWork,
    ConfigGetRequest,
    ConfigReply,
    ConfigRestoreRequest,
    ConfigSaved,
    EndpointDrain,
    EndpointDrained,
    EndpointsQuery,
    GpuConfig,
    OrchestratorStatus,
    RollbackRequest,
    RunAccepted,
    RunKind,
    RunProgress,
    ServiceApi,
    ServiceEndpoints,
    ServiceName,
    StatusRequest,
    utc_now,
)
from shared.database import make_engine, until_available
from shared.errors import BusError, ConfigError, GpuplaneError, NoResponders, RemoteError, RequestTimeout
from shared.service import ServiceContext, StartFn, run
from shared.subjects import (
    ENDPOINTS_CHANGED,
    ORCHESTRATOR_APPLY,
    ORCHESTRATOR_ENDPOINTS,
    ORCHESTRATOR_PROGRESS,
    ORCHESTRATOR_ROLLBACK,
    ORCHESTRATOR_STATUS,
    ORCHESTRATOR_WORK,
    ORCHESTRATOR_WORK_CONSUMER,
    PLANNER_CONFIG_GET,
    PLANNER_CONFIG_RESTORE,
    agents_drain,
    queue_group,
)

log = logging.getLogger("gpuplane.orchestrator")


class PlannerConfig:
    """The planner's saved configuration, asked over the bus."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def saved(self) -> GpuConfig | None:
        reply = await self._bus.request(PLANNER_CONFIG_GET, ConfigGetRequest(), ConfigReply)
        return reply.config if reply.config.saved else None

    async def restore(self, revision: int) -> GpuConfig:
        reply = await self._bus.request(PLANNER_CONFIG_RESTORE, ConfigRestoreRequest(revision=revision), ConfigSaved)
        return reply.config


class BusRunEvents:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def progress(self, run: ApplyRun, service: str | None) -> None:
        try:
            progress = next((s for s in run.services if s.service == service), None)
            state = progress.state.value if progress is not None else run.state.value
            await self._bus.publish(ORCHESTRATOR_PROGRESS, RunProgress(run=run, service=service, state=state))
        except BusError as exc:
            # The run is recorded in PostgreSQL either way; the event is a convenience for watchers.
            log.warning("progress of run %s not published: %s", run.id, exc)


class BusAgents:
    """The agents of this host's placed services, over NATS (a worker process hosts them)."""

    def __init__(self, bus: Bus, host: str, drain_timeout_s: float) -> None:
        self._bus = bus
        self._host = host
        self._drain_timeout_s = drain_timeout_s

    async def drain(self, service: str) -> str | None:
        try:
            reply = await self._bus.request(
                agents_drain(self._host),
                EndpointDrain(service=service, timeout_s=self._drain_timeout_s),
                EndpointDrained,
                timeout_s=self._drain_timeout_s + 5.0,
            )
        except BusError as exc:
            return f"requests were not drained first (no agent answered: {exc})"
        if not reply.idle:
            return f"its engine still had requests after {self._drain_timeout_s:g} s of draining"
        log.info("%s drained (%d agent(s))", service, reply.agents)
        return None

    async def announce(self, endpoints: ServiceEndpoints) -> None:
        try:
            await self._bus.publish(ENDPOINTS_CHANGED, endpoints)
        except BusError as exc:
            log.warning("endpoints not announced: %s", exc)


def api_specs_of(settings: OrchestratorSettings) -> dict[str, ServiceApi]:
    """The services of the compose files that serve an OpenAI-compatible API (none when the files cannot be read)."""
    files = settings.compose_paths()
    if not files:
        return {}
    try:
        return api_specs(load_compose_documents(files))
    except ConfigError as exc:
        log.warning("no service API is routed: %s", exc)
        return {}


def make_engine_for(settings: OrchestratorSettings) -> ComposeEngine:
    compose = settings.compose_argv()
    container = tuple(shlex.split(settings.container_cmd)) if settings.container_cmd else container_cmd_for(compose)
    files = settings.compose_paths()
    project, problem = _project(settings, files)
    return ComposeEngine(
        compose_cmd=compose,
        compose_files=files,
        override_file=settings.override_path,
        project=project,
        container_cmd=container,
        cdi_dirs=settings.cdi_dirs(),
        command_timeout_s=settings.command_timeout_s,
        project_problem=problem,
    )


def _project(settings: OrchestratorSettings, files: tuple[Path, ...]) -> tuple[str, str | None]:
    """The compose project name, and why it cannot be used (None: it can).

    An unusable name does not stop the service: apply is refused with the reason, which the status shows.
    """
    try:
        return settings.compose_project_name() or _project_name(files), None
    except ConfigError as exc:
        log.warning("no apply is possible: %s", exc)
        return settings.compose_project or "unset", str(exc)


def _project_name(files: tuple[Path, ...]) -> str:
    """As the compose command would name the project; "unset" without compose files (apply then says why).

    Raises ``ConfigError`` when no usable name is left once normalized.
    """
    if not files:
        return "unset"
    try:
        documents = load_compose_documents(files)
    except ConfigError as exc:
        # Named in the status's problems too; the folder's name is the best guess until the files are fixed.
        log.warning("%s", exc)
        documents = []
    return project_name(files, dict(os.environ), documents)


def make_orchestrator(settings: OrchestratorSettings, bus: Bus) -> Orchestrator:
    options = Options(
        override_path=settings.override_path,
        device_ids=settings.device_ids,
        auto_rollback=settings.rollback == "auto",
        health_grace_s=settings.health_grace_s,
        health_timeout_s=settings.health_timeout_s,
        health_poll_s=settings.health_poll_s,
        host=settings.host_name,
        apis=api_specs_of(settings),
    )
    return Orchestrator(
        make_engine_for(settings),
        PlannerConfig(bus),
        BusRunEvents(bus),
        options,
        clock=utc_now,
        new_id=lambda: uuid.uuid4().hex[:12],
        agents=BusAgents(bus, settings.host_name, settings.agents_drain_timeout_s),
    )


async def _open_store(orchestrator: Orchestrator, settings: OrchestratorSettings, engine: Engine) -> None:
    from services.orchestrator.store import RunStore

    store = RunStore(engine)

    def problem(reason: str | None) -> None:
        orchestrator.store_problem = reason

    await until_available(store.migrate, what="run store", retry_s=settings.database_retry_s, on_problem=problem)
    orchestrator.store = store
    log.info("run store ready")


async def _recover(orchestrator: Orchestrator, settings: OrchestratorSettings) -> str | None:
    """Settle the run a previous orchestrator left active, once the run store answers."""
    while True:
        try:
            return await orchestrator.recover()
        except StoreUnavailable as exc:
            log.warning(
                "the run left by a previous orchestrator waits for the run store (%s; %s); retrying in %.1f s",
                exc,
                exc.detail,
                settings.database_retry_s,
            )
        await asyncio.sleep(settings.database_retry_s)


async def _converge(orchestrator: Orchestrator, queue: _Queue, settings: OrchestratorSettings) -> None:
    """Start-up: bring the containers to the saved configuration, once the planner answers."""
    problems = await orchestrator.problems(fresh=True)
    if problems:
        log.info("not converging at start-up: %s", "; ".join(problems))
        return
    for _ in range(60):
        try:
            reason = await orchestrator.needs_converging()
            break
        except (NoResponders, RequestTimeout) as exc:
            log.debug("planner not answering yet: %s", exc)
        except RemoteError as exc:
            if exc.code != "unavailable":
                raise
        except (EngineUnavailable, ConfigError) as exc:
            # Start-up convergence is a courtesy: a podman that hangs must not crash the service.
            log.warning("not converging at start-up: %s", exc)
            return
        await asyncio.sleep(settings.database_retry_s)
    else:
        log.warning("not converging at start-up: the planner did not answer")
        return
    if reason is None:
        log.info("nothing to converge at start-up: no configuration saved yet, or the containers already run it")
        return
    log.info("containers differ from the saved configuration: %s; converging", reason)
    try:
        await queue(await orchestrator.request_apply(kind=RunKind.CONVERGE, trigger="startup"))
    except GpuplaneError as exc:
        log.warning("start-up convergence not started: %s", exc)


class _Queue:
    """Puts a recorded run on the work queue; a run that cannot be queued is marked failed."""

    def __init__(self, bus: Bus, orchestrator: Orchestrator) -> None:
        self._bus = bus
        self._orchestrator = orchestrator

    async def __call__(self, run_: ApplyRun) -> ApplyRun:
        try:
            await self._bus.publish(ORCHESTRATOR_WORK, ApplyWork(run_id=run_.id))
        except BusError as exc:
            await self._orchestrator.abandon(run_.id, f"could not be queued: {exc}")
            raise
        return run_


def make_start(
    settings: OrchestratorSettings,
    build: Callable[[OrchestratorSettings, Bus], Orchestrator] = make_orchestrator,
) -> StartFn:
    """``build`` makes the controller (tests give it fakes of the engine and the run store)."""

    async def start(bus: Bus, ctx: ServiceContext) -> None:
        orchestrator = build(settings, bus)
        queue = _Queue(bus, orchestrator)

        async def on_apply(_: ApplyRequest, __: Delivery) -> RunAccepted:
            return RunAccepted(run=await queue(await orchestrator.request_apply()))

        async def on_rollback(_: RollbackRequest, __: Delivery) -> RunAccepted:
            return RunAccepted(run=await queue(await orchestrator.request_rollback()))

        async def on_status(_: StatusRequest, __: Delivery) -> OrchestratorStatus:
            return await orchestrator.status()

        async def on_endpoints(_: EndpointsQuery, __: Delivery) -> ServiceEndpoints:
            return await orchestrator.endpoints()

        async def on_work(work: ApplyWork, _: Delivery) -> None:
            # Returns once the run has ended, whatever went wrong in it, so the item is acknowledged once.
            # A run store that does not answer is waited out here rather than nak'd: JetStream gives up on
            # an item after max_deliver naks, which would leave the run active (every apply a 409).
            interrupted_by = "the orchestrator restarted"
            while True:
                try:
                    await orchestrator.execute(work.run_id, interrupted_by=interrupted_by)
                    return
                except StoreUnavailable as exc:
                    log.warning(
                        "run %s waits for the run store (%s; %s); retrying in %.1f s",
                        work.run_id,
                        exc,
                        exc.detail,
                        settings.database_retry_s,
                    )
                interrupted_by = "the run store stopped answering"
                await asyncio.sleep(settings.database_retry_s)

        group = queue_group(ServiceName.ORCHESTRATOR)
        await bus.subscribe(ORCHESTRATOR_APPLY, ApplyRequest, on_apply, queue=group)
        await bus.subscribe(ORCHESTRATOR_ROLLBACK, RollbackRequest, on_rollback, queue=group)
        await bus.subscribe(ORCHESTRATOR_STATUS, StatusRequest, on_status, queue=group)
        await bus.subscribe(ORCHESTRATOR_ENDPOINTS, EndpointsQuery, on_endpoints, queue=group)

        async def background() -> None:
            if orchestrator.store is None:
                if not settings.database_url:
                    log.warning("GPUPLANE_DATABASE_URL is not set: no runs can be recorded, so no apply")
                    return
                engine = make_engine(settings.database_url, pool_size=2)

                async def dispose() -> None:
                    engine.dispose()

                ctx.on_stop(dispose)
                await _open_store(orchestrator, settings, engine)
            recovered = await _recover(orchestrator, settings)
            if recovered:
                log.info("run %s left by a previous orchestrator is settled", recovered)
            await orchestrator.announce_endpoints()
            await bus.consume(
                ORCHESTRATOR_WORK,
                ApplyWork,
                on_work,
                durable=ORCHESTRATOR_WORK_CONSUMER,
                ack_wait_s=settings.work_ack_wait_s,
            )
            if settings.converge_on_start:
                try:
                    await _converge(orchestrator, queue, settings)
                except Exception:  # noqa: BLE001 - a courtesy at start-up must never become a crash loop
                    log.exception("start-up convergence broke off; apply by hand (POST /api/system/gpu-config/apply)")

        ctx.spawn(background(), name="open-store")
        ctx.add_health(
            lambda: {
                "compose": orchestrator.engine.describe(),
                "store": "ready" if orchestrator.store is not None else f"not ready: {orchestrator.store_problem}",
            }
        )

    return start


def main(settings: OrchestratorSettings) -> None:
    run(ServiceName.ORCHESTRATOR, settings, make_start(settings))

