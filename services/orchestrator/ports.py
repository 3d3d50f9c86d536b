"""What the orchestrator's controller needs from the outside world, as Protocols.

``engine.ComposeEngine`` (podman-compose or docker compose, and the container CLI) and
``store.RunStore`` (PostgreSQL) implement them; unit tests use fakes.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from services.orchestrator.core.model import CommandResult, ContainerView
from shared.contracts import ApplyRun
from shared.errors import Conflict, GpuplaneError


class EngineUnavailable(GpuplaneError):
    """The compose command or the container engine is missing or does not answer; the message says which."""


class StoreUnavailable(GpuplaneError):
    """The run store does not answer: a run can be neither read nor recorded now, so it is carried out later
    (the store raises a subclass that is also ``shared.database.DatabaseUnavailable``)."""

    detail: str | None = None
    """The driver's own words, for the log only."""


class RunConflict(Conflict):
    """Another run is queued or running."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is still in progress; wait for it to finish", {"run_id": run_id})
        self.run_id = run_id


class ContainerEngine(Protocol):
    """The compose project's containers, seen and changed through the compose command and the engine's CLI."""

    def describe(self) -> str:
        """One line: the compose command, the project name and the files, as run."""
        ...

    async def problems(self, device_ids: Collection[str]) -> list[str]:
        """What stops an apply right now, in words a user can act on; empty when ready.

        Checks that the compose command exists and is podman-compose 1.6 or newer (or docker
        compose), that the engine answers, that the compose files exist, and (podman) that a CDI
        spec for ``nvidia.com/gpu`` defines every id in ``device_ids``.
        """
        ...

    async def project_services(self) -> dict[str, tuple[str, ...]]:
        """Services of the base compose files and the services each one depends on."""
        ...

    async def containers(self) -> list[ContainerView]:
        """Every container of the project, whatever its state. Raises ``EngineUnavailable``."""
        ...

    async def recreate(self, service: str) -> CommandResult:
        """``<compose> -p P -f base... -f override up -d --force-recreate --no-deps SERVICE``.

        The exit status is reported, not trusted: callers inspect the containers afterwards.
        Raises ``EngineUnavailable`` when the command is missing or times out.
        """
        ...

    async def run_healthcheck(self, container_id: str) -> None:
        """Run the container's healthcheck now where the engine does not schedule it itself (podman
        without systemd); a no-op elsewhere."""
        ...

    async def device_env(self) -> dict[str, dict[str, str]]:
        """The environment the CDI spec injects for each ``nvidia.com/gpu`` device name (empty where the
        engine does not use CDI), so a recreated container can be checked for it."""
        ...

    async def logs_tail(self, container_id: str, lines: int = 10) -> str:
        """The last lines a container printed ("" when they cannot be read)."""
        ...


@dataclass(frozen=True)
class RunRecord:
    """A run and the override files on either side of it (``None``: no override file).

    ``unreadable`` says why the stored run no longer parses as ``ApplyRun`` (written by another gpuplane
    version, or edited); ``run`` is then rebuilt from what the store keeps outside the document (id,
    kind, state, revision, creation time), so the run still shows, and an active one can be ended.
    """

    run: ApplyRun
    target_override: str | None
    previous_override: str | None
    unreadable: str | None = None


class RunRepository(Protocol):
    """Where runs are kept (PostgreSQL). Methods block; callers use ``asyncio.to_thread``.

    Every method raises ``StoreUnavailable`` when the store does not answer. A stored run that no longer
    parses is returned, not raised: see ``RunRecord.unreadable``.
    """

    def create(self, record: RunRecord) -> None:
        """Insert a new run. Raises ``RunConflict`` naming the active run if one is queued or running."""
        ...

    def update(self, record: RunRecord) -> None: ...

    def get(self, run_id: str) -> RunRecord | None: ...

    def latest(self) -> RunRecord | None:
        """The most recently created run."""
        ...

    def active(self) -> RunRecord | None:
        """The run that is queued, running or rolling back, if any."""
        ...

    def last_succeeded(self) -> RunRecord | None:
        """The most recent run that ended ``succeeded``."""
        ...

    def history(self, limit: int = 20) -> list[RunRecord]:
        """The last ``limit`` runs, newest first."""
        ...
