"""The dashboard's door: every route but the login and ``/healthz`` needs a user.

A request is someone's by its session cookie (``edgecap_session``: HttpOnly, SameSite=Strict,
Secure behind TLS; set by ``POST /api/login``) or by an API token (``Authorization: Bearer …``,
for scripts). A request that changes something (any method but GET and HEAD) on a cookie must
carry the session's CSRF token in ``X-CSRF-Token`` (``GET /api/session`` gives it to the page), so
another site cannot make a logged-in browser act; a bearer token needs none (a browser never adds
one by itself). Admin-only routes depend on :func:`admin`. Anonymous requests get 401 (a page
request is sent to ``/login``). Failed logins are limited per user name and per client address
(``login_rate``, the ``limits`` library's moving window in memory: per dashboard process).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from cloud.dashboard.accounts import Accounts, User
from cloud.settings import DashboardSettings

log = logging.getLogger(__name__)

COOKIE = "edgecap_session"
CSRF_HEADER = "x-csrf-token"
PUBLIC = frozenset({"/login", "/api/login", "/healthz"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    """Who made a request, and how."""

    user: User
    via: str  # "session" or "token"
    csrf_token: str | None = None


class LoginLimiter:
    """Failed logins per key in a moving window (``limits``); a key over its limit is refused."""

    def __init__(self, rate: str) -> None:
        from limits import parse
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.item = parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def allowed(self, *keys: str) -> bool:
        return all(self.limiter.test(self.item, "login", key) for key in keys)

    def failed(self, *keys: str) -> None:
        for key in keys:
            self.limiter.hit(self.item, "login", key)

    def retry_after_s(self, *keys: str) -> int:
        reset = max(self.limiter.get_window_stats(self.item, "login", key).reset_time for key in keys)
        import time

        return max(1, int(reset - time.time()) + 1)


class Door:
    """Authentication for one dashboard app: the guard every route depends on, and the login routes."""

    def __init__(self, settings: DashboardSettings, accounts: Accounts) -> None:
        self.settings = settings
        self.accounts = accounts
        self.limiter = LoginLimiter(settings.login_rate)
        self.counts = {"logins": 0, "login_failures": 0, "login_throttled": 0, "refused": 0}

    def caller(self, request: Request) -> Caller | None:
        """Who the request is from, or None."""
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            user = self.accounts.token_user(header[7:].strip())
            return Caller(user, "token") if user is not None else None
        token = request.cookies.get(COOKIE)
        if token:
            session = self.accounts.session(token)
            if session is not None:
                return Caller(session.user, "session", session.csrf_token)
        return None

    def guard(self, request: Request) -> Caller | None:
        """The app-wide dependency: who calls (None on public routes), or 401/403."""
        if request.url.path in PUBLIC:
            return None
        caller = self.caller(request)
        if caller is None:
            self.counts["refused"] += 1
            raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Bearer"})
        if caller.via == "session" and request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not caller.csrf_token or not secrets.compare_digest(sent, caller.csrf_token):
                self.counts["refused"] += 1
                raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header")
        request.state.caller = caller
        return caller

    def login(self, request: Request, body: dict[str, Any]) -> Response:
        username, password = str(body.get("username", "")), str(body.get("password", ""))
        client = request.client.host if request.client else "unknown"
        keys = (f"user:{username.lower()}", f"ip:{client}")
        if not self.limiter.allowed(*keys):
            self.counts["login_throttled"] += 1
            wait = self.limiter.retry_after_s(*keys)
            log.warning("login for %r from %s refused: too many failures (retry in %d s)", username, client, wait)
            return JSONResponse({"detail": "too many failed logins: try again later"}, status_code=429,
                                headers={"Retry-After": str(wait)})  # fmt: skip
        user = self.accounts.verify(username, password)
        if user is None:
            self.limiter.failed(*keys)
            self.counts["login_failures"] += 1
            log.warning("failed login for %r from %s", username, client)
            return JSONResponse({"detail": "wrong user name or password"}, status_code=401)
        token, session = self.accounts.open_session(user, self.settings.session_ttl_s)
        self.counts["logins"] += 1
        log.info("%s (%s) logged in from %s", user.username, user.role, client)
        response = JSONResponse({"username": user.username, "role": user.role, "csrf_token": session.csrf_token})
        response.set_cookie(COOKIE, token, max_age=int(self.settings.session_ttl_s), httponly=True,
                            samesite="strict", secure=self.settings.secure_cookies, path="/")  # fmt: skip
        return response

    def logout(self, request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        if token:
            self.accounts.close_session(token)
        response = JSONResponse({"status": "logged out"})
        response.delete_cookie(COOKIE, path="/")
        return response


def caller_of(request: Request) -> Caller:
    """The guard's caller (routes behind the guard only)."""
    caller: Caller = request.state.caller
    return caller


def admin(caller: Caller = Depends(caller_of)) -> Caller:  # noqa: B008 - FastAPI's dependency idiom
    """A dependency for admin-only routes: 403 for a viewer."""
    if not caller.user.admin:
        raise HTTPException(403, "admins only")
    return caller
