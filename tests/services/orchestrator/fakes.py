"""Fakes for the orchestrator's controller: an engine that behaves like podman-compose over an
in-memory set of containers (it reads the real override file), a run store with the database's
one-active-run rule, the planner's configuration, and a clock that moves only when slept on."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from services.orchestrator.core.model import TARGET_LABEL, CommandResult, ContainerView, ServiceTarget
from services.orchestrator.core.override import parse_override
from services.orchestrator.core.reconcile import dependents
from services.orchestrator.ports import EngineUnavailable, RunConflict, RunRecord
from shared.contracts import ApplyRun, GpuConfig, ServiceAssignment, ServiceEndpoints
from tests.builders import FIXED_TIME, make_gpu


class FakeClock:
    def __init__(self, start: datetime = FIXED_TIME) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeEngine:
    """podman-compose's behaviour, in memory: ``recreate`` reads the override file from disk and
    recreates the service and its running dependents with new container ids."""

    override_path: Path
    depends_on: dict[str, tuple[str, ...]]
    clock: FakeClock
    cdi_env: dict[str, dict[str, str]] = field(default_factory=dict)
    fails_when: dict[str, Callable[[ServiceTarget], bool]] = field(default_factory=dict)
    """service -> predicate on its new target: True makes the new container exit at start."""
    drop_devices: bool = False
    """Recreate without the GPU devices (a compose front end that silently drops CDI devices)."""
    unavailable: str | None = None
    hold: asyncio.Event | None = None
    """When set, ``recreate`` waits for it (a run that stays in progress)."""
    crashes: list[Exception] = field(default_factory=list)
    """Raised by the next ``recreate`` calls, one each, once the containers are recreated: a compose
    command failing in a way nobody typed, after it changed things."""
    inspect_crashes: list[Exception] = field(default_factory=list)
    """Raised by the next ``containers`` calls, one each (an inspect document nobody expected)."""
    problems_found: list[str] = field(default_factory=list)
    containers_now: dict[str, ContainerView] = field(default_factory=dict)
    recreated: list[str] = field(default_factory=list)
    published: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)
    """service -> its containers' published ports (container port -> host address, host port)."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def start_all(self) -> None:
        """``compose up -d`` of the whole project with the current override."""
        for service in self.depends_on:
            self._create(service)

    def _create(self, service: str) -> ContainerView:
        target = parse_override(self.override_path.read_text() if self.override_path.exists() else None).get(
            service, ServiceTarget.of(service)
        )
        fails = self.fails_when.get(service, lambda _: False)(target)
        env = dict(target.env)
        for device in target.device_ids:
            env.update(self.cdi_env.get(device, {}))
        container = ContainerView(
            id=f"{next(self._ids):064x}",
            name=f"proj_{service}_1",
            service=service,
            status="exited" if fails else "running",
            running=not fails,
            exit_code=3 if fails else None,
            device_ids=() if self.drop_devices else target.device_ids,
            env=env,
            labels={TARGET_LABEL: target.digest} if not target.empty else {},
            started_at=self.clock(),
            created_at=self.clock(),
            ports=dict(self.published.get(service, {})),
        )
        self.containers_now[service] = container
        return container

    def change_by_hand(self, service: str, **changes: object) -> None:
        self.containers_now[service] = replace(self.containers_now[service], **changes)  # type: ignore[arg-type]

    def describe(self) -> str:
        return "fake-compose, project proj"

    async def problems(self, device_ids: Collection[str]) -> list[str]:
        return list(self.problems_found)

    async def project_services(self) -> dict[str, tuple[str, ...]]:
        return dict(self.depends_on)

    async def containers(self) -> list[ContainerView]:
        if self.unavailable:
            raise EngineUnavailable(self.unavailable)
        if self.inspect_crashes:
            raise self.inspect_crashes.pop(0)
        return list(self.containers_now.values())

    async def recreate(self, service: str) -> CommandResult:
        if self.unavailable:
            raise EngineUnavailable(self.unavailable)
        self.recreated.append(service)
        if self.hold is not None:
            await self.hold.wait()
        running = {s for s, c in self.containers_now.items() if c.running}
        for name in [service, *sorted(dependents(service, self.depends_on) & running)]:
            self._create(name)
        if self.crashes:
            raise self.crashes.pop(0)
        return CommandResult(("fake-compose", "up", service), 0, "")

    async def run_healthcheck(self, container_id: str) -> None:
        return None

    async def device_env(self) -> dict[str, dict[str, str]]:
        return self.cdi_env

    async def logs_tail(self, container_id: str, lines: int = 10) -> str:
        return "starting\nno usable GPU, exiting"


class FakeRunStore:
    """Runs in a dict, with the database's rule: at most one queued/running/rolling_back run."""

    def __init__(self) -> None:
        self.records: dict[str, RunRecord] = {}
        self.failures: dict[str, list[Exception | None]] = {}
        """method name ("get", "update", "active") -> what its next calls raise, one each (None: that call works)."""

    def _fail(self, method: str) -> None:
        planned = self.failures.get(method)
        failure = planned.pop(0) if planned else None
        if failure is not None:
            raise failure

    def create(self, record: RunRecord) -> None:
        active = self._active()
        if active is not None and record.run.state.active:
            raise RunConflict(active.run.id)
        self.records[record.run.id] = record

    def update(self, record: RunRecord) -> None:
        self._fail("update")
        assert record.run.id in self.records
        # As the database does: what is written is the run, which reads back as a readable document.
        self.records[record.run.id] = replace(record, unreadable=None)

    def get(self, run_id: str) -> RunRecord | None:
        self._fail("get")
        return self.records.get(run_id)

    def latest(self) -> RunRecord | None:
        return list(self.records.values())[-1] if self.records else None

    def active(self) -> RunRecord | None:
        self._fail("active")
        return self._active()

    def _active(self) -> RunRecord | None:
        return next((r for r in self.records.values() if r.run.state.active), None)

    def history(self, limit: int = 20) -> list[RunRecord]:
        return list(reversed(self.records.values()))[:limit]

    def last_succeeded(self) -> RunRecord | None:
        done = [r for r in self.records.values() if r.run.state.value == "succeeded"]
        return done[-1] if done else None


def assignment(service: str, gpu: int | None, budget: float | None = None) -> ServiceAssignment:
    return ServiceAssignment(
        service=service,
        model=f"{service}-model",
        host="box-a" if gpu is not None else None,
        gpu_indices=(gpu,) if gpu is not None else (),
        gpu_uuids=(make_gpu(gpu).uuid,) if gpu is not None else (),
        vram_estimate_gb=2.0,
        vram_budget_gb=budget,
        placed_by="manual",
        pinned=True,
    )


class FakePlanner:
    """Saved revisions, as the planner keeps them."""

    def __init__(self) -> None:
        self.revisions: list[GpuConfig] = []
        self.restored: list[int] = []
        self.failures: list[Exception] = []
        """Raised, one per call, by ``saved`` before it answers."""

    def save(self, *assignments: ServiceAssignment) -> GpuConfig:
        config = GpuConfig(
            strategy="manual",
            saved=True,
            saved_at=FIXED_TIME,
            revision=len(self.revisions) + 1,
            assignments=tuple(assignments),
        )
        self.revisions.append(config)
        return config

    async def saved(self) -> GpuConfig | None:
        if self.failures:
            raise self.failures.pop(0)
        return self.revisions[-1] if self.revisions else None

    async def restore(self, revision: int) -> GpuConfig:
        self.restored.append(revision)
        return self.save(*self.revisions[revision - 1].assignments)


class RecordedEvents:
    def __init__(self) -> None:
        self.events: list[tuple[ApplyRun, str | None]] = []

    async def progress(self, run: ApplyRun, service: str | None) -> None:
        self.events.append((run, service))

    def service_states(self, run_id: str, service: str) -> Sequence[str]:
        """The states ``service`` went through in run ``run_id``, as announced."""
        states: list[str] = []
        for run, name in self.events:
            if name != service or run.id != run_id:
                continue
            state = next(s.state.value for s in run.services if s.service == service)
            if not states or states[-1] != state:
                states.append(state)
        return states


class RecordedAgents:
    """The agents' side of a move: which services were drained (and which container ran then), what was announced."""

    def __init__(self, engine: FakeEngine, note: str | None = None) -> None:
        self.engine = engine
        self.note = note
        self.drained: list[tuple[str, str]] = []
        self.announced: list[ServiceEndpoints] = []

    async def drain(self, service: str) -> str | None:
        self.drained.append((service, self.engine.containers_now[service].id))
        return self.note

    async def announce(self, endpoints: ServiceEndpoints) -> None:
        self.announced.append(endpoints)
