"""The console's Inference page in a real browser against `gpuplane up`: the workers per GPU, the router's
queue, the models, and the playground, whose answer says which GPU served it and why."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

GPU = re.compile(r"cuda:\d+|cpu")


def small_chat_model(console_stack: Any) -> str:
    """A chat model that loads fast: a small one when the catalog has one."""
    groups = console_stack.http.get("/api/models").json()["model_groups"]
    chat = [m for g in groups for m in g["models"] if m["kind"] == "chat"]
    assert chat, groups
    return next((m["id"] for m in chat if m["small"]), chat[0]["id"])


def test_the_page_shows_every_worker_the_queue_and_the_models(page: Page, console_stack: Any) -> None:
    queue = console_stack.http.get("/api/queue").json()
    page.goto(f"{console_stack.api}/#/inference")
    expect(page).to_have_title(re.compile("^Inference"))
    rows = page.get_by_test_id("worker")
    expect(rows).to_have_count(len(queue["workers"]), timeout=15_000)
    for worker in queue["workers"]:
        row = page.locator(f'[data-testid="worker"][data-worker="{worker["worker_id"]}"]')
        expect(row).to_contain_text(worker["device"])
        expect(row).to_contain_text(f"/ {worker['slots']}")
    expect(page.get_by_test_id("queue")).to_contain_text("High priority")
    expect(page.get_by_test_id("queue")).to_contain_text("Low priority")
    groups = console_stack.http.get("/api/models").json()["model_groups"]
    for group in groups:
        expect(page.get_by_test_id("models")).to_contain_text(group["group_id"])


def test_the_playground_shows_the_gpu_that_served_the_request_and_why(
    page: Page, console_stack: Any, shot: Any
) -> None:
    model = small_chat_model(console_stack)
    page.goto(f"{console_stack.api}/#/inference")
    select = page.get_by_test_id("model-select")
    expect(select.locator(f'option[value="{model}"]')).to_have_count(1, timeout=15_000)
    select.select_option(model)
    page.get_by_label("Priority").select_option("high")
    page.get_by_test_id("prompt").fill("Which GPU are you on?")
    page.get_by_test_id("send").click()

    answer = page.get_by_test_id("answer")
    expect(answer).not_to_be_empty(timeout=60_000)
    expect(answer).to_contain_text("Which GPU are you on?")  # the simulated workers echo the prompt
    served = page.get_by_test_id("served-by")
    expect(served).to_have_text(GPU)
    gpu = GPU.search(served.inner_text())
    assert gpu is not None
    why = page.get_by_test_id("why")
    expect(why).not_to_be_empty()
    assert len(why.inner_text().strip()) > 3
    expect(page.get_by_test_id("latency")).to_contain_text("ms")

    # The router's last decisions list it too, newest first, on the same GPU (refreshed every 2 s).
    newest = page.get_by_test_id("decision").first
    expect(newest).to_contain_text(model, timeout=15_000)
    expect(newest).to_contain_text(gpu.group(0))
    # ... and the worker that served it now lists the model's group.
    expect(page.locator('[data-testid="worker"]', has_text=gpu.group(0)).first).not_to_contain_text("none")
    shot(page, "inference")


def test_a_playground_error_reads_clearly(page: Page, console_stack: Any) -> None:
    page.goto(f"{console_stack.api}/#/inference")
    select = page.get_by_test_id("model-select")
    expect(select.locator("option[value]:not([value=''])").first).to_be_attached(timeout=15_000)
    # A model that went away after the list was read: the gateway answers 404 in OpenAI's shape.
    select.evaluate(
        "s => { const o = document.createElement('option'); o.value = o.textContent = 'no-such-model'; s.append(o); }"
    )
    select.select_option("no-such-model")
    page.get_by_test_id("prompt").fill("hello")
    page.get_by_test_id("send").click()
    error = page.get_by_test_id("answer-error")
    expect(error).to_be_visible(timeout=30_000)
    expect(error).to_contain_text("Error 404")
    expect(error).to_contain_text("no-such-model")
    expect(page.get_by_test_id("answer")).to_have_count(0)
