"""/api/events: the console's live view, as server-sent events (admin only, like every page behind it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from services.api.deps import StateDep
from services.api.events import EVENT_KINDS, EventHub, Subscription, TooManyStreams, sse_frame

router = APIRouter(prefix="/api", tags=["events"])

KEEPALIVE_S = 15.0
"""A comment this often keeps proxies from closing an idle stream and shows a dead client quickly."""


async def _frames(hub: EventHub, subscription: Subscription) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 2000\n\n" + sse_frame("ready", json.dumps({"kinds": list(EVENT_KINDS)}))
        while True:
            item = await subscription.next(KEEPALIVE_S)
            yield b": keepalive\n\n" if item is None else sse_frame(*item)
    finally:
        hub.close(subscription)


@router.get(
    "/events",
    summary="Live events (server-sent events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 503: {"description": "Too many streams are open."}},
)
async def events(state: StateDep) -> StreamingResponse:
    """The NATS events the console shows, as they happen: ``inventory``, ``gpu_health``, ``config``,
    ``progress`` (apply runs), ``worker`` and ``audit``; each ``data`` is the event's JSON contract.
    ``resync`` means events were missed: re-read over HTTP."""
    try:
        subscription = state.events.open()
    except TooManyStreams as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_frames(state.events, subscription), media_type="text/event-stream", headers=headers)
