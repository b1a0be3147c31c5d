"""Who may read the dashboard: every route refuses an anonymous request; sessions, CSRF, roles, API
tokens and the login rate limit, over the real app and a real SQLite store."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import PASSWORD, dashboard_user

from cloud.dashboard import create_app
from cloud.dashboard.__main__ import main as dashboard_main
from cloud.dashboard.access import COOKIE, PUBLIC
from cloud.dashboard.accounts import AccountError, Accounts
from cloud.settings import DashboardSettings
from cloud.store import Store
from cloud.tables import dashboard_sessions, dashboard_users


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


def app_of(store: Store, **settings: object) -> TestClient:
    return TestClient(create_app(DashboardSettings(store_url="sqlite://", **settings), store))  # type: ignore[arg-type]


def test_every_route_refuses_an_anonymous_request(store: Store) -> None:
    client = app_of(store)
    routes = [r for r in client.app.routes if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
    checked = 0
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in route.methods:
            answer = client.request(method, path)
            if route.path in PUBLIC:  # no door; the login itself may refuse bad credentials
                assert answer.status_code < 500 and "log in first" not in answer.text, (method, path)
                continue
            assert answer.status_code == 401, (method, path, answer.status_code)
            checked += 1
    assert checked >= 12  # segments, frames, uploads, stats, session, static, openapi …
    page = client.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/login")
    assert client.get("/login").status_code == 200 and client.get("/healthz").status_code == 200
    assert client.get("/api/docs").status_code == 404  # no Swagger page: it would load scripts from a CDN


def test_a_session_with_its_cookie_and_csrf_token(store: Store) -> None:
    user, _ = dashboard_user(store, "admin")
    client = app_of(store)
    assert client.post("/api/login", json={"username": user, "password": "wrong one!"}).status_code == 401
    answer = client.post("/api/login", json={"username": user, "password": PASSWORD})
    assert answer.status_code == 200 and answer.json()["role"] == "admin"
    cookie = answer.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # secure_cookies is for TLS deployments
    csrf = answer.json()["csrf_token"]
    assert client.get("/api/segments").status_code == 200
    assert client.get("/api/session").json() == {"username": user, "role": "admin", "via": "session",
                                                   "csrf_token": csrf}  # fmt: skip
    # a change without the CSRF token is refused, whatever the cookie
    refused = client.post("/api/logout")
    assert refused.status_code == 403 and "x-csrf-token" in refused.json()["detail"]
    assert client.post("/api/logout", headers={"X-CSRF-Token": "guess"}).status_code == 403
    assert client.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert client.get("/api/segments").status_code == 401  # the session is over
    form = client.post("/api/login", content=f"username={user}&password={PASSWORD.replace(' ', '+')}",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert form.status_code == 200  # the login form posts without JavaScript too
    secure = app_of(store, secure_cookies=True).post("/api/login", json={"username": user, "password": PASSWORD})
    assert "Secure" in secure.headers["set-cookie"]


def test_viewers_read_but_do_not_upload_and_tokens_can_be_revoked(store: Store) -> None:
    viewer_name, viewer = dashboard_user(store, "viewer")
    _, admin = dashboard_user(store, "admin")
    client = app_of(store)
    assert client.get("/api/frames", headers=viewer).status_code == 200
    refused = client.post("/api/frames", headers=viewer, content=b"\xff\xd8")
    assert (refused.status_code, refused.json()["detail"]) == (403, "admins only")
    assert client.post("/api/frames", headers=admin, content=b"\xff\xd8").status_code == 415  # past the door
    accounts = Accounts(store)
    [token] = [t for t in accounts.tokens() if t.username == viewer_name]
    assert token.last_used_at is not None  # its use is recorded
    accounts.revoke_token(token.token_id)
    assert client.get("/api/stats", headers=viewer).status_code == 401
    assert client.get("/api/stats", headers=admin).status_code == 200
    assert client.get("/api/stats", headers={"Authorization": "Bearer edc_made_up"}).status_code == 401
    with pytest.raises(AccountError, match="no token"):
        accounts.revoke_token(token.token_id)


def test_failed_logins_are_limited_per_user_and_per_address(store: Store) -> None:
    user, _ = dashboard_user(store, "viewer")
    client = app_of(store, login_rate="3/minute")
    for _ in range(3):
        assert client.post("/api/login", json={"username": user, "password": "wrong wrong"}).status_code == 401
    throttled = client.post("/api/login", json={"username": user, "password": PASSWORD})  # even the right one
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    other, _ = dashboard_user(store, "viewer")  # the same address: throttled too
    assert client.post("/api/login", json={"username": other, "password": PASSWORD}).status_code == 429
    door = client.app.state.door  # type: ignore[attr-defined]
    assert door.counts["login_failures"] == 3 and door.counts["login_throttled"] == 2


def test_passwords_are_argon2_hashes_and_sessions_expire(store: Store) -> None:
    accounts = Accounts(store)
    user = accounts.add_user("carol", PASSWORD, "viewer")
    with store.engine.connect() as conn:
        stored = conn.execute(select(dashboard_users.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert accounts.verify("carol", PASSWORD) == user and accounts.verify("carol", "x" * 12) is None
    assert accounts.verify("nobody", PASSWORD) is None
    token, _ = accounts.open_session(user, ttl_s=-1)  # already over
    assert accounts.session(token) is None
    token, session = accounts.open_session(user, ttl_s=60)
    assert accounts.session(token) == session
    with store.engine.connect() as conn:  # only the token's hash is kept
        assert token not in {row.token_hash for row in conn.execute(select(dashboard_sessions.c.token_hash))}
    with pytest.raises(AccountError, match="at least 10"):
        accounts.add_user("dave", "short", "viewer")
    with pytest.raises(AccountError, match="exists"):
        accounts.add_user("carol", PASSWORD, "admin")
    accounts.add_user("carol", PASSWORD + "!", "admin", replace=True)  # ends her sessions
    assert accounts.session(token) is None and accounts.verify("carol", PASSWORD + "!").role == "admin"  # type: ignore[union-attr]


def test_users_and_tokens_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    monkeypatch.setenv("EDGECAP_DASHBOARD_STORE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert dashboard_main(["users", "add", "erin", "--role", "admin", "--password-stdin"]) == 0
    assert dashboard_main(["users", "list"]) == 0
    assert dashboard_main(["tokens", "add", "--user", "erin", "--name", "backup"]) == 0
    out = capsys.readouterr().out
    assert "erin (admin) added" in out and "erin\tadmin" in out
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("edc_")
    store = Store(f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        assert app_of(store).get("/api/stats", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    finally:
        store.close()
    assert dashboard_main(["tokens", "add", "--user", "nobody"]) == 1
    assert dashboard_main(["users", "remove", "erin"]) == 0
    assert dashboard_main(["users", "remove", "erin"]) == 1
