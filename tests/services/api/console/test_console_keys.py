"""The console's Keys & audit page in a real browser against `gpuplane up`: a key is shown once, listed by
its prefix, works on /v1, is revoked (then refused); the audit trail lists it newest first and filters by
action. And signing in: the banner's link, a wrong token, signing out."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def key_row(page: Page, name: str) -> Any:
    return page.locator(f'[data-testid="key"][data-name="{name}"]')


def test_the_login_link_signs_in_a_wrong_token_is_refused_and_sign_out_works(browser: Any, console_stack: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(console_stack.login_url)
        expect(page.locator("main#view[data-page]")).to_be_visible()
        assert "token" not in page.url, page.url
        page.goto(f"{console_stack.api}/#/keys")
        expect(page.locator("main#view[data-page='keys']")).to_be_visible()

        page.get_by_role("button", name="Sign out").click()
        expect(page.locator("form#login")).to_be_visible()
        page.goto(f"{console_stack.api}/#/keys")  # signed out: the console is not shown
        expect(page.locator("form#login")).to_be_visible()

        page.get_by_label("Admin token").fill(f"wrong-{uuid.uuid4().hex}")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#error")).to_have_text(re.compile("not the admin token|Too many attempts"))
        expect(page.locator("form#login")).to_be_visible()

        page.get_by_label("Admin token").fill(console_stack.token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("main#view[data-page]")).to_be_visible()
        assert "token" not in page.url
    finally:
        context.close()


def test_a_key_is_shown_once_works_and_once_revoked_is_refused(page: Page, console_stack: Any, shot: Any) -> None:
    name = f"pw-{uuid.uuid4().hex[:8]}"
    page.goto(f"{console_stack.api}/#/keys")
    expect(page).to_have_title(re.compile("^Keys & audit"))
    page.get_by_test_id("key-name").fill(name)
    page.get_by_label("Requests per minute").fill("600")
    page.get_by_test_id("key-create").click()

    secret_box = page.get_by_test_id("new-key")
    expect(secret_box).to_be_visible()
    expect(page.get_by_test_id("key-created")).to_contain_text("it is not shown again")
    secret = secret_box.inner_text().strip()
    assert len(secret) >= 20

    # Listed by its prefix, never the key itself.
    row = key_row(page, name)
    expect(row).to_have_attribute("data-state", "live")
    prefix = row.get_by_test_id("key-prefix").inner_text().rstrip("…")
    assert prefix and secret.startswith(prefix) and len(prefix) < len(secret)
    expect(row).to_contain_text("600")
    listed = console_stack.http.get("/api/system/keys").json()["keys"]
    assert any(k["name"] == name and k["prefix"] == prefix for k in listed)

    expect(page.locator('[data-testid="audit-record"][data-action="key_create"]', has_text=name)).to_have_count(1)
    shot(page, "keys-audit")

    # The key works on /v1.
    ok = httpx.get(f"{console_stack.api}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert ok.status_code == 200, ok.text

    # A second live key of that name is refused, at the name field.
    page.get_by_test_id("key-name").fill(name)
    page.get_by_test_id("key-create").click()
    expect(page.locator("#key-name-error")).not_to_be_empty()
    expect(page.get_by_test_id("key-name")).to_have_attribute("aria-invalid", "true")

    # The audit trail shows the creation, newest first.
    newest = page.get_by_test_id("audit-record").first
    expect(newest).to_have_attribute("data-action", re.compile("key_create|auth_failure"))
    creation = page.locator('[data-testid="audit-record"][data-action="key_create"]', has_text=name)
    expect(creation).to_have_count(1)

    # Revoke it (confirmed first); it is then refused.
    row.get_by_test_id("revoke").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text(name)
    page.get_by_test_id("revoke-cancel").click()  # cancelling changes nothing
    expect(row).to_have_attribute("data-state", "live")
    row.get_by_test_id("revoke").click()
    page.get_by_test_id("revoke-confirm").click()
    expect(row).to_have_attribute("data-state", "revoked")
    expect(row.get_by_test_id("revoke")).to_have_count(0)
    refused = httpx.get(f"{console_stack.api}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert refused.status_code == 401, refused.text
    expect(page.locator('[data-testid="audit-record"][data-action="key_revoke"]', has_text=name)).to_have_count(1)

    # The key is not shown again: not after a reload, not anywhere on the page.
    page.reload()
    expect(key_row(page, name)).to_have_attribute("data-state", "revoked")
    expect(page.get_by_test_id("new-key")).to_have_count(0)
    assert secret not in page.content()


def wait_for_audit(console_stack: Any, names: list[str]) -> None:
    """Until the audit trail holds a record naming each of `names` (the gateway writes them in the background)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = console_stack.http.get("/api/system/audit", params={"limit": 500}).text
        if all(n in text for n in names):
            return
        time.sleep(0.1)
    raise AssertionError(f"the audit trail does not name {names}")


def test_the_audit_trail_filters_by_action_and_pages_back(page: Page, console_stack: Any) -> None:
    names = [f"pw-audit-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    for name in names:
        assert console_stack.http.post("/api/system/keys", json={"name": name}).status_code == 201
    wait_for_audit(console_stack, names)
    page.goto(f"{console_stack.api}/#/keys")
    records = page.get_by_test_id("audit-record")
    expect(records.filter(has_text=names[0])).to_have_count(1)

    # Newest first: the last key made is above the first.
    texts = [t for t in records.all_inner_texts() if any(n in t for n in names)]
    assert [next(n for n in names if n in t) for t in texts] == names[::-1], texts

    others = page.locator('[data-testid="audit-record"]:not([data-action="key_create"])')
    expect(others).not_to_have_count(0)  # sign-ins at least
    page.get_by_test_id("audit-filter").select_option("key_create")
    expect(others).to_have_count(0)
    expect(records.filter(has_text=names[0])).to_have_count(1)

    # A live event of another action is not prepended while the filter excludes it...
    console_stack.http.delete(f"/api/system/keys/{names[0]}").raise_for_status()
    # ... but a key_create is (the `audit` event, without a reload).
    live = f"pw-live-{uuid.uuid4().hex[:6]}"
    assert console_stack.http.post("/api/system/keys", json={"name": live}).status_code == 201
    expect(records.first).to_contain_text(live, timeout=10_000)
    expect(others).to_have_count(0)

    page.get_by_test_id("audit-filter").select_option("key_revoke")
    expect(records.first).to_contain_text(names[0])
    page.get_by_test_id("audit-filter").select_option("")
    expect(records.first).to_contain_text(live)


def key_creations(console_stack: Any) -> int:
    page = console_stack.http.get("/api/system/audit", params={"limit": 500, "action": "key_create"}).json()
    return len(page["records"])


def test_older_pages_the_audit_trail(page: Page, console_stack: Any) -> None:
    wanted = 55  # more than one page (50), whatever earlier tests left
    for i in range(max(0, wanted - key_creations(console_stack))):
        assert console_stack.http.post("/api/system/keys", json={"name": f"pw-page-{i}"}).status_code == 201
    deadline = time.monotonic() + 10  # the gateway writes audit records in the background
    while key_creations(console_stack) < wanted and time.monotonic() < deadline:
        time.sleep(0.1)
    total = key_creations(console_stack)
    assert total >= wanted

    page.goto(f"{console_stack.api}/#/keys")
    page.get_by_test_id("audit-filter").select_option("key_create")
    records = page.get_by_test_id("audit-record")
    expect(records).to_have_count(50)
    older = page.get_by_test_id("audit-older")
    expect(older).to_be_visible()
    first_page = records.evaluate_all("rows => rows.map(r => Number(r.dataset.id))")
    older.click()
    expect(records).to_have_count(total)
    expect(older).to_be_hidden()
    ids = records.evaluate_all("rows => rows.map(r => Number(r.dataset.id))")
    assert ids[:50] == first_page and ids == sorted(ids, reverse=True) and len(set(ids)) == total
