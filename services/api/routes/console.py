"""The console's door: ``/`` logs in with the admin token (the banner's ``?token=`` link, or a form), ``/logout``.

The session is an HttpOnly, SameSite=Strict cookie (Secure over TLS) signed with a key derived from the
admin token; everything the console shows comes from the same API a script uses.
"""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from services.api.access import SESSION_COOKIE, Credentials, Principal
from services.api.deps import StateDep, client_address
from services.api.schemas import LoginIn
from shared.contracts import AuditAction

router = APIRouter(tags=["console"], include_in_schema=False)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpuplane</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}
input{{font:inherit;padding:.4rem;width:100%;box-sizing:border-box}}
button{{font:inherit;padding:.4rem 1rem;margin-top:.6rem}}
.error{{color:#b00020}}code{{background:#f3f3f3;padding:0 .2rem}}</style></head>
<body><h1>gpuplane</h1>{body}<script src="/login.js"></script></body></html>
"""

LOGIN = """<p>Sign in with the admin token: the link <code>gpuplane up</code> printed opens this page signed in,
or paste the token from <code>.gpuplane/secrets/admin-token</code>.</p>
<form id="login"><label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form><p id="error" class="error">{error}</p>"""

SIGNED_IN = """<p>Signed in as <strong>{name}</strong>.</p>
<ul><li><a href="/docs">The API</a> (every action, with its schema)</li>
<li><a href="/api/system/gpus">GPUs</a>, <a href="/api/system/gpu-config">GPU configuration</a>,
<a href="/api/system/gpu-config/status">apply status</a>, <a href="/api/queue">inference queue</a></li>
<li><a href="/api/system/audit">Audit trail</a>, <a href="/api/system/keys">inference keys</a></li>
<li><a href="/healthz">Health</a></li></ul>
<button id="logout" type="button">Sign out</button>"""

SCRIPT = """"use strict";
const form = document.getElementById("login");
if (form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = document.getElementById("token").value.trim();
    const answer = await fetch("/login", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({token}),
    });
    if (answer.ok) { location.replace("/"); return; }
    document.getElementById("error").textContent = "That is not the admin token.";
  });
}
const logout = document.getElementById("logout");
if (logout) {
  logout.addEventListener("click", async () => {
    await fetch("/logout", {method: "POST"});
    location.replace("/");
  });
}
"""


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(body=body), status_code=status, headers=SECURITY_HEADERS)


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
    """The login page, or (signed in) where to go. ``?token=`` signs in and leaves the token out of the address."""
    credentials = state.credentials
    if credentials is None:
        return _page(SIGNED_IN.format(name="anonymous (GPUPLANE_AUTH=off)"))
    if token is not None:
        who = credentials.authenticate(token, None, state.clock())
        if who is None or not who.is_admin:
            state.audit.auth_failure(client_address(request), "/", "invalid token in the login link")
            return _page(LOGIN.format(error="That link's token is not valid (any more)."), status=401)
        state.audit.record(AuditAction.LOGIN, who, client_address(request), target={"via": "link"})
        redirect = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
        _start_session(redirect, credentials, state, request)
        return redirect
    who = _who(request)
    if who is not None and who.is_admin:
        return _page(SIGNED_IN.format(name=html.escape(who.name)))
    return _page(LOGIN.format(error=""))


@router.get("/login.js")
async def script() -> Response:
    return Response(SCRIPT, media_type="text/javascript", headers={"X-Content-Type-Options": "nosniff"})


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
