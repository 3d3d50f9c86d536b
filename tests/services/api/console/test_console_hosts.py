"""The GPU page with several hosts: cards grouped under their host, GPU choices that name the host, a
service that needs two GPUs chosen with checkboxes, and saves the planner stores as shown (the two-host
simulated fleet, and the reference catalog plus a tensor-parallel LLM)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.services.api.console.conftest import REPO, ConsoleStack, plain_console_stack, signed_in_page

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    catalog = tmp_path_factory.mktemp("catalog") / "services.yml"
    catalog.write_text(
        (REPO / "config/services.yml").read_text()
        + "  ai-vllm:\n    model: Llama-3-70B (tensor parallel 2)\n    vram_gb: 40\n    gpus: 2\n"
    )
    fleet = (REPO / "deploy/fleets/two-hosts.yaml").read_text()
    with plain_console_stack(tmp_path_factory, "console-hosts", fleet, {"GPUPLANE_CATALOG_FILE": str(catalog)}) as s:
        yield s


def test_cards_are_grouped_by_host_and_a_choice_names_its_host(browser, two_hosts: ConsoleStack) -> None:  # type: ignore[no-untyped-def]
    page = signed_in_page(browser, two_hosts)
    try:
        cards = page.get_by_test_id("gpu-card")
        expect(cards).to_have_count(4, timeout=15_000)
        assert [(c.get_attribute("data-host"), c.get_attribute("data-gpu-index")) for c in cards.all()] == [
            ("box-a", "0"), ("box-a", "1"), ("box-b", "0"), ("box-b", "1"),
        ]
        expect(page.get_by_role("heading", name="box-a", exact=True)).to_be_visible()
        expect(page.get_by_role("heading", name="box-b", exact=True)).to_be_visible()
        nvlinked = page.locator("[data-testid=gpu-card][data-host=box-b][data-gpu-index='0']")
        expect(nvlinked).to_contain_text("NVIDIA GeForce RTX 3090")
        expect(nvlinked.locator("dd").filter(has_text="GPU 1")).to_have_count(1)  # its NVLink peer

        page.check("input[name=strategy][value=manual]")
        select = page.locator("tr[data-service=ai-llm]").get_by_test_id("gpu-select")
        option = select.locator("option", has_text="box-b").filter(has_text="GPU 1")
        expect(option).to_have_count(1)
        select.select_option(option.get_attribute("value"))
        page.get_by_test_id("save").click()
        expect(page.get_by_test_id("form-notice")).to_contain_text("Saved revision")

        saved = two_hosts.http.get("/api/system/gpu-config").json()
        llm = next(a for a in saved["assignments"] if a["service"] == "ai-llm")
        assert (llm["host"], llm["gpu_indices"], llm["pinned"]) == ("box-b", [1], True)
        assert page.console_errors == [], page.console_errors
    finally:
        page.context.close()


def test_a_service_on_two_gpus_is_chosen_with_checkboxes(browser, two_hosts: ConsoleStack) -> None:  # type: ignore[no-untyped-def]
    page = signed_in_page(browser, two_hosts)
    try:
        page.check("input[name=strategy][value=manual]")
        choice = page.locator("tr[data-service=ai-vllm]").get_by_test_id("gpu-select")
        expect(choice.locator("input[type=checkbox]")).to_have_count(4, timeout=15_000)
        for box in choice.locator("input[type=checkbox]").all():
            box.set_checked(box.get_attribute("value") in ("box-b/0", "box-b/1"))
        page.get_by_test_id("save").click()
        expect(page.get_by_test_id("form-notice")).to_contain_text("Saved revision")

        saved = two_hosts.http.get("/api/system/gpu-config").json()
        vllm = next(a for a in saved["assignments"] if a["service"] == "ai-vllm")
        assert (vllm["host"], vllm["gpu_indices"], vllm["pinned"]) == ("box-b", [0, 1], True)
        assert page.console_errors == [], page.console_errors
    finally:
        page.context.close()
