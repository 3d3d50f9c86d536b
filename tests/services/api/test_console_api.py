"""The API the console is built on: previews of unsaved assignments, warnings by service, and backup
and restore, through the gateway to a real planner on one in-memory bus."""

from __future__ import annotations

import pytest
import yaml

from services.api.schemas import warnings_by_service
from tests.services.api.test_gpu_config import ISSUE_PUT, Stack, stack  # noqa: F401 - the fixture

YAML = {"Content-Type": "application/yaml"}


@pytest.mark.parametrize(
    ("services", "warnings", "expected"),
    [
        (["ai-llm"], ["ai-llm needs 21.7 GB"], {"ai-llm": ["ai-llm needs 21.7 GB"]}),
        (["ai-llm"], ["ai-llm-2 needs 3 GB"], {}),  # a longer name is another service
        (["a", "b"], ["Combined: a 1 GB, b 2 GB", "b alone"], {"a": ["Combined: a 1 GB, b 2 GB"],
                                                               "b": ["Combined: a 1 GB, b 2 GB", "b alone"]}),
        (["ai-clip"], [], {}),
    ],
)
def test_warnings_are_filed_under_each_service_they_name(
    services: list[str], warnings: list[str], expected: dict[str, list[str]]
) -> None:
    assert warnings_by_service(services, warnings) == expected


async def test_a_preview_of_the_forms_assignments_warns_and_saves_nothing(stack: Stack) -> None:  # noqa: F811
    body = {"strategy": "balanced", "assignments": [
        {"service": "ai-enrichment", "gpu_index": 1, "vram_budget_override": 3.5}
    ]}
    r = await stack.client.post("/api/system/gpu-config/preview", json=body)

    assert r.status_code == 200, r.text
    preview = r.json()
    enrichment = next(a for a in preview["assignments"] if a["service"] == "ai-enrichment")
    assert enrichment["gpu_indices"] == [1] and enrichment["vram_budget_gb"] == 3.5 and enrichment["pinned"]
    assert any("3.5 GB" in w for w in preview["warnings_by_service"]["ai-enrichment"])
    assert {g["index"] for g in preview["gpus"]} == {0, 1}
    assert stack.repo.config is None


async def test_a_preview_names_the_field_at_fault(stack: Stack) -> None:  # noqa: F811
    body = {"strategy": "manual", "assignments": [{"service": "ai-nope", "gpu_index": 0}]}
    r = await stack.client.post("/api/system/gpu-config/preview", json=body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "assignments", 0, "service"]


async def test_export_then_import_shows_the_change_and_restores_the_configuration(stack: Stack) -> None:  # noqa: F811
    assert (await stack.client.put("/api/system/gpu-config", json=ISSUE_PUT)).status_code == 200
    saved = (await stack.client.get("/api/system/gpu-config")).json()
    exported = await stack.client.get("/api/system/backup")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/yaml")
    assert 'filename="gpuplane-backup-r1.yaml"' in exported.headers["content-disposition"]
    document = yaml.safe_load(exported.text)
    assert document["kind"] == "gpuplane-backup" and document["version"] == 1 and document["revision"] == 1

    unchanged = await stack.client.post("/api/system/backup/restore", content=exported.content, headers=YAML)
    assert unchanged.status_code == 200, unchanged.text
    assert [c for c in unchanged.json()["changes"] if c["change"] != "unchanged"] == []

    moved = {**ISSUE_PUT, "assignments": [{"service": "ai-llm", "gpu_index": 1}, *ISSUE_PUT["assignments"][1:]]}
    assert (await stack.client.put("/api/system/gpu-config", json=moved)).status_code == 200
    dry = (await stack.client.post("/api/system/backup/restore", content=exported.content, headers=YAML)).json()
    assert dry["dry_run"] is True and dry["revision"] is None
    moved_back = {c["service"]: c for c in dry["changes"] if c["change"] == "moved"}
    assert moved_back["ai-llm"]["before"] == "box GPU 1" and moved_back["ai-llm"]["after"] == "box GPU 0"
    assert stack.repo.config.revision == 2  # type: ignore[union-attr]

    done = await stack.client.post(
        "/api/system/backup/restore", params={"dry_run": "false"}, content=exported.content, headers=YAML
    )
    assert done.status_code == 200, done.text
    assert done.json()["revision"] == 3
    restored = (await stack.client.get("/api/system/gpu-config")).json()
    placed = {a["service"]: (a["gpu_indices"], a["vram_budget_gb"]) for a in restored["assignments"]}
    assert placed == {a["service"]: (a["gpu_indices"], a["vram_budget_gb"]) for a in saved["assignments"]}
    audit = (await stack.client.get("/api/system/audit", params={"action": "config_restore"}))
    assert audit.status_code in (200, 503)  # the audit trail needs PostgreSQL; the real stack test reads it


@pytest.mark.parametrize(
    ("content", "headers", "status", "where"),
    [
        (b"kind: gpuplane-backup\nversion: 1\nstrategy: manual\nassignments: [{service: ai-llm, gpus: [-1], "
         b"pinned: true}]\n", YAML, 422, ["body", "assignments", 0, "gpus", 0]),
        (b"kind: gpuplane-backup\nversion: 1\n", YAML, 422, ["body", "strategy"]),
        (b"kind: gpuplane-backup\nversion: 1\nstrategy: nope\n", YAML, 422, ["body", "strategy"]),
        (b"kind: gpuplane-backup\nversion: 1\nstrategy: manual\n", {"Content-Type": "text/plain"}, 415, None),
        (b"kind: gpuplane-backup\n", {"Content-Type": "application/json"}, 422, None),
    ],
)
async def test_a_bad_backup_is_a_4xx_that_names_the_problem(
    stack: Stack,  # noqa: F811
    content: bytes, headers: dict[str, str], status: int, where: list[object] | None
) -> None:
    r = await stack.client.post("/api/system/backup/restore", content=content, headers=headers)
    assert r.status_code == status, r.text
    if where is not None:
        assert r.json()["detail"][0]["loc"][: len(where)] == where, r.json()
    assert stack.repo.config is None
