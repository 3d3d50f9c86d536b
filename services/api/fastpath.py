"""The /v1 inference routes answered straight from ASGI, inside the guard and telemetry, around FastAPI's routing.

The work per request is ``routes.inference.reply``, the same as the FastAPI routes do; what this skips is
what every request would otherwise pay for FastAPI's machinery (route matching over every route, dependency
solving, three exception middlewares, Starlette's response objects and its streaming task group): about a
third of the gateway's CPU per request. The FastAPI routes stay registered for the OpenAPI document and for
anything this does not take (another method on these paths).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.routing import BaseRoute

from services.api.access import Principal
from services.api.deps import GatewayState
from services.api.guard import ASGIApp, Message, Receive, Scope, Send, scope_header
from services.api.routes.inference import PRIORITY_HEADER, Reply, error_response, reply
from shared.contracts import InferenceKind
from shared.errors import BusUnavailable, GpuplaneError

log = logging.getLogger("gpuplane.api.inference")

KINDS = {
    "/v1/chat/completions": InferenceKind.CHAT,
    "/v1/completions": InferenceKind.COMPLETION,
    "/v1/embeddings": InferenceKind.EMBEDDING,
}
PRIORITY_KEY = PRIORITY_HEADER.lower().encode()
JSON_TYPE = (b"content-type", b"application/json")
SSE_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")


def _encoded(headers: dict[str, str], content_type: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    out = [content_type]
    out.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    return out


class InferenceFastPath:
    """ASGI middleware: POST /v1/chat/completions, /v1/completions and /v1/embeddings."""

    def __init__(self, app: ASGIApp, *, state: GatewayState, routes: list[BaseRoute]) -> None:
        self.app = app
        self.state = state
        # The FastAPI route of each path, so the HTTP metrics and spans name it as they would.
        self.routes = {r.path: r for r in routes if getattr(r, "path", None) in KINDS and "POST" in r.methods}  # type: ignore[attr-defined]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = KINDS.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if kind is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes.get(scope["path"])
        state = self.state
        try:
            plane = state.dataplane
            if plane is None:
                raise BusUnavailable("the gateway is not connected to NATS yet, so it knows no workers")
            principal: Principal | None = scope.get("state", {}).get("principal")
            if principal is None:
                raise RuntimeError("an inference path was reached without a credential: check access.route_role")
            raw = scope["state"].get("body")
            if raw is None:
                raw = await _body(receive)
            answer = await reply(kind, raw, state, plane, principal, scope_header(scope, PRIORITY_KEY))
        except GpuplaneError as exc:
            response = error_response(exc, state.settings.retry_after_s)
            if response.status_code >= 500:
                log.warning("%s %s: %d %s", scope["method"], scope["path"], response.status_code, exc)
            await response(scope, receive, send)
            return
        if answer.events is None:
            await send({"type": "http.response.start", "status": 200, "headers": _encoded(answer.headers, JSON_TYPE)})
            await send({"type": "http.response.body", "body": answer.body})
            return
        await _stream(answer, receive, send)


async def _stream(answer: Reply, receive: Receive, send: Send) -> None:
    """Send the events as they come; a client that leaves cancels the request, at the engine too."""
    assert answer.events is not None
    left = asyncio.ensure_future(_disconnected(receive))
    request = answer.request
    if request is not None:
        # Leaving calls the request off at once, at the engine too (an LLM stops generating for nobody); the
        # request's end then ends the events.
        left.add_done_callback(lambda watch: watch.cancelled() or request.cancel())
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _encoded(answer.headers, SSE_TYPE)})
        async for event in answer.events:
            if left.done():
                break
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if not left.done():
            await send({"type": "http.response.body", "body": b""})
    except OSError:
        pass  # the client went away while a chunk was on its way
    finally:
        left.cancel()


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _body(receive: Receive) -> bytes:
    """The request body (the guard has read it already and hands it over in one message)."""
    parts: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)
