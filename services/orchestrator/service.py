"""The orchestrator's controller: bring the compose project's containers to a target configuration.

Level-triggered, like a Kubernetes controller: every run compares the target with what the
containers actually run (the engine's own view) and recreates only the services that differ,
one at a time, verifying each. A run is recorded before it starts and after every step, so a
run cut short by a crash is finished, or rolled back, by the next orchestrator.

No bus, database driver or HTTP here: ``main.py`` wires requests, events and the work queue to
these methods; the engine, the run store and the configuration source are Protocols.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

from services.orchestrator.core.endpoints import endpoints_of
from services.orchestrator.core.health import judge
from services.orchestrator.core.model import ContainerView, ServiceTarget
from services.orchestrator.core.override import (
    DeviceIdMode,
    OverrideError,
    parse_override,
    render_override,
    targets_from_config,
)
from services.orchestrator.core.reconcile import (
    dependents,
    describe_devices,
    mismatches,
    reconcile,
    scope,
    verify_devices,
)
from services.orchestrator.ports import (
    ContainerEngine,
    EngineUnavailable,
    RunConflict,
    RunRecord,
    RunRepository,
    StoreUnavailable,
)
from shared.contracts import (
    ApplyRun,
    Drift,
    GpuConfig,
    OrchestratorStatus,
    RunKind,
    RunState,
    ServiceApi,
    ServiceEndpoints,
    ServiceProgress,
    ServiceState,
    TouchedContainer,
)
from shared.errors import BusError, ConfigError, Conflict, GpuplaneError
from shared.files import FileWriteFailed, read_text, restore, write_atomic
from shared.names import InvalidName

log = logging.getLogger("gpuplane.orchestrator")


ROLLBACK_SEARCH_RUNS = 100
"""How far back POST /rollback looks for the last run that changed something."""
MANUAL_ROLLBACK_NOTE = (
    "GPUPLANE_ROLLBACK=manual: containers are left as they are; POST /api/system/gpu-config/rollback "
    "restores the previous configuration"
)


class NotReady(GpuplaneError):
    """The orchestrator cannot take a run now (no database yet, say); the message says what is missing."""


class ApplyRefused(GpuplaneError):
    """The engine is not fit to apply anything (compose command missing, no CDI spec...): nothing was changed."""


class NothingToRollBack(Conflict):
    """No earlier applied configuration to go back to."""


class ConfigSource(Protocol):
    """The planner's saved configuration."""

    async def saved(self) -> GpuConfig | None:
        """The saved configuration; None before the first save."""
        ...

    async def restore(self, revision: int) -> GpuConfig:
        """Save revision ``revision``'s assignments again, as a new revision; returns the new one."""
        ...


class RunEvents(Protocol):
    async def progress(self, run: ApplyRun, service: str | None) -> None:
        """Announce a transition of ``run`` (or of its ``service``). Must not raise."""
        ...


class Agents(Protocol):
    """The agents that register placed services' APIs with the router (a worker process per host)."""

    async def drain(self, service: str) -> str | None:
        """Stop new requests to ``service`` and wait for its engine to finish those it has; a note when that
        could not be done (nobody answered, or time ran out). Must not raise."""
        ...

    async def announce(self, endpoints: ServiceEndpoints) -> None:
        """Tell the agents where the services run now. Must not raise."""
        ...


@dataclass(frozen=True)
class Options:
    override_path: Path
    device_ids: DeviceIdMode = "uuid"
    auto_rollback: bool = True
    health_grace_s: float = 10.0
    health_timeout_s: float = 300.0
    health_poll_s: float = 1.0
    problems_cache_s: float = 10.0
    host: str = "localhost"
    """This host's name: the endpoints' host."""
    apis: Mapping[str, ServiceApi] = field(default_factory=dict)
    """The services that serve an OpenAI-compatible API (``x-gpuplane: {api: ...}``), by name."""


class Orchestrator:
    """Takes runs, carries them out one at a time, and answers for the containers' state."""

    def __init__(
        self,
        engine: ContainerEngine,
        config: ConfigSource,
        events: RunEvents,
        options: Options,
        *,
        clock: Callable[[], datetime],
        new_id: Callable[[], str],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        agents: Agents | None = None,
    ) -> None:
        self.engine = engine
        self.agents = agents
        self.config = config
        self.events = events
        self.options = options
        self.store: RunRepository | None = None
        self.store_problem: str | None = "no database configured (GPUPLANE_DATABASE_URL)"
        self._clock = clock
        self._new_id = new_id
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._problems: tuple[float, list[str]] | None = None

    # ------------------------------------------------------------------ requests

    def _store(self) -> RunRepository:
        if self.store is None:
            raise NotReady(f"the run store is not available: {self.store_problem}")
        return self.store

    async def request_apply(self, *, kind: RunKind = RunKind.APPLY, trigger: str = "api") -> ApplyRun:
        """Record a run that applies the saved configuration; the caller queues it.

        Raises ``RunConflict`` while another run is active, ``Conflict`` before anything is
        saved, ``ApplyRefused`` (recorded as a failed run, so the status shows it too) when the
        engine is not fit to apply.
        """
        store = self._store()
        active = await asyncio.to_thread(store.active)
        if active is not None:
            raise RunConflict(active.run.id)
        config = await self.config.saved()
        if config is None:
            raise Conflict("no GPU configuration has been saved yet: save one with PUT /api/system/gpu-config first")
        targets = targets_from_config(config, self.options.device_ids)
        text = render_override(targets, revision=config.revision, at=self._clock())
        return await self._create(kind, trigger, config.revision, text, rollback_of=None)

    async def request_rollback(self, *, trigger: str = "api") -> ApplyRun:
        """Record a run that restores the configuration applied before the last successful run."""
        store = self._store()
        active = await asyncio.to_thread(store.active)
        if active is not None:
            raise RunConflict(active.run.id)
        # A run that changed nothing (everything already ran its target) is not worth undoing.
        runs = await asyncio.to_thread(store.history, ROLLBACK_SEARCH_RUNS)
        last = next(
            (
                r
                for r in runs
                if r.run.state is RunState.SUCCEEDED
                and parse_override(r.previous_override) != parse_override(r.target_override)
            ),
            None,
        )
        if last is None:
            raise NothingToRollBack("nothing to roll back: no configuration has been applied by gpuplane yet")
        return await self._create(
            RunKind.ROLLBACK, trigger, last.run.previous_revision, last.previous_override, rollback_of=last.run.id
        )

    async def _create(
        self, kind: RunKind, trigger: str, revision: int | None, target_text: str | None, *, rollback_of: str | None
    ) -> ApplyRun:
        store = self._store()
        targets = parse_override(target_text)
        device_ids = sorted({d for t in targets.values() for d in t.device_ids})
        problems = await self.problems(device_ids, fresh=True)
        last = await asyncio.to_thread(store.last_succeeded)
        now = self._clock()
        run = ApplyRun(
            id=self._new_id(),
            kind=kind,
            trigger=trigger,
            revision=revision,
            previous_revision=last.run.revision if last else None,
            created_at=now,
            rollback_of=rollback_of,
        )
        previous_text = read_text(self.options.override_path)
        if problems:
            refused = replace_run(
                run, state=RunState.FAILED, finished_at=now, error="nothing was changed: " + "; ".join(problems)
            )
            await asyncio.to_thread(store.create, RunRecord(refused, target_text, previous_text))
            await self.events.progress(refused, None)
            raise ApplyRefused("cannot apply: " + "; ".join(problems))
        await asyncio.to_thread(store.create, RunRecord(run, target_text, previous_text))
        await self.events.progress(run, None)
        log.info("run %s (%s, revision %s) queued", run.id, kind.value, revision)
        return run

    async def problems(self, device_ids: Sequence[str] = (), *, fresh: bool = False) -> list[str]:
        """What stops an apply; cached briefly for status polls, always fresh before a run."""
        now = asyncio.get_running_loop().time()
        if not fresh and not device_ids and self._problems and now - self._problems[0] < self.options.problems_cache_s:
            return self._problems[1]
        found = await self.engine.problems(device_ids)
        if not device_ids:
            self._problems = (now, found)
        return found

    async def abandon(self, run_id: str, reason: str) -> None:
        """Mark a queued run failed (it could not be queued): nothing was changed."""
        record = await asyncio.to_thread(self._store().get, run_id)
        if record is not None and record.run.state is RunState.QUEUED:
            await self._finish(record, RunState.FAILED, f"nothing was changed: the run {reason}")

    # ------------------------------------------------------------------ status

    async def status(self) -> OrchestratorStatus:
        store = self._store()
        active = await asyncio.to_thread(store.active)
        latest = active or await asyncio.to_thread(store.latest)
        applied = await asyncio.to_thread(store.last_succeeded)
        problems = list(await self.problems())
        drift: tuple[Drift, ...] = ()
        if active is None and not problems:
            try:
                drift = await self.drift()
            except (EngineUnavailable, OverrideError, ConfigError) as exc:
                problems.append(str(exc))
        return OrchestratorStatus(
            run=latest.run if latest else None,
            applied_revision=applied.run.revision if applied else None,
            drift=drift,
            compose=self.engine.describe(),
            problems=tuple(problems),
        )

    async def endpoints(self) -> ServiceEndpoints:
        """Where the services with an API run now (``EngineUnavailable`` when the engine cannot say)."""
        containers = await self.engine.containers() if self.options.apis else []
        try:
            config = await self.config.saved() if self.options.apis else None
        except BusError as exc:
            # The containers' own assignment ids still say where they run.
            log.debug("endpoints without the saved configuration: %s", exc)
            config = None
        return endpoints_of(self.options.host, self.options.apis, containers, config)

    async def announce_endpoints(self) -> None:
        """Tell the agents where the services with an API run (after a run, and at start)."""
        if self.agents is None or not self.options.apis:
            return
        try:
            endpoints = await self.endpoints()
        except EngineUnavailable as exc:
            log.warning("endpoints not announced: %s", exc)
            return
        await self.agents.announce(endpoints)

    async def drift(self) -> tuple[Drift, ...]:
        """Containers that do not run what the override file says (changed by hand, say)."""
        containers = await self.engine.containers()
        project = await self.engine.project_services()
        targets = scope(parse_override(read_text(self.options.override_path)), {}, containers)
        found: list[Drift] = []
        for container in containers:
            target = targets.get(container.service)
            if target is None or container.service not in project:
                continue
            reasons = mismatches(target, container)
            if reasons:
                found.append(
                    Drift(
                        service=container.service,
                        container=container.id[:12],
                        expected=describe_devices(target.device_ids),
                        actual=describe_devices(container.device_ids),
                        differences=tuple(reasons),
                    )
                )
        return tuple(found)

    # ------------------------------------------------------------------ carrying out a run

    async def execute(self, run_id: str, *, interrupted_by: str = "the orchestrator restarted") -> None:
        """Carry out run ``run_id`` to its end. Safe to call again: a finished run is left alone, one cut
        short (``interrupted_by`` says what cut it) is finished or rolled back, and the notes say which.

        Once this returns the run has ended, whatever went wrong: a failure of any kind while carrying
        it out or rolling it back ends it (rolled back first where it touched containers and rollback
        is automatic) with the reason in ``error``, so its work item can be acknowledged. Raises
        ``StoreUnavailable`` when the run store does not answer (the run waits in the store for a
        later call), and whatever kept the run's end from being recorded.
        """
        async with self._lock:
            store = self._store()
            record = await asyncio.to_thread(store.get, run_id)
            if record is None:
                log.warning("run %s is not in the store; dropping it", run_id)
                return
            if not record.run.state.active:
                log.info("run %s already ended %s", run_id, record.run.state.value)
                return
            try:
                await self._settle(record, interrupted_by)
            except StoreUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - the run is the boundary: whatever breaks it ends it, with the reason
                log.exception("run %s broke off", run_id)
                await self._end_broken(run_id, exc)

    async def _settle(self, record: RunRecord, interrupted_by: str) -> None:
        if record.unreadable is not None:
            log.warning("run %s cannot be read from the store (%s); ending it failed", record.run.id, record.unreadable)
            cannot = f"this gpuplane cannot read the stored run ({record.unreadable})"
            if record.run.state is RunState.QUEUED:
                await self._finish(record, RunState.FAILED, f"nothing was changed: {cannot}; apply again")
            else:
                await self._finish(
                    record,
                    RunState.FAILED,
                    f"{cannot}, so it can be neither finished nor rolled back: the containers may be part-way "
                    "between two configurations; the status's drift shows which, apply again to settle them",
                )
            return
        if record.run.state is not RunState.QUEUED:
            failed = any(s.state is ServiceState.FAILED for s in record.run.services)
            if record.run.state is RunState.ROLLING_BACK or failed:
                record = await self._note(record, f"{interrupted_by} during this run; rolling it back")
                await self._roll_back(record)
                return
            record = await self._note(record, f"{interrupted_by} during this run; finishing it")
        await self._carry_out(record)

    async def _end_broken(self, run_id: str, exc: Exception) -> None:
        """End run ``run_id``, which ``exc`` broke off, from the state it last recorded."""
        reason = describe_error(exc)
        record = await asyncio.to_thread(self._store().get, run_id)
        if record is None or not record.run.state.active:
            return  # it had ended, and only announcing that failed: the end stands
        if record.run.state is RunState.ROLLING_BACK:
            await self._finish(record, RunState.FAILED, join_errors(record.run.error, f"rollback failed: {reason}"))
            return
        if not touched_containers(record):
            kept = self._put_back_override(record)
            error = f"nothing was changed: {reason}" if kept is None else f"{reason}; {kept}"
            await self._finish(record, RunState.FAILED, error)
            return
        error = join_errors(record.run.error, reason)
        record = await self._save(with_run(record, error=error))
        if not self.options.auto_rollback:
            await self._finish(record, RunState.FAILED, error, MANUAL_ROLLBACK_NOTE)
            return
        try:
            await self._roll_back(record)
        except StoreUnavailable:
            raise
        except Exception as again:  # noqa: BLE001 - the rollback is part of the run, and ends with it
            log.exception("rollback of run %s broke off", run_id)
            latest = await asyncio.to_thread(self._store().get, run_id)
            if latest is not None and latest.run.state.active:
                await self._finish(latest, RunState.FAILED, f"{error}; rollback failed: {describe_error(again)}")

    def _put_back_override(self, record: RunRecord) -> str | None:
        """Put back the override file this run replaced; why it could not be (None: it is back)."""
        try:
            self._write_override(record.previous_override)
        except (FileWriteFailed, OSError) as exc:
            return f"the previous override file could not be put back: {exc}"
        return None

    async def recover(self) -> str | None:
        """At start-up: finish or roll back a run that a previous orchestrator left active.

        A stored run never keeps the orchestrator from starting: whatever goes wrong is logged and the
        run ended failed where the store lets it. Raises only ``StoreUnavailable`` (wait and call again).
        """
        store = self._store()
        active = await asyncio.to_thread(store.active)
        if active is None:
            return None
        run_id = active.run.id
        log.warning("run %s was left %s by a previous orchestrator; resuming it", run_id, active.run.state.value)
        try:
            await self.execute(run_id)
            return run_id
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - start-up is a boundary: a stored run must not stop the service
            log.exception("run %s left by a previous orchestrator could not be settled", run_id)
            reason = f"the orchestrator could not settle this run after a restart: {describe_error(exc)}"
        try:
            record = await asyncio.to_thread(store.get, run_id)
            if record is not None and record.run.state.active:
                await self._finish(record, RunState.FAILED, reason)
        except StoreUnavailable:
            raise
        except Exception:  # noqa: BLE001 - as above; the failure is logged, and the service goes on
            log.exception("run %s could not be marked failed either: apply and rollback answer 409 until it is", run_id)
        return run_id

    async def needs_converging(self) -> str | None:
        """Why the containers should be brought to the saved configuration now (None: they need not)."""
        store = self._store()
        if await asyncio.to_thread(store.active) is not None:
            return None
        config = await self.config.saved()
        if config is None:
            return None
        latest = await asyncio.to_thread(store.latest)
        if (
            latest is not None
            and latest.run.revision == config.revision
            and latest.run.state
            in (
                RunState.FAILED,
                RunState.ROLLED_BACK,
            )
        ):
            log.warning(
                "saved revision %d is not applied: run %s ended %s (%s); apply it again to retry",
                config.revision,
                latest.run.id,
                latest.run.state.value,
                latest.run.error,
            )
            return None
        targets = targets_from_config(config, self.options.device_ids)
        containers = await self.engine.containers()
        project = await self.engine.project_services()
        plan = reconcile(scope(targets, {}, containers), containers, set(project))
        if not plan.changes:
            return None
        return ", ".join(f"{c.service} ({c.reason})" for c in plan.changes)

    async def _save(self, record: RunRecord, service: str | None = None) -> RunRecord:
        await asyncio.to_thread(self._store().update, record)
        await self.events.progress(record.run, service)
        return record

    async def _note(self, record: RunRecord, note: str) -> RunRecord:
        return await self._save(with_run(record, notes=(*record.run.notes, note)))

    async def _carry_out(self, record: RunRecord) -> None:
        record = await self._save(
            with_run(record, state=RunState.RUNNING, started_at=record.run.started_at or self._clock())
        )
        try:
            containers = await self.engine.containers()
            project = await self.engine.project_services()
            # Last: an engine that does not answer must leave the override as it was.
            self._write_override(record.target_override)
        except (FileWriteFailed, EngineUnavailable, ConfigError) as exc:
            await self._finish(record, RunState.FAILED, f"nothing was changed: {exc}")
            return
        targets = scope(parse_override(record.target_override), parse_override(record.previous_override), containers)
        if not record.run.services:
            plan = reconcile(targets, containers, set(project))
            services = tuple(
                ServiceProgress(
                    service=c.service,
                    change=c.reason,
                    devices_before=c.devices_before,
                    devices_after=c.devices_after,
                    container_before=c.container[:12],
                )
                for c in plan.changes
            )
            record = await self._save(with_run(record, services=services, notes=(*record.run.notes, *plan.notes)))
            for progress in services:
                await self.events.progress(record.run, progress.service)
            if not services:
                await self._finish(
                    record, RunState.SUCCEEDED, None, "nothing to change: every container already runs it"
                )
                return
        for progress in record.run.services:
            if progress.state in (ServiceState.HEALTHY, ServiceState.RESTORED):
                continue
            record = await self._bring_up(record, progress.service, targets, project, restoring=False)
            if current(record, progress.service).state is ServiceState.FAILED:
                break
        failed = [s for s in record.run.services if s.state is ServiceState.FAILED]
        if not failed:
            # The saved configuration is restored before the run reads as finished, so whoever waits for
            # the end sees the note saying what happened to it.
            await self._finish(await self._restore_config(record), RunState.SUCCEEDED, None)
            return
        error = "; ".join(f"{s.service}: {s.error}" for s in failed)
        record = await self._save(with_run(record, error=error))
        if self.options.auto_rollback:
            await self._roll_back(record)
        else:
            await self._finish(record, RunState.FAILED, error, MANUAL_ROLLBACK_NOTE)

    async def _restore_config(self, record: RunRecord) -> RunRecord:
        """A rollback also puts the planner's saved configuration back, so the database, the YAML mirror
        and the override agree again."""
        if record.run.kind is not RunKind.ROLLBACK:
            return record
        if record.run.revision is None:
            return await self._note(
                record,
                "the containers run what they ran before gpuplane's first apply; "
                "the saved configuration is unchanged (there is no earlier revision)",
            )
        original = record.run.revision
        try:
            restored = await self.config.restore(original)
        except GpuplaneError as exc:
            return await self._note(
                record, f"containers rolled back, but the planner did not restore revision {original}: {exc}"
            )
        note = f"the saved configuration is revision {original}'s again (saved as revision {restored.revision})"
        return await self._save(with_run(record, revision=restored.revision, notes=(*record.run.notes, note)))

    async def _roll_back(self, record: RunRecord) -> None:
        """Put every container the run touched back on the previous override."""
        record = await self._save(with_run(record, state=RunState.ROLLING_BACK))
        try:
            self._write_override(record.previous_override)
            containers = await self.engine.containers()
            project = await self.engine.project_services()
        except (FileWriteFailed, EngineUnavailable, ConfigError) as exc:
            await self._finish(record, RunState.FAILED, f"{record.run.error}; rollback failed: {exc}")
            return
        previous = scope(parse_override(record.previous_override), parse_override(record.target_override), containers)
        touched = [s.service for s in record.run.services if s.state is not ServiceState.PENDING]
        touched += [t.service for t in record.run.touched if t.service not in touched]
        problems: list[str] = []
        for service in touched:
            if service not in previous or service not in project:
                continue
            record = await self._bring_up(record, service, previous, project, restoring=True)
            progress = find(record, service)
            if progress is not None and progress.state is not ServiceState.RESTORED:
                problems.append(f"{service}: {progress.error}")
        if problems:
            await self._finish(
                record, RunState.FAILED, f"{record.run.error}; rollback failed for " + "; ".join(problems)
            )
        else:
            await self._finish(record, RunState.ROLLED_BACK, record.run.error)

    async def _bring_up(
        self,
        record: RunRecord,
        service: str,
        targets: Mapping[str, ServiceTarget],
        project: Mapping[str, tuple[str, ...]],
        *,
        restoring: bool,
    ) -> RunRecord:
        """Recreate ``service`` if its container differs from its target, verify it, wait for health."""
        target = targets.get(service, ServiceTarget.of(service))
        if find(record, service) is None:
            # A dependent that compose recreated along with a changed service: tracked so a rollback restores it.
            touched_by = ServiceProgress(service=service, change="recreated by the compose command along with a change")
            record = with_run(record, services=(*record.run.services, touched_by))
        started = self._clock()
        record = await self._save(
            # A restore keeps the error that made it necessary.
            update_service(record, service, state=ServiceState.RECREATING, started_at=started)
            if restoring
            else update_service(record, service, state=ServiceState.RECREATING, started_at=started, error=None),
            service,
        )
        try:
            before = await self.engine.containers()
            mine = [c for c in before if c.service == service]
            differs = [reason for c in mine for reason in mismatches(target, c)]
            if restoring:
                why = "restored to the previous configuration (rollback)"
            else:
                why = f"asked for: {'; '.join(differs) or 'no container yet'}"
            if not mine or differs or restoring and not all(c.running for c in mine):
                if self.agents is not None and service in self.options.apis and any(c.running for c in mine):
                    # The router must stop sending to the engine about to go, and its requests finish first.
                    note = await self.agents.drain(service)
                    if note:
                        record = await self._note(record, f"{service}: {note}")
                result = await self.engine.recreate(service)
                after = await self.engine.containers()
                record = with_run(
                    record, touched=(*record.run.touched, *self._touched(service, before, after, project, why))
                )
                log.info("recreated %s (%s exited %d)", service, result.argv[0], result.returncode)
                if not any(c.service == service for c in after):
                    tail = result.output_tail.strip().splitlines()[-3:]
                    return await self._service_failed(
                        record,
                        service,
                        restoring,
                        f"{' '.join(result.argv[:1])} exited {result.returncode} and created no container"
                        + (f": {' | '.join(tail)}" if tail else ""),
                    )
            else:
                after = before
            container = next(c for c in after if c.service == service)
            cdi_env = await self.engine.device_env()
            wrong = verify_devices(target, container, cdi_env)
            if wrong is not None:
                return await self._service_failed(record, service, restoring, wrong)
            record = await self._save(update_service(record, service, container_after=container.id[:12]), service)
            watched = [service, *sorted(dependents(service, project) & {c.service for c in after})]
            verdict = await self._wait_healthy(watched, since=started, restarts={c.id: c.restart_count for c in after})
        except (EngineUnavailable, ConfigError, InvalidName) as exc:
            # The engine failed, or refused to build the command (a name against the rule): this service failed.
            return await self._service_failed(record, service, restoring, str(exc))
        if verdict is not None:
            return await self._service_failed(record, service, restoring, verdict)
        state = ServiceState.RESTORED if restoring else ServiceState.HEALTHY
        return await self._save(update_service(record, service, state=state, finished_at=self._clock()), service)

    async def _wait_healthy(
        self, services: Sequence[str], *, since: datetime, restarts: Mapping[str, int]
    ) -> str | None:
        """Wait until every container of ``services`` is healthy; the first failure's reason, else None."""
        while True:
            containers = {c.service: c for c in await self.engine.containers() if c.service in services}
            waiting = False
            for service in services:
                container = containers.get(service)
                if container is not None and container.health == "starting":
                    await self.engine.run_healthcheck(container.id)
                verdict = judge(
                    container,
                    since=since,
                    now=self._clock(),
                    grace_s=self.options.health_grace_s,
                    timeout_s=self.options.health_timeout_s,
                    restarts_before=restarts.get(container.id, 0) if container else 0,
                )
                if verdict.state == "failed":
                    who = "" if service == services[0] else f"its dependent {service}: "
                    logs = await self.engine.logs_tail(container.id, 5) if container is not None else ""
                    last = " | ".join(line for line in logs.strip().splitlines()[-3:] if line)
                    return f"{who}{verdict.reason}" + (f" (last output: {last})" if last else "")
                waiting = waiting or verdict.state == "waiting"
            if not waiting:
                return None
            await self._sleep(self.options.health_poll_s)

    def _touched(
        self,
        service: str,
        before: Sequence[ContainerView],
        after: Sequence[ContainerView],
        project: Mapping[str, tuple[str, ...]],
        why_asked: str,
    ) -> list[TouchedContainer]:
        """Every container the compose command removed or created, with the reason it was touched."""
        old = {c.id: c for c in before}
        new = {c.id: c for c in after}
        names = sorted({c.service for c in before if c.id not in new} | {c.service for c in after if c.id not in old})
        deps = dependents(service, project)
        now = self._clock()
        touched = []
        for name in names:
            was = next((c.id[:12] for c in before if c.service == name and c.id not in new), None)
            now_id = next((c.id[:12] for c in after if c.service == name and c.id not in old), None)
            if name == service:
                why = why_asked
            elif name in deps:
                why = f"depends on {service}: the compose command recreates the dependents of a recreated service"
            else:
                why = f"not asked for: the compose command recreated it while recreating {service}"
            touched.append(
                TouchedContainer(service=name, container_before=was, container_after=now_id, why=why, at=now)
            )
        return touched

    async def _service_failed(self, record: RunRecord, service: str, restoring: bool, reason: str) -> RunRecord:
        error = f"restore failed: {reason}" if restoring else reason
        log.warning("%s failed: %s", service, error)
        return await self._save(
            update_service(record, service, state=ServiceState.FAILED, finished_at=self._clock(), error=error), service
        )

    async def _finish(
        self, record: RunRecord, state: RunState, error: str | None, note: str | None = None
    ) -> RunRecord:
        notes = (*record.run.notes, note) if note else record.run.notes
        record = await self._save(with_run(record, state=state, finished_at=self._clock(), error=error, notes=notes))
        log.info("run %s ended %s%s", record.run.id, state.value, f": {error}" if error else "")
        if touched_containers(record):
            await self.announce_endpoints()
        return record

    def _write_override(self, text: str | None) -> None:
        """Write the override (or remove it), keeping the file it replaces as ``<name>.prev``."""
        path = self.options.override_path
        current_text = read_text(path)
        if current_text == text:
            return
        if current_text is not None:
            write_atomic(path.with_name(path.name + ".prev"), current_text)
        restore(path, text)


# ---------------------------------------------------------------------- record helpers


def replace_run(run: ApplyRun, **changes: object) -> ApplyRun:
    return run.model_copy(update=changes)


def with_run(record: RunRecord, **changes: object) -> RunRecord:
    return replace(record, run=replace_run(record.run, **changes))


def touched_containers(record: RunRecord) -> bool:
    """Whether the run may have changed a container (a service is recorded as being recreated before it is)."""
    return bool(record.run.touched) or any(s.state is not ServiceState.PENDING for s in record.run.services)


def describe_error(exc: BaseException) -> str:
    """``RuntimeError: podman exploded``: the type says what kind of failure it was when the message alone does not."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def join_errors(first: str | None, then: str) -> str:
    return f"{first}; {then}" if first else then


def find(record: RunRecord, service: str) -> ServiceProgress | None:
    return next((s for s in record.run.services if s.service == service), None)


def current(record: RunRecord, service: str) -> ServiceProgress:
    found = find(record, service)
    if found is None:
        raise KeyError(service)
    return found


def update_service(record: RunRecord, service: str, **changes: object) -> RunRecord:
    services = tuple(s.model_copy(update=changes) if s.service == service else s for s in record.run.services)
    return with_run(record, services=services)
