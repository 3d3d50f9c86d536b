"""Settings of the orchestrator service."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from shared.errors import ConfigError
from shared.names import InvalidName, check_name
from shared.settings import CommonSettings, path_list


class OrchestratorSettings(CommonSettings):
    database_url: str | None = Field(
        default=None, description="PostgreSQL that keeps the runs (unset: apply, rollback and status answer 503)."
    )
    compose_files: str = Field(
        default="", description="Comma-separated base compose files of the AI stack (the override goes after them)."
    )
    compose_cmd: str = Field(
        default="podman-compose", description="The compose command: podman-compose (1.6 or newer) or 'docker compose'."
    )
    compose_project: str | None = Field(
        default=None,
        description="Compose project name; default as compose picks it (COMPOSE_PROJECT_NAME, the files' "
        "'name:', else the first file's folder).",
    )
    container_cmd: str | None = Field(
        default=None, description="Container engine CLI for ps/inspect; default: podman, or docker for docker compose."
    )
    config_dir: Path = Field(default=Path("config"), description="Where docker-compose.gpu-override.yml is written.")
    device_ids: Literal["uuid", "index"] = Field(
        default="uuid",
        description="How the override names GPUs: uuid (survives index reordering) or index (for CDI specs "
        "that only name indices).",
    )
    rollback: Literal["auto", "manual"] = Field(
        default="auto", description="Restore what a failed run touched automatically, or leave it for POST /rollback."
    )
    cdi_spec_dirs: str = Field(default="/etc/cdi,/var/run/cdi", description="Where CDI specs are looked for.")
    health_grace_s: float = Field(
        default=10.0, gt=0, description="A container without a healthcheck must run this long without restarting."
    )
    health_timeout_s: float = Field(
        default=300.0, gt=0, description="How long a container's healthcheck may take to pass after a recreate."
    )
    health_poll_s: float = Field(default=1.0, gt=0, description="How often a recreated container is inspected.")
    agents_drain_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Before a service with an API is recreated, how long its engine may take to finish its requests.",
    )
    command_timeout_s: float = Field(
        default=300.0, gt=0, description="Longest a compose or engine command may take before it counts as hung."
    )
    converge_on_start: bool = Field(
        default=True, description="At start-up, bring containers to the saved configuration if they differ."
    )
    work_ack_wait_s: float = Field(
        default=30.0, gt=0, description="A run whose orchestrator stops answering is handed on after this long."
    )
    database_retry_s: float = Field(default=2.0, gt=0, description="Wait between attempts to reach the database.")

    @field_validator("compose_cmd")
    @classmethod
    def _command_given(cls, value: str) -> str:
        if not shlex.split(value):
            raise ValueError("GPUPLANE_COMPOSE_CMD is empty; use podman-compose or 'docker compose'")
        return value

    def compose_project_name(self) -> str | None:
        """``compose_project`` if set (empty counts as unset). Raises ``ConfigError`` naming the setting
        when it breaks the name rule.

        Checked here rather than when the settings load, so that the orchestrator still starts and
        answers: apply is refused with this reason (a failed run in the status), as for other problems.
        """
        if not self.compose_project:
            return None
        try:
            return check_name(self.compose_project, "GPUPLANE_COMPOSE_PROJECT")
        except InvalidName as exc:
            raise ConfigError(str(exc)) from exc

    def compose_paths(self) -> tuple[Path, ...]:
        return path_list(self.compose_files)

    def compose_argv(self) -> tuple[str, ...]:
        return tuple(shlex.split(self.compose_cmd))

    def cdi_dirs(self) -> tuple[Path, ...]:
        return path_list(self.cdi_spec_dirs)

    @property
    def override_path(self) -> Path:
        return self.config_dir / "docker-compose.gpu-override.yml"
