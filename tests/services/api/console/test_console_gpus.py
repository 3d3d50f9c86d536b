"""The console's GPU Configuration page in a real browser against `gpuplane up` on the reference fleet:
live GPU cards, the strategy and assignment form, previews with per-GPU bars and warnings, saving, and
applying to the busybox demo project with live progress, a failure and the rollback that follows."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest
from playwright.sync_api import Page, expect

from tests.services.api.console.conftest import PHONE, signed_in_page

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

LIVE_S = 3  # a fleet-file edit must show on the page within this (the design says 2 s; 1 s of margin)


def open_gpus(page: Page, console_stack: Any) -> None:
    page.goto(f"{console_stack.api}/#/gpus")
    expect(page).to_have_title(re.compile("^GPU Configuration"))
    expect(page.locator("tr[data-service]").first).to_be_visible(timeout=15_000)


def gpu_value(console_stack: Any, index: int) -> str:
    """The GPU select's option value for GPU ``index`` ("host/index")."""
    gpus = console_stack.http.get("/api/system/gpus").json()["gpus"]
    gpu = next(g for g in gpus if g["index"] == index)
    return f"{gpu['host']}/{index}"


def row(page: Page, service: str) -> Any:
    return page.locator(f'tr[data-service="{service}"]').first


def page_errors(page: Page) -> list[str]:
    """Script errors; a refused request (409, 503) is the page's business, not an error."""
    return [e for e in page.console_errors if "Failed to load resource" not in e]  # type: ignore[attr-defined]


def test_both_reference_gpus_show_and_a_gpu_marked_unhealthy_turns_its_card_red(page: Page, console_stack: Any) -> None:
    open_gpus(page, console_stack)
    cards = page.get_by_test_id("gpu-card")
    expect(cards).to_have_count(2)
    first = page.locator('[data-testid="gpu-card"][data-gpu-index="0"]')
    second = page.locator('[data-testid="gpu-card"][data-gpu-index="1"]')
    expect(first).to_contain_text("GPU 0")
    expect(first).to_contain_text("NVIDIA RTX A5500")
    expect(first).to_contain_text("1.0 / 24.0 GB used")
    expect(first).to_contain_text("8.6")
    expect(second).to_contain_text("NVIDIA RTX A400")
    expect(second).to_contain_text("0.0 / 4.0 GB used")
    expect(second).to_contain_text("simulated")
    expect(second).not_to_have_class(re.compile(r"\bunhealthy\b"))
    expect(page.get_by_test_id("rescan")).to_be_enabled()

    def mark(healthy: bool) -> None:
        def mutate(fleet: dict[str, Any]) -> None:
            gpu = fleet["gpus"][1]
            gpu["healthy"] = healthy
            if healthy:
                gpu.pop("health_reason", None)
            else:
                gpu["health_reason"] = "XID 79: fallen off the bus"

        console_stack.set_fleet(mutate)

    mark(False)
    try:
        expect(second).to_have_class(re.compile(r"\bunhealthy\b"), timeout=LIVE_S * 1000)
        expect(second).to_contain_text("unhealthy")
        expect(second).to_contain_text("XID 79")
        expect(first).not_to_have_class(re.compile(r"\bunhealthy\b"))
    finally:
        mark(True)
    expect(second).not_to_have_class(re.compile(r"\bunhealthy\b"), timeout=LIVE_S * 1000)
    assert page_errors(page) == []


def test_preview_shows_the_diff_bars_and_a_budget_warning_and_save_keeps_what_the_page_showed(
    page: Page, console_stack: Any, shot: Any
) -> None:
    open_gpus(page, console_stack)
    recommended = page.locator("fieldset.strategies label", has_text="(Recommended)")
    expect(recommended).to_have_count(1)
    expect(recommended).to_contain_text("VRAM-based")
    expect(page.locator('input[name="strategy"]')).to_have_count(5)

    # Choosing a strategy previews it at once: the changes and one stacked bar per GPU.
    page.check('input[name="strategy"][value="balanced"]')
    expect(page.get_by_test_id("diff")).to_be_visible()
    stacks = page.get_by_test_id("gpu-stack")
    expect(stacks).to_have_count(2)
    expect(stacks.first.locator("span[data-service]").first).to_have_attribute("title", re.compile(r"ai-.+ GB$"))

    # ai-enrichment (6.8 GB) on the 4 GB GPU 1 with a 3.5 GB budget: the planner warns, naming 3.5 GB.
    enrichment = row(page, "ai-enrichment")
    enrichment.get_by_test_id("gpu-select").select_option(gpu_value(console_stack, 1))
    budget = enrichment.get_by_test_id("budget-input")
    expect(budget).to_have_attribute("aria-label", "VRAM budget for ai-enrichment in GB")
    budget.fill("3.5")
    page.get_by_test_id("preview").click()
    warnings = page.get_by_test_id("warnings")
    expect(warnings).to_contain_text("set to 3.5 GB as you asked")
    expect(enrichment).to_contain_text("3.5 GB")  # the warning under its row too
    expect(page.get_by_test_id("diff")).to_contain_text("budget 3.5 GB")
    expect(
        page.locator('[data-testid="gpu-stack"][data-gpu-index="1"] span[data-service="ai-enrichment"]')
    ).to_have_attribute("title", "ai-enrichment: 3.5 GB")
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "gpu-configuration")
    assert console_stack.http.get("/api/system/gpu-config").json()["saved"] is False  # a preview saves nothing

    # A budget the API refuses is marked at that row's input.
    budget.fill("0")
    page.get_by_test_id("preview").click()
    expect(budget).to_have_attribute("aria-invalid", "true")
    expect(enrichment.locator(".field-error")).to_be_visible()
    budget.fill("3.5")
    expect(budget).not_to_have_attribute("aria-invalid", "true")

    page.get_by_test_id("save").click()
    expect(page.get_by_test_id("form-notice")).to_contain_text(re.compile(r"Saved revision \d+"))
    saved = console_stack.http.get("/api/system/gpu-config").json()
    assert saved["saved"] is True and saved["strategy"] == "balanced"
    mine = next(a for a in saved["assignments"] if a["service"] == "ai-enrichment")
    assert mine["gpu_indices"] == [1] and mine["vram_budget_override"] == 3.5 and mine["pinned"] is True
    # The page reloaded the saved configuration and shows the same.
    expect(enrichment.get_by_test_id("gpu-select")).to_have_value(gpu_value(console_stack, 1))
    expect(enrichment.get_by_test_id("budget-input")).to_have_value("3.5")
    expect(page.locator('input[name="strategy"][value="balanced"]')).to_be_checked()
    assert page_errors(page) == []


def test_apply_reaches_succeeded_then_a_failing_move_is_rolled_back(page: Page, console_stack: Any, shot: Any) -> None:
    open_gpus(page, console_stack)
    run_state = page.get_by_test_id("run-state")
    page.get_by_test_id("apply").click()
    expect(run_state).to_have_text(re.compile("queued|running|succeeded"), timeout=15_000)
    expect(page.get_by_test_id("progress").first).to_be_visible(timeout=30_000)
    expect(run_state).to_have_text("succeeded", timeout=180_000)
    expect(page.locator('[data-testid="progress"][data-service="ai-enrichment"]')).to_have_attribute(
        "data-state", "healthy"
    )
    expect(page.get_by_test_id("status-line")).to_contain_text("All services running", timeout=15_000)
    expect(page.get_by_test_id("touched")).to_contain_text("ai-api")  # recreated along with ai-enrichment
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "apply-progress")

    # ai-florence cannot start on GPU 1 (deploy/demo/docker-compose.yml): the run fails and is rolled back.
    page.evaluate(
        """() => {
          window.__florence = [];
          const seen = () => {
            const node = document.querySelector('[data-testid="progress"][data-service="ai-florence"]');
            if (node) window.__florence.push(node.dataset.state);
          };
          new MutationObserver(seen).observe(document.getElementById("view"), {subtree: true, childList: true});
        }"""
    )
    row(page, "ai-florence").get_by_test_id("gpu-select").select_option(gpu_value(console_stack, 1))
    page.get_by_test_id("save").click()
    expect(page.get_by_test_id("form-notice")).to_contain_text("Saved revision")
    page.get_by_test_id("apply").click()
    expect(run_state).to_have_text("rolled_back", timeout=180_000)
    florence = page.locator('[data-testid="progress"][data-service="ai-florence"]')
    expect(florence).to_contain_text("CUDA out of memory")
    expect(page.get_by_test_id("run-error")).to_contain_text("ai-florence")
    expect(page.get_by_test_id("status-line")).to_contain_text("Rolled back")
    expect(page.get_by_test_id("rollback")).to_be_visible()
    assert "failed" in page.evaluate("window.__florence"), page.evaluate("window.__florence")
    status = console_stack.http.get("/api/system/gpu-config/status").json()
    assert status["run"]["state"] == "rolled_back"
    assert page_errors(page) == []


def test_the_page_reads_well_on_a_phone(browser: Any, console_stack: Any, shot: Any) -> None:
    phone = cast(Page, signed_in_page(browser, console_stack, PHONE))
    try:
        open_gpus(phone, console_stack)
        expect(phone.get_by_test_id("gpu-card")).to_have_count(2)
        phone.get_by_test_id("preview").click()
        expect(phone.get_by_test_id("gpu-stack")).to_have_count(2)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width} px)"
        expect(phone.get_by_test_id("status-line")).not_to_contain_text("Loading", timeout=30_000)
        phone.evaluate("window.scrollTo(0, 0)")
        shot(phone, "gpu-configuration-phone")
        assert page_errors(phone) == []
    finally:
        phone.context.close()


def test_no_gpus_detected_says_so_and_disables_every_control(browser: Any, empty_console_stack: Any) -> None:
    page = cast(Page, signed_in_page(browser, empty_console_stack))
    try:
        page.goto(f"{empty_console_stack.api}/#/gpus")
        notice = page.get_by_test_id("no-gpus")
        expect(notice).to_be_visible(timeout=15_000)
        expect(notice).to_contain_text("No GPUs detected")
        expect(page.get_by_test_id("gpu-card")).to_have_count(0)
        for test_id in ("preview", "save", "apply"):
            expect(page.get_by_test_id(test_id)).to_be_disabled()
        expect(page.locator('input[name="strategy"]').first).to_be_disabled(timeout=15_000)
        for control in page.locator(
            'input[name="strategy"], [data-testid="gpu-select"], [data-testid="budget-input"]'
        ).all():
            expect(control).to_be_disabled()
        expect(page.get_by_test_id("rescan")).to_be_enabled()  # the way out
        assert page_errors(page) == []
    finally:
        page.context.close()
