"""The console: ``/`` serves the signed-in page (or the login page), ``/console/*`` its static files,
``/login`` and ``/logout`` the session.

The page is plain HTML, CSS and ES modules in ``services/api/console/static`` (no build step, no CDN).
Everything it shows comes from the same API a script uses, plus ``/api/events``; the session is an
HttpOnly, SameSite=Strict cookie (Secure over TLS) signed with a key derived from the admin token.
"""

from __future__ import annotations

import html
import re
from functools import cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from services.api.access import SESSION_COOKIE, Credentials, Principal
from services.api.deps import StateDep, client_address
from services.api.schemas import LoginIn
from shared.contracts import AuditAction

router = APIRouter(tags=["console"], include_in_schema=False)

STATIC = Path(__file__).resolve().parents[1] / "console" / "static"
ASSET_NAME = re.compile(r"^(?:[a-z0-9_-]+/)?[a-z0-9_-]+\.(?:js|css|svg|html)$")
"""A static file's path: one optional folder, lower-case names; nothing can climb out of STATIC."""
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@cache
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _page(name: str, status: int = 200, **fields: str) -> HTMLResponse:
    text = _asset(name).decode()
    for key, value in fields.items():
        text = text.replace("{" + key + "}", html.escape(value))
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _start_session(response: Response, credentials: Credentials, state: StateDep, request: Request) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        credentials.sessions.issue(state.clock()),
        max_age=int(state.settings.session_ttl_s),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def _who(request: Request) -> Principal | None:
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    return principal


@router.get("/")
async def home(
    request: Request,
    state: StateDep,
    token: Annotated[str | None, Query(max_length=4096)] = None,
) -> Response:
    """The console, or the login page. ``?token=`` signs in and leaves the token out of the address."""
    credentials = state.credentials
    if credentials is None:
        return _page("index.html", who="anonymous (GPUPLANE_AUTH=off)")
    if token is not None:
        who = credentials.authenticate(token, None, state.clock())
        if who is None or not who.is_admin:
            state.audit.auth_failure(client_address(request), "/", "invalid token in the login link")
            return _page("login.html", status=401, error="That link's token is not valid (any more).")
        state.audit.record(AuditAction.LOGIN, who, client_address(request), target={"via": "link"})
        redirect = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        _start_session(redirect, credentials, state, request)
        return redirect
    who = _who(request)
    if who is not None and who.is_admin:
        return _page("index.html", who=who.name)
    return _page("login.html", error="")


@router.get("/console/{name:path}")
async def asset(name: str) -> Response:
    """The console's static files (public: they hold no data)."""
    if not ASSET_NAME.match(name) or not (STATIC / name).is_file():
        raise HTTPException(status_code=404, detail=f"no console file {name[:80]!r}")
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return Response(_asset(name), media_type=MEDIA_TYPES[Path(name).suffix], headers=headers)


@router.post("/login", status_code=204, responses={401: {"description": "Not the admin token."}})
async def login(body: LoginIn, request: Request, state: StateDep) -> Response:
    """Sign in with the admin token (the console's form): sets the session cookie."""
    credentials = state.credentials
    if credentials is None:
        return Response(status_code=204)
    who = credentials.authenticate(body.token, None, state.clock())
    if who is None or not who.is_admin:
        state.audit.auth_failure(client_address(request), "/login", "invalid token")
        return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="gpuplane"'})
    state.audit.record(AuditAction.LOGIN, who, client_address(request), target={"via": "form"})
    response = Response(status_code=204)
    _start_session(response, credentials, state, request)
    return response


@router.post("/logout", status_code=204)
async def logout() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
