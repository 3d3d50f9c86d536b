"""The backup file: written from a configuration, read back strictly, turned into the save that restores it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml

from services.api.backup import (
    Backup,
    BackupAssignment,
    BackupKey,
    BackupProblem,
    make_backup,
    notes_for,
    parse,
    render,
    requests_for,
)
from shared.contracts import AssignmentRequest, GpuConfig, Priority, ServiceAssignment

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def assignment(
    service: str, gpus: tuple[int, ...], *, pinned: bool = False, budget: float | None = None
) -> ServiceAssignment:
    return ServiceAssignment(
        service=service,
        model=f"{service} model",
        host="box",
        gpu_indices=gpus,
        vram_estimate_gb=1.0,
        vram_budget_override=budget,
        pinned=pinned,
        placed_by="manual" if pinned else "vram_based",
    )


CONFIG = GpuConfig(
    strategy="vram_based",
    saved=True,
    revision=7,
    assignments=(
        assignment("ai-llm", (0,), pinned=True),
        assignment("ai-clip", (1,)),
        assignment("ai-enrichment", (1,), pinned=True, budget=3.5),
    ),
)
SETTINGS = {"auth": "on", "session_ttl_s": 43200.0}


def test_a_backup_round_trips_through_its_yaml() -> None:
    keys = [BackupKey(name="zeta", rpm_limit=5), BackupKey(name="alpha", max_priority=Priority.NORMAL)]
    backup = make_backup(CONFIG, settings=SETTINGS, keys=keys, version="0.1.0", now=NOW)
    text = render(backup)

    assert text.startswith("# gpuplane configuration backup (version 1).")
    assert "secret" not in yaml.safe_load(text)["keys"][0]
    again = Backup.model_validate(parse(text.encode()))
    assert again == backup
    assert [k.name for k in again.keys] == ["alpha", "zeta"]
    assert again.revision == 7 and again.strategy == "vram_based"


def test_the_restore_pins_what_was_pinned_and_keeps_every_budget_in_file_order() -> None:
    backup = make_backup(CONFIG, settings=SETTINGS, keys=[], version="0.1.0", now=NOW)
    assert requests_for(backup) == (
        AssignmentRequest(service="ai-llm", gpu_indices=(0,), host="box"),
        AssignmentRequest(service="ai-clip"),
        AssignmentRequest(service="ai-enrichment", gpu_indices=(1,), host="box", vram_budget_override=3.5),
    )


@pytest.mark.parametrize(
    ("text", "message", "loc"),
    [
        (b"strategy: [unclosed", "not a YAML document (line 1", ()),
        (b"- a list\n", "a backup file is a YAML mapping", ()),
        (b"kind: something-else\nversion: 1\n", "not a gpuplane backup", ("kind",)),
        (b"kind: gpuplane-backup\nversion: 2\n", "backup version 2 is not one this gpuplane reads", ("version",)),
        (b"!!python/object:os.system {}\n", "not a YAML document", ()),
    ],
)
def test_what_is_not_a_backup_is_named(text: bytes, message: str, loc: tuple[str, ...]) -> None:
    with pytest.raises(BackupProblem) as caught:
        parse(text)
    assert message in str(caught.value) and caught.value.loc == loc


def test_a_field_the_format_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        BackupAssignment.model_validate({"service": "ai-llm", "gpu": 0})


def test_the_notes_say_what_a_restore_cannot_do() -> None:
    backup = Backup(
        gpuplane="0.0.9",
        strategy="manual",
        settings={"auth": "on", "session_ttl_s": 60.0, "unknown_here": 1},
        keys=[BackupKey(name="ci"), BackupKey(name="laptop")],
    )
    notes = notes_for(backup, settings=SETTINGS, key_names=["laptop"], version="0.1.0")
    assert notes == [
        "written by gpuplane 0.0.9; this is 0.1.0",
        "keys in the file but not here (a backup holds no secrets: create them again): ci",
        "setting session_ttl_s is 43200.0 here and 60.0 in the file (settings come from the environment, "
        "GPUPLANE_SESSION_TTL_S: not restored)",
    ]
