"""Who may call what, and which requests a browser must not be tricked into sending: the gateway's
access rules as pure functions and small classes (no I/O; time is passed in).

``services/api/guard.py`` applies them to every HTTP request before it reaches a route.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import secrets
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

from shared.contracts import Priority

# --------------------------------------------------------------------------- routes


class Role(StrEnum):
    """What a route needs."""

    PUBLIC = "public"
    """Nothing: /healthz, /metrics (unless GPUPLANE_METRICS_PUBLIC=false), the console's login page."""
    INFERENCE = "inference"
    """An inference key or the admin token: /v1 and the router's read-only views."""
    ADMIN = "admin"
    """The admin token (or the console's session): everything else, every change of state among it."""


MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
INFERENCE_READS = frozenset({"/api/gpu_stats", "/api/models", "/api/queue"})
"""Read-only views of the router that older clients poll with the key they use for /v1."""
CONSOLE_PUBLIC = frozenset({"/", "/login", "/logout"})
"""The console's door: ``/`` shows the login form until there is a session."""
CONSOLE_ASSETS = "/console/"
"""The console's static files (HTML, CSS, scripts: no data), public so the login page can load them."""


def is_inference_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def route_role(method: str, path: str, *, metrics_public: bool) -> Role:
    """The role ``method path`` needs. Anything not named here needs the admin token (fail closed)."""
    if path == "/healthz" or path in CONSOLE_PUBLIC:
        return Role.PUBLIC
    if method in ("GET", "HEAD") and path.startswith(CONSOLE_ASSETS):
        return Role.PUBLIC
    if path == "/metrics":
        return Role.PUBLIC if metrics_public else Role.ADMIN
    if is_inference_path(path):
        return Role.INFERENCE
    if method in ("GET", "HEAD") and path in INFERENCE_READS:
        return Role.INFERENCE
    return Role.ADMIN


# --------------------------------------------------------------------------- browsers

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without port or IPv6 brackets, lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, _, _ = value.partition(":")
    return name.rstrip(".")


@functools.lru_cache(maxsize=256)
def host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request naming ``header`` as its Host may be served.

    DNS rebinding makes a browser send a page's requests to 127.0.0.1 under the attacker's own name;
    refusing names we do not know stops it. IP addresses cannot be rebound, so any is fine, as are the
    loopback names and the names in ``GPUPLANE_ALLOWED_HOSTS`` (``*`` allows every name).
    """
    if not header:
        return False
    name = host_name(header)
    if not name:
        return False
    if name in LOOPBACK_NAMES or name.endswith(".localhost") or name in allowed or "*" in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def cross_site(headers: Mapping[str, str], host: str | None) -> str | None:
    """Why a browser marks this request as sent by another site (refused on mutating routes), or None.

    ``Sec-Fetch-Site`` is set by every current browser and cannot be forged by a page; ``Origin`` is
    checked for older ones. Requests from scripts and curl carry neither and pass.
    """
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site is {site}"
    origin = headers.get("origin")
    if origin is None:
        return None
    if origin.strip().lower() == "null":
        return "Origin is null (a sandboxed page or a file)"
    netloc = urlsplit(origin.strip()).netloc.lower()
    if not host or netloc != host.strip().lower():
        return f"Origin {origin} is not this server"
    return None


YAML_PATHS = frozenset({"/api/system/backup/restore"})
"""Routes that take a YAML document (a backup file). ``application/yaml`` is no type a page on another
site can send without the browser asking first, so it is as safe here as JSON."""
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def content_type_problem(content_type: str | None, has_body: bool, *, accepts_yaml: bool = False) -> str | None:
    """Mutating routes take only JSON (and the backup route YAML): a form or ``text/plain`` (what a page
    can send anywhere without asking) is refused. A request with no body at all needs no type."""
    wanted = "application/json or application/yaml" if accepts_yaml else "application/json"
    if content_type is None:
        return f"a request with a body must say Content-Type: {wanted}" if has_body else None
    media = media_type(content_type)
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return None
    if accepts_yaml and media in YAML_TYPES:
        return None
    return f"Content-Type {media or '(empty)'} is not accepted here: send {wanted}"


# --------------------------------------------------------------------------- credentials

KEY_PREFIX = "gpk_"
KEY_ID_CHARS = 8
"""Characters after ``gpk_`` kept in clear, so a listed key can be recognised."""


def hash_secret(secret: str) -> str:
    """SHA-256 of a key: keys are 256 random bits, so a fast hash is as strong as a slow one."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A new inference key and the part of it that may be shown again (``gpk_`` and 8 characters)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, secret[: len(KEY_PREFIX) + KEY_ID_CHARS]


@dataclass(frozen=True)
class KeyRecord:
    """An inference key as stored: never the key itself, only its hash."""

    name: str
    prefix: str
    hash: str
    created_at: datetime
    created_by: str
    max_priority: Priority | None = None
    """The highest priority its requests may ask for (None: any)."""
    rpm_limit: int | None = None
    """Requests per minute (None: no limit)."""
    revoked_at: datetime | None = None


PRIORITY_ORDER = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}


def priority_allowed(asked: Priority, highest: Priority | None) -> bool:
    return highest is None or PRIORITY_ORDER[asked] <= PRIORITY_ORDER[highest]


@dataclass(frozen=True)
class Principal:
    """Who sent a request."""

    kind: Literal["admin", "session", "key"]
    name: str
    """The admin token's name (``GPUPLANE_API_TOKEN_NAME``) or the key's name."""
    key: KeyRecord | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind in ("admin", "session")


class KeyTable:
    """The live inference keys, by hash (what the gateway checks every /v1 request against)."""

    def __init__(self, records: Iterable[KeyRecord] = ()) -> None:
        self._by_hash: dict[str, KeyRecord] = {}
        self.replace(records)

    def replace(self, records: Iterable[KeyRecord]) -> None:
        self._by_hash = {r.hash: r for r in records if r.revoked_at is None}

    def records(self) -> list[KeyRecord]:
        return list(self._by_hash.values())

    def find(self, secret: str) -> KeyRecord | None:
        return self._by_hash.get(hash_secret(secret)) if secret.startswith(KEY_PREFIX) else None

    def __len__(self) -> int:
        return len(self._by_hash)


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


@dataclass(frozen=True)
class Credentials:
    """Checks what a request presents: the admin token (constant-time), an inference key, a session."""

    admin_token: str
    admin_name: str
    keys: KeyTable
    sessions: SessionCodec

    def authenticate(self, token: str | None, session: str | None, now: float) -> Principal | None:
        if token is not None:
            if hmac.compare_digest(token.encode(), self.admin_token.encode()):
                return Principal("admin", self.admin_name)
            record = self.keys.find(token)
            return Principal("key", record.name, record) if record is not None else None
        if session is not None and self.sessions.valid(session, now):
            return Principal("session", self.admin_name)
        return None


# --------------------------------------------------------------------------- sessions

SESSION_COOKIE = "gpuplane_session"


@dataclass(frozen=True)
class SessionCodec:
    """The console's session cookie: an expiry signed with a key derived from the admin token.

    Nothing is stored server-side, so every gateway accepts it; rotating the admin token ends every
    session at once.
    """

    admin_token: str
    ttl_s: float

    def _sign(self, payload: str) -> str:
        key = hashlib.sha256(b"gpuplane-session\0" + self.admin_token.encode()).digest()
        return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float) -> str:
        payload = f"v1.{int(now + self.ttl_s)}"
        return f"{payload}.{self._sign(payload)}"

    def valid(self, value: str, now: float) -> bool:
        payload, _, signature = value.rpartition(".")
        version, _, expires = payload.partition(".")
        if version != "v1" or not expires.isdigit():
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        return now < int(expires)


# --------------------------------------------------------------------------- limits


@dataclass
class RateLimiter:
    """Requests per minute per key, over a sliding 60 s window."""

    window_s: float = 60.0
    _seen: dict[str, deque[float]] = field(default_factory=dict)

    def admit(self, key: str, per_minute: int | None, now: float) -> float | None:
        """None if the request may go now (and count it), else the seconds until it may."""
        if per_minute is None:
            return None
        seen = self._seen.setdefault(key, deque())
        while seen and now - seen[0] >= self.window_s:
            seen.popleft()
        if len(seen) >= per_minute:
            return max(0.001, self.window_s - (now - seen[0]))
        seen.append(now)
        return None


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
