"""Backup and restore of the whole configuration as one versioned YAML document (pure: no I/O).

What is in it: the strategy and every service's assignment (GPU, pinned or placed, budget the user
set, enabled), the gateway's settings (for reference: they come from the environment and a restore
does not change them) and the inference keys' names and limits (never their secrets: a key cannot be
restored, only made again). A restore saves the strategy and assignments as a new revision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import GPU_INDEX_MAX, AssignmentRequest, GpuConfig, GpuIndex, Priority
from shared.names import Name

BACKUP_KIND: Literal["gpuplane-backup"] = "gpuplane-backup"
BACKUP_VERSION: Literal[1] = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackupAssignment(Strict):
    service: Name
    model: str | None = Field(default=None, description="For the reader; not restored (the catalog says it).")
    host: Name | None = None
    gpus: list[GpuIndex] = Field(default_factory=list, max_length=GPU_INDEX_MAX + 1, description="Its GPU indices.")
    pinned: bool = Field(default=False, description="True: restored on these GPUs; false: the strategy places it.")
    vram_budget_gb: float | None = Field(default=None, gt=0, le=4096, description="A budget the user set.")
    enabled: bool = True


class BackupKey(Strict):
    name: Name
    max_priority: Priority | None = None
    rpm_limit: int | None = Field(default=None, ge=1)


class Backup(Strict):
    """A backup file, version 1."""

    kind: Literal["gpuplane-backup"] = BACKUP_KIND
    version: Literal[1] = BACKUP_VERSION
    exported_at: datetime | None = None
    gpuplane: str | None = Field(default=None, description="The gpuplane version that wrote it.")
    revision: int | None = Field(default=None, ge=0, description="The configuration revision it was taken from.")
    strategy: str = Field(max_length=64)
    assignments: list[BackupAssignment] = Field(default_factory=list, max_length=4096)
    settings: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    keys: list[BackupKey] = Field(default_factory=list, max_length=10_000)


def make_backup(
    config: GpuConfig,
    *,
    settings: Mapping[str, str | int | float | bool | None],
    keys: Iterable[BackupKey],
    version: str,
    now: datetime,
) -> Backup:
    return Backup(
        exported_at=now,
        gpuplane=version,
        revision=config.revision,
        strategy=config.strategy,
        assignments=[
            BackupAssignment(
                service=a.service,
                model=a.model,
                host=a.host,
                gpus=list(a.gpu_indices),
                pinned=a.pinned,
                vram_budget_gb=a.vram_budget_override,
                enabled=a.enabled,
            )
            for a in config.assignments
        ],
        settings=dict(settings),
        keys=sorted(keys, key=lambda k: k.name),
    )


def render(backup: Backup) -> str:
    header = (
        f"# gpuplane configuration backup (version {backup.version}).\n"
        "# Restore: the console's Backup page, or `gpuplane config import FILE [--dry-run]`.\n"
        "# Keys are listed by name only: their secrets are never exported.\n"
    )
    body = yaml.safe_dump(backup.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return header + body


class BackupProblem(ValueError):
    """A file that is not a backup; ``loc`` names the field where one is wrong."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.loc = loc


def parse(text: bytes) -> Any:
    """The YAML document in ``text`` (safe loader: no tags, no objects)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise BackupProblem(f"not a YAML document{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(document, dict):
        raise BackupProblem("a backup file is a YAML mapping with kind: gpuplane-backup")
    if document.get("kind") != BACKUP_KIND:
        raise BackupProblem(f"not a gpuplane backup: kind must be {BACKUP_KIND!r}", ("kind",))
    if document.get("version") != BACKUP_VERSION:
        raise BackupProblem(
            f"backup version {document.get('version')!r} is not one this gpuplane reads (it reads {BACKUP_VERSION})",
            ("version",),
        )
    return document


def requests_for(backup: Backup) -> tuple[AssignmentRequest, ...]:
    """The save that restores ``backup``: pinned services on their GPUs, every budget the user set.
    One request per entry, in the file's order, so an error at ``assignments.N`` names the file's entry N."""
    return tuple(
        AssignmentRequest(
            service=a.service,
            gpu_indices=tuple(a.gpus) if a.pinned and a.gpus else None,
            host=a.host if a.pinned and a.gpus else None,
            vram_budget_override=a.vram_budget_gb,
            enabled=a.enabled,
        )
        for a in backup.assignments
    )


def notes_for(
    backup: Backup,
    *,
    settings: Mapping[str, str | int | float | bool | None],
    key_names: Sequence[str],
    version: str,
) -> list[str]:
    """What a restore will not do, said plainly: keys to make again, settings that differ."""
    notes: list[str] = []
    if backup.gpuplane and backup.gpuplane != version:
        notes.append(f"written by gpuplane {backup.gpuplane}; this is {version}")
    missing = [k.name for k in backup.keys if k.name not in set(key_names)]
    if missing:
        notes.append(
            f"keys in the file but not here (a backup holds no secrets: create them again): {', '.join(missing)}"
        )
    for name, value in sorted(backup.settings.items()):
        if name in settings and settings[name] != value:
            notes.append(
                f"setting {name} is {settings[name]!r} here and {value!r} in the file "
                f"(settings come from the environment, GPUPLANE_{name.upper()}: not restored)"
            )
    return notes
