"""The gateway's door (ASGI middleware): every request passes here before any route runs.

In order: the Host header (DNS rebinding), a browser's cross-site marks and the content type on
mutating routes (CSRF), the body's size, the credential and what it may do, a key's rate, and for
control routes a body any field could take (no NaN, no lone surrogate, no 30-digit integer). The
rules themselves are in ``access.py`` and ``bodies.py``; this file only applies them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

from services.api.access import (
    MUTATING_METHODS,
    SESSION_COOKIE,
    YAML_PATHS,
    YAML_TYPES,
    Principal,
    Role,
    bearer,
    content_type_problem,
    cross_site,
    host_allowed,
    is_inference_path,
    media_type,
    retry_after_header,
    route_role,
)
from services.api.bodies import BodyProblem, parse_json
from services.api.deps import GatewayState
from services.api.metrics import gateway_metrics

log = logging.getLogger("gpuplane.api.guard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ANONYMOUS = Principal("admin", "anonymous")
"""Who every request is with GPUPLANE_AUTH=off."""


class Refusal(Exception):
    """A request turned away at the door: the status, a message and where it went wrong."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        loc: tuple[str | int, ...] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}
        self.loc = loc


OPENAI_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    429: ("rate_limit_error", "rate_limited"),
}


def refusal_body(refusal: Refusal, openai: bool) -> dict[str, Any]:
    """OpenAI's error shape under /v1 (its clients read it), FastAPI's elsewhere."""
    if openai:
        kind, code = OPENAI_TYPES.get(refusal.status, ("invalid_request_error", refusal.reason))
        param = ".".join(str(p) for p in refusal.loc) if refusal.loc else None
        return {"error": {"message": refusal.message, "type": kind, "param": param, "code": code}}
    if refusal.loc is not None:
        return {"detail": [{"loc": ["body", *refusal.loc], "msg": refusal.message, "type": "value_error"}]}
    return {"detail": refusal.message}


async def send_json(send: Send, status: int, body: object, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def scope_header(scope: Scope, name: bytes) -> str | None:
    """One request header (``name`` in lower case), without building them all."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _session(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    try:
        jar: SimpleCookie = SimpleCookie(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None else None


class Guard:
    def __init__(self, app: ASGIApp, state: GatewayState) -> None:
        self.app = app
        self.state = state
        self.metrics = gateway_metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        try:
            receive = await self._admit(scope, receive, _headers(scope))
        except Refusal as refusal:
            self.metrics.refused.labels(refusal.reason).inc()
            await send_json(send, refusal.status, refusal_body(refusal, is_inference_path(path)), refusal.headers)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive, headers: dict[str, str]) -> Receive:
        """Check everything; return the ``receive`` to hand on (the body, read already where it was checked)."""
        state, settings = self.state, self.state.settings
        method: str = scope["method"]
        path: str = scope["path"]
        host = headers.get("host")
        if not host_allowed(host, state.allowed_hosts):
            raise Refusal(
                421,
                "host",
                f"this server does not answer to the host name {host!r}; "
                "if it is yours, add it to GPUPLANE_ALLOWED_HOSTS",
            )
        mutating = method in MUTATING_METHODS
        length = headers.get("content-length")
        has_body = (length is not None and length.strip() not in ("", "0")) or "transfer-encoding" in headers
        if mutating:
            why = cross_site(headers, host)
            if why is not None:
                raise Refusal(403, "cross_site", f"refused: a browser sent this from another site ({why})")
            problem = content_type_problem(headers.get("content-type"), has_body, accepts_yaml=path in YAML_PATHS)
            if problem is not None:
                raise Refusal(415, "content_type", problem)
        openai = is_inference_path(path)
        limit = settings.inference_body_max_bytes if openai else settings.control_body_max_bytes
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            raise Refusal(413, "too_large", f"the body is larger than {limit} bytes, the most this route takes")

        principal = self._authenticate(scope, headers, route_role(method, path, metrics_public=settings.metrics_public))
        if principal is not None:
            scope.setdefault("state", {})["principal"] = principal

        if not has_body or method in ("GET", "HEAD"):
            return receive
        body = await _read_body(receive, limit)
        if body is None:
            raise Refusal(413, "too_large", f"the body is larger than {limit} bytes, the most this route takes")
        if mutating and not openai and body and media_type(headers.get("content-type")) not in YAML_TYPES:
            try:
                parse_json(body)
            except BodyProblem as exc:
                raise Refusal(422, "bad_json", exc.message, loc=exc.loc) from None
        # Kept for the inference fast path, which then need not take it through ``receive`` again.
        scope.setdefault("state", {})["body"] = body
        return _replay(body, receive)

    def _authenticate(self, scope: Scope, headers: dict[str, str], role: Role) -> Principal | None:
        """Who is asking; ``Refusal`` when the route needs more than that. Public routes learn who asks, if anyone."""
        state = self.state
        credentials = state.credentials
        if credentials is None:
            return ANONYMOUS
        token = bearer(headers.get("authorization"))
        session = _session(headers.get("cookie"))
        principal = credentials.authenticate(token, session, state.clock())
        if role is Role.PUBLIC:
            return principal
        address = scope["client"][0] if scope.get("client") else None
        if principal is None:
            presented = token is not None or session is not None
            if presented:
                state.audit.auth_failure(address, scope["path"], "invalid token" if token else "expired session")
            raise Refusal(
                401,
                "unauthenticated",
                (
                    "that credential is not valid (a wrong token, a revoked key or an expired session); "
                    if presented
                    else "a credential is needed: "
                )
                + "send 'Authorization: Bearer <admin token or inference key>'",
                headers={"WWW-Authenticate": 'Bearer realm="gpuplane"'},
            )
        if role is Role.ADMIN and not principal.is_admin:
            raise Refusal(403, "forbidden", f"key {principal.name!r} may only call /v1; this needs the admin token")
        if principal.key is not None:
            wait = state.limiter.admit(principal.name, principal.key.rpm_limit, state.clock())
            if wait is not None:
                self.metrics.key_requests.labels(principal.name, "limited").inc()
                raise Refusal(
                    429,
                    "rate_limited",
                    f"key {principal.name!r} is over its limit of {principal.key.rpm_limit} requests a minute",
                    headers={"Retry-After": retry_after_header(wait)},
                )
        return principal


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` bytes (a chunked body has no length to check first)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then whatever comes next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
