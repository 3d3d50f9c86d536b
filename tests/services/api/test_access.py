"""The gateway's access rules, pure: which route needs what, browsers' marks, credentials, sessions, rates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.api.access import (
    Credentials,
    KeyRecord,
    KeyTable,
    RateLimiter,
    Role,
    SessionCodec,
    bearer,
    content_type_problem,
    cross_site,
    hash_secret,
    host_allowed,
    new_key,
    priority_allowed,
    route_role,
)
from shared.contracts import Priority

NOW = datetime(2026, 12, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    ("method", "path", "metrics_public", "role"),
    [
        ("GET", "/healthz", True, Role.PUBLIC),
        ("GET", "/metrics", True, Role.PUBLIC),
        ("GET", "/metrics", False, Role.ADMIN),
        ("GET", "/", True, Role.PUBLIC),
        ("POST", "/login", True, Role.PUBLIC),
        ("POST", "/v1/chat/completions", True, Role.INFERENCE),
        ("GET", "/v1/models", True, Role.INFERENCE),
        ("GET", "/v1/models/qwen-0.5b", True, Role.INFERENCE),
        ("GET", "/v1/models/org/chat-7b", False, Role.INFERENCE),
        ("GET", "/v1/no-such-thing", True, Role.INFERENCE),
        ("GET", "/api/queue", True, Role.INFERENCE),
        ("POST", "/api/queue", True, Role.ADMIN),
        ("PUT", "/api/system/gpu-config", True, Role.ADMIN),
        ("GET", "/api/system/gpus", True, Role.ADMIN),
        ("GET", "/docs", True, Role.ADMIN),
        ("GET", "/openapi.json", True, Role.ADMIN),
        ("GET", "/api/system/audit", True, Role.ADMIN),
        ("GET", "/a-route-added-later", True, Role.ADMIN),
    ],
)
def test_what_each_route_needs_and_anything_unlisted_needs_the_admin(
    method: str, path: str, metrics_public: bool, role: Role
) -> None:
    assert route_role(method, path, metrics_public=metrics_public) is role


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [
        ("127.0.0.1:8080", frozenset(), True),
        ("localhost:8080", frozenset(), True),
        ("LOCALHOST", frozenset(), True),
        ("[::1]:8080", frozenset(), True),
        ("console.localhost:8080", frozenset(), True),
        ("192.168.1.20:8080", frozenset(), True),
        ("attacker.example", frozenset(), False),
        ("attacker.example:8080", frozenset(), False),
        ("localhost.attacker.example", frozenset(), False),
        ("gpu-box.lan:8080", frozenset({"gpu-box.lan"}), True),
        ("anything.example", frozenset({"*"}), True),
        ("", frozenset(), False),
        (None, frozenset(), False),
    ],
)
def test_host_names_a_rebinding_page_could_use_are_refused(host: str | None, allowed: frozenset[str], ok: bool) -> None:
    assert host_allowed(host, allowed) is ok


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),
        ({"sec-fetch-site": "same-origin"}, False),
        ({"sec-fetch-site": "none"}, False),
        ({"sec-fetch-site": "cross-site"}, True),
        ({"sec-fetch-site": "same-site"}, True),
        ({"origin": "http://localhost:8080"}, False),
        ({"origin": "http://evil.example"}, True),
        ({"origin": "http://localhost:9999"}, True),
        ({"origin": "null"}, True),
    ],
)
def test_what_a_browser_marks_as_sent_by_another_site(headers: dict[str, str], refused: bool) -> None:
    assert (cross_site(headers, "localhost:8080") is not None) is refused


@pytest.mark.parametrize(
    ("content_type", "has_body", "ok"),
    [
        ("application/json", True, True),
        ("application/json; charset=utf-8", True, True),
        ("application/merge-patch+json", True, True),
        (None, False, True),
        (None, True, False),
        ("text/plain", True, False),
        ("text/plain", False, False),
        ("application/x-www-form-urlencoded", True, False),
        ("multipart/form-data; boundary=x", True, False),
    ],
)
def test_mutating_routes_take_json_only(content_type: str | None, has_body: bool, ok: bool) -> None:
    assert (content_type_problem(content_type, has_body) is None) is ok


def key(name: str, secret: str, **kw: object) -> KeyRecord:
    return KeyRecord(name=name, prefix=secret[:12], hash=hash_secret(secret), created_at=NOW, created_by="admin", **kw)


def test_credentials_tell_the_admin_a_key_and_a_stranger_apart() -> None:
    secret, prefix = new_key()
    revoked, _ = new_key()
    table = KeyTable([key("alice", secret), key("gone", revoked, revoked_at=NOW)])
    creds = Credentials("admin-token-0123456789", "admin", table, SessionCodec("admin-token-0123456789", 60))
    assert secret.startswith(prefix) and prefix.startswith("gpk_")
    admin = creds.authenticate("admin-token-0123456789", None, 0.0)
    assert admin is not None and admin.is_admin and admin.name == "admin"
    alice = creds.authenticate(secret, None, 0.0)
    assert alice is not None and alice.kind == "key" and alice.name == "alice" and not alice.is_admin
    assert creds.authenticate(revoked, None, 0.0) is None
    assert creds.authenticate("admin-token-012345678", None, 0.0) is None
    assert creds.authenticate(None, None, 0.0) is None


def test_a_session_is_valid_until_it_expires_and_only_for_its_token() -> None:
    codec = SessionCodec("token-a-0123456789", ttl_s=100)
    cookie = codec.issue(now=1000.0)
    assert codec.valid(cookie, 1099.0)
    assert not codec.valid(cookie, 1100.0)
    assert not SessionCodec("token-b-0123456789", 100).valid(cookie, 1050.0)
    tampered = cookie.replace("v1.1100", "v1.9999")
    assert not codec.valid(tampered, 1050.0)
    assert not codec.valid("garbage", 1050.0)


def test_requests_per_minute_over_a_sliding_window() -> None:
    limiter = RateLimiter()
    assert [limiter.admit("k", 2, t) for t in (0.0, 1.0)] == [None, None]
    wait = limiter.admit("k", 2, 30.0)
    assert wait == pytest.approx(30.0)
    assert limiter.admit("k", 2, 60.0) is None  # the first one left the window
    assert limiter.admit("other", 2, 30.0) is None
    assert all(limiter.admit("free", None, float(t)) is None for t in range(100))


@pytest.mark.parametrize(
    ("asked", "highest", "ok"),
    [
        (Priority.HIGH, None, True),
        (Priority.HIGH, Priority.NORMAL, False),
        (Priority.NORMAL, Priority.NORMAL, True),
        (Priority.LOW, Priority.LOW, True),
        (Priority.NORMAL, Priority.LOW, False),
    ],
)
def test_a_keys_highest_priority(asked: Priority, highest: Priority | None, ok: bool) -> None:
    assert priority_allowed(asked, highest) is ok


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer   abc ", "abc"), ("Basic abc", None), ("Bearer", None), (None, None)],
)
def test_bearer(header: str | None, token: str | None) -> None:
    assert bearer(header) == token
