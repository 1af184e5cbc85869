"""Who may look and who may act: the access token, the CSRF token, response headers.

With a token, every request needs it: the ``Authorization: Bearer`` header (scripts) or
the cookie the login form sets (browsers; it holds a MAC of the token, never the token).
Every state-changing request is a POST carrying the CSRF token of its session: a MAC,
under a secret drawn at start, of a random session id kept in a SameSite=Strict cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlencode

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp

SESSION_COOKIE = "saga_fsm_session"
AUTH_COOKIE = "saga_fsm_auth"
CSRF_FIELD = "csrf_token"
# Pages need no inline script or style and nothing from elsewhere.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_OPEN_PATHS = ("/login", "/static/")  # what a visitor without the token may load


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """The secrets of one console process."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._secret = secrets.token_bytes(32)

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def auth_cookie(self) -> str:
        assert self.token is not None
        return self._mac("auth", self.token)

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), self.token.encode()
        )

    def authenticated(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(given.strip()):
            return True
        cookie = request.cookies.get(AUTH_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.auth_cookie().encode())

    def csrf_token(self, request: Request) -> str:
        session: str = request.state.session
        return self._mac("csrf", session)

    async def csrf_ok(self, request: Request) -> bool:
        form = await request.form()
        given = form.get(CSRF_FIELD)
        return isinstance(given, str) and hmac.compare_digest(
            given.encode(), self.csrf_token(request).encode()
        )


class GuardMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        super().__init__(app)
        self.guard = guard

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        session = request.cookies.get(SESSION_COOKIE)
        new_session = session is None or len(session) != 43
        request.state.session = secrets.token_urlsafe(32) if new_session else session
        path = request.url.path
        response: Response
        if self.guard.authenticated(request) or path.startswith(_OPEN_PATHS):
            response = await call_next(request)
        elif "authorization" in request.headers:
            response = PlainTextResponse("saga-fsm ui: wrong token", status_code=401)
        else:
            target = path + (f"?{request.url.query}" if request.url.query else "")
            response = RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        response.headers.update(HEADERS)
        if new_session:
            response.set_cookie(
                SESSION_COOKIE, request.state.session, httponly=True, samesite="strict"
            )
        return response


def safe_next(target: str | None) -> str:
    """Only a path on this site: never ``//elsewhere`` or ``https://elsewhere``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
