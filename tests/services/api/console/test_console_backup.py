"""The console's Backup page in a real browser against `gpuplane up`: export the configuration, change it,
import the export on the page, see the dry run's diff, restore, and find the exported configuration back."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from playwright.sync_api import FilePayload, Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def placement(config: dict[str, Any]) -> dict[str, tuple[str | None, list[int]]]:
    """Where each service runs: its host and GPUs."""
    return {a["service"]: (a["host"], list(a["gpu_indices"])) for a in config["assignments"]}


def test_export_change_and_restore_through_the_page(page: Page, console_stack: Any, shot: Any) -> None:
    http = console_stack.http
    before = http.get("/api/system/gpu-config").json()
    where = placement(before)
    assert "ai-clip" in where and where["ai-clip"][1], before

    # Export: the page's link downloads the same YAML the API gives.
    page.goto(f"{console_stack.api}/#/backup")
    expect(page).to_have_title(re.compile("^Backup"))
    with page.expect_download() as download_info:
        page.get_by_test_id("download").click()
    download = download_info.value
    exported = open(download.path(), encoding="utf-8").read()
    backup = yaml.safe_load(exported)
    assert backup["version"] and backup["strategy"] == before["strategy"]
    assert download.suggested_filename.endswith((".yaml", ".yml"))

    # Change something: ai-clip pinned to another GPU.
    gpus = sorted({g["index"] for g in http.get("/api/system/gpus").json()["gpus"]})
    assert len(gpus) >= 2, gpus
    clip_gpu = where["ai-clip"][1][0]
    other = next(i for i in gpus if i != clip_gpu)
    assignments = [{"service": s, "gpu_index": (other if s == "ai-clip" else g[0])} for s, (_, g) in where.items() if g]
    saved = http.put("/api/system/gpu-config", json={"strategy": "manual", "assignments": assignments})
    assert saved.status_code == 200, saved.text
    assert placement(http.get("/api/system/gpu-config").json())["ai-clip"][1] == [other]

    # Import the export on the page: the dry run shows ai-clip moving back, and changes nothing yet.
    file: FilePayload = {
        "name": download.suggested_filename,
        "mimeType": "application/yaml",
        "buffer": exported.encode(),
    }
    page.get_by_test_id("upload").set_input_files(files=file)
    diff = page.get_by_test_id("diff")
    expect(diff).to_be_visible(timeout=15_000)
    clip = diff.locator('[data-testid="change"][data-service="ai-clip"]')
    expect(clip).to_have_attribute("data-change", "moved")
    expect(clip).to_have_class(re.compile(r"\bmoved\b"))
    expect(page.get_by_test_id("restore-text")).to_have_value(exported)
    assert placement(http.get("/api/system/gpu-config").json())["ai-clip"][1] == [other]
    shot(page, "backup-restore")

    # Restore: saved as a new revision, with the exported placement back.
    page.get_by_test_id("restore").click()
    restored = page.get_by_test_id("restored")
    expect(restored).to_contain_text(re.compile(r"Restored as revision \d+"))
    revision = int(re.search(r"revision (\d+)", restored.inner_text()).group(1))  # type: ignore[union-attr]
    after = http.get("/api/system/gpu-config").json()
    assert after["revision"] == revision
    assert placement(after) == where
    assert after["strategy"] == before["strategy"]

    # The same backup again: nothing would change.
    page.get_by_test_id("dry-run").click()
    expect(page.get_by_test_id("no-changes")).to_be_visible()
    expect(page.locator('[data-testid="change"]:not([data-change="unchanged"])')).to_have_count(0)


def test_a_bad_backup_is_refused_with_the_reason(page: Page, console_stack: Any) -> None:
    page.goto(f"{console_stack.api}/#/backup")
    page.get_by_test_id("restore-text").fill("kind: gpuplane-backup\nversion: 1\nassignments: [not: {closed\n")
    page.get_by_test_id("dry-run").click()
    error = page.get_by_test_id("restore-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(re.compile(r"\(4\d\d\)"))
    expect(page.get_by_test_id("restore")).to_have_count(0)

    page.get_by_test_id("restore-text").fill("")
    page.get_by_test_id("dry-run").click()
    expect(page.get_by_role("alert")).to_contain_text("Choose a backup file or paste one")
