from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.planner.mirror import (
    HEADER,
    MirrorWriteFailed,
    mirror_matches,
    read_mirror,
    render_mirror,
    restore,
    write_atomic,
)
from shared.contracts import GpuConfig, ServiceAssignment

SAVED_AT = datetime(2026, 11, 23, 11, 30, tzinfo=timezone(timedelta(hours=1)))


def assignment(service: str, gpus: tuple[int, ...] = (0,), **fields: object) -> ServiceAssignment:
    values: dict[str, object] = {
        "service": service,
        "model": "m",
        "host": "box-a" if gpus else None,
        "gpu_indices": gpus,
        "gpu_uuids": tuple(f"GPU-{i}" for i in gpus),
        "vram_estimate_gb": 4.0,
        "placed_by": "vram_based",
    }
    return ServiceAssignment.model_validate(values | fields)


def config(*assignments: ServiceAssignment) -> GpuConfig:
    return GpuConfig(strategy="vram_based", saved=True, saved_at=SAVED_AT, revision=3, assignments=assignments)


def test_render_has_the_header_and_one_line_per_assignment() -> None:
    text = render_mirror(
        config(
            assignment("ai-llm", (0, 1), vram_budget_gb=20.5, pinned=True, placed_by="manual"),
            assignment("ai-clip"),
            assignment("ai-tts", (), enabled=False),
        )
    )
    assert text.startswith(HEADER)
    assert text[len(HEADER) :] == (
        "generated_at: '2026-11-23T10:30:00Z'\n"
        "strategy: vram_based\n"
        "revision: 3\n"
        "assignments:\n"
        "  ai-llm: {gpu: [0, 1], vram_budget: 20.5, host: box-a, gpu_uuids: [GPU-0, GPU-1], pinned: true,"
        " placed_by: manual, enabled: true}\n"
        "  ai-clip: {gpu: 0, vram_budget: null, host: box-a, gpu_uuids: [GPU-0], pinned: false,"
        " placed_by: vram_based, enabled: true}\n"
        "  ai-tts: {gpu: null, vram_budget: null, host: null, gpu_uuids: [], pinned: false,"
        " placed_by: vram_based, enabled: false}\n"
    )


def test_render_without_assignments() -> None:
    data = yaml.safe_load(render_mirror(config()))
    assert data["assignments"] == {}


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(strategy="balanced"),
        lambda d: d.update(revision=2),
        lambda d: d["assignments"]["ai-llm"].update(gpu=1),
        lambda d: d["assignments"]["ai-llm"].update(vram_budget=3.0),
        lambda d: d["assignments"]["ai-llm"].update(host="box-b"),
        lambda d: d["assignments"]["ai-llm"].update(enabled=False),
        lambda d: d["assignments"].pop("ai-clip"),
        lambda d: d["assignments"].update(extra={"gpu": 0}),
    ],
)
def test_mirror_matches_notices_edits(edit: Callable[[dict[str, Any]], object]) -> None:
    saved = config(assignment("ai-llm"), assignment("ai-clip", (1,)))
    data = yaml.safe_load(render_mirror(saved))
    assert mirror_matches(saved, data)
    edit(data)
    assert not mirror_matches(saved, data)


def test_read_mirror(tmp_path: Path) -> None:
    path = tmp_path / "gpu-assignments.yml"
    assert read_mirror(path) is None
    path.write_text("assignments: [unclosed\n")
    assert read_mirror(path) == {}
    path.write_text(render_mirror(config(assignment("ai-llm"))))
    data = read_mirror(path)
    assert data is not None and mirror_matches(config(assignment("ai-llm")), data)


def test_write_atomic_returns_the_previous_content(tmp_path: Path) -> None:
    path = tmp_path / "config" / "gpu-assignments.yml"
    assert write_atomic(path, "one\n") is None
    assert write_atomic(path, "two\n") == "one\n"
    assert path.read_text() == "two\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_write_failure_names_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "gpu-assignments.yml"
    path.mkdir()
    with pytest.raises(MirrorWriteFailed, match=f"cannot write {path}: Is a directory"):
        write_atomic(path, "text\n")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_restore(tmp_path: Path) -> None:
    path = tmp_path / "gpu-assignments.yml"
    previous = write_atomic(path, "new\n")
    restore(path, previous)
    assert not path.exists()
    restore(path, None)
    path.write_text("new\n")
    restore(path, "old\n")
    assert path.read_text() == "old\n"
