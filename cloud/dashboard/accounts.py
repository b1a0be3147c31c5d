"""Who may read the dashboard: users, their login sessions and their API tokens, in the store.

Passwords are hashed with argon2id (``argon2-cffi``, its default parameters, rehashed on login when
they change); an unknown user costs the same hash as a wrong password, so timing tells no names.
Session and API tokens are 32 random bytes (``secrets``), handed out once; the store keeps only
their SHA-256, so a copy of the database logs no one in. A session expires ``session_ttl_s`` after
login (logging out ends it at once); an API token lasts until revoked. Roles: ``admin`` (everything)
and ``viewer`` (reads only: no configuration, no uploads, no accounts).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, select, update

from cloud.store import Store
from cloud.tables import dashboard_sessions, dashboard_tokens, dashboard_users

log = logging.getLogger(__name__)

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_CHARS = 10


class AccountError(ValueError):
    """A user or token that cannot be created or found; the message says why."""


@dataclass(frozen=True)
class User:
    username: str
    role: Role

    @property
    def admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: float


@dataclass(frozen=True)
class ApiToken:
    token_id: str
    username: str
    name: str
    created_at: float
    last_used_at: float | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Accounts:
    """Users, sessions and API tokens of the dashboard, on the store's database."""

    def __init__(self, store: Store) -> None:
        from argon2 import PasswordHasher

        self.store = store
        self.hasher = PasswordHasher()
        self._dummy = self.hasher.hash(secrets.token_hex(16))  # verified against when the user is unknown

    # --- users -------------------------------------------------------------------------------

    def add_user(self, username: str, password: str, role: Role, *, replace: bool = False) -> User:
        """Create a user (or, with ``replace``, set an existing one's password and role)."""
        if not USERNAME.match(username):
            raise AccountError(f"user name {username!r}: 1-64 letters, digits, '.', '_', '@', '-'")
        if role not in ROLES:
            raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_CHARS:
            raise AccountError(f"a password has at least {MIN_PASSWORD_CHARS} characters")
        values = {"password_hash": self.hasher.hash(password), "role": role}
        with self.store.engine.begin() as conn:
            exists = conn.execute(select(dashboard_users.c.username).where(dashboard_users.c.username == username))
            if exists.first() is not None:
                if not replace:
                    raise AccountError(f"user {username!r} exists (replace it to change its password or role)")
                conn.execute(update(dashboard_users).where(dashboard_users.c.username == username).values(**values))
                conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.username == username))
            else:
                conn.execute(dashboard_users.insert().values(username=username, created_at=time.time(), **values))
        log.info("dashboard user %s (%s) %s", username, role, "replaced" if replace else "added")
        return User(username, role)

    def remove_user(self, username: str) -> None:
        """Delete a user with its sessions and tokens."""
        with self.store.engine.begin() as conn:
            gone = conn.execute(delete(dashboard_users).where(dashboard_users.c.username == username)).rowcount
            if not gone:
                raise AccountError(f"no user {username!r}")
            conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.username == username))
            conn.execute(delete(dashboard_tokens).where(dashboard_tokens.c.username == username))

    def users(self) -> list[User]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(dashboard_users.c.username, dashboard_users.c.role).order_by("username"))
            return [User(r.username, r.role) for r in rows]

    def verify(self, username: str, password: str) -> User | None:
        """The user if the password is theirs; None otherwise (the same work either way)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(dashboard_users.c.password_hash, dashboard_users.c.role).where(
                    dashboard_users.c.username == username
                )
            ).first()
        try:
            self.hasher.verify(row.password_hash if row is not None else self._dummy, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if self.hasher.check_needs_rehash(row.password_hash):
            with self.store.engine.begin() as conn:
                conn.execute(update(dashboard_users).where(dashboard_users.c.username == username)
                             .values(password_hash=self.hasher.hash(password)))  # fmt: skip
        return User(username, row.role)

    def _user(self, username: str) -> User | None:
        with self.store.engine.connect() as conn:
            role = conn.execute(select(dashboard_users.c.role).where(dashboard_users.c.username == username)).scalar()
        return User(username, role) if role is not None else None

    # --- sessions ----------------------------------------------------------------------------

    def open_session(self, user: User, ttl_s: float) -> tuple[str, Session]:
        """A new login session: its token (for the cookie, shown once) and the session."""
        token, now = secrets.token_urlsafe(32), time.time()
        session = Session(user, secrets.token_urlsafe(24), now + ttl_s)
        with self.store.engine.begin() as conn:
            conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.expires_at < now))  # tidy as we go
            conn.execute(dashboard_sessions.insert().values(token_hash=_digest(token), username=user.username,
                                                            csrf_token=session.csrf_token, created_at=now,
                                                            expires_at=session.expires_at))  # fmt: skip
        return token, session

    def session(self, token: str) -> Session | None:
        """The live session of a cookie's token, or None (unknown, expired, or its user is gone)."""
        query = (
            select(dashboard_sessions.c.csrf_token, dashboard_sessions.c.expires_at, dashboard_users.c.username,
                   dashboard_users.c.role)  # fmt: skip
            .join(dashboard_users, dashboard_users.c.username == dashboard_sessions.c.username)
            .where(dashboard_sessions.c.token_hash == _digest(token))
        )
        with self.store.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or row.expires_at < time.time():
            return None
        return Session(User(row.username, row.role), row.csrf_token, row.expires_at)

    def close_session(self, token: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.token_hash == _digest(token)))

    # --- API tokens --------------------------------------------------------------------------

    def new_token(self, username: str, name: str) -> tuple[str, ApiToken]:
        """A new API token for ``username`` (the secret, shown once, and its record)."""
        if self._user(username) is None:
            raise AccountError(f"no user {username!r}")
        secret, now = "edc_" + secrets.token_urlsafe(32), time.time()
        record = ApiToken(secrets.token_hex(6), username, name, now, None)
        with self.store.engine.begin() as conn:
            conn.execute(dashboard_tokens.insert().values(token_hash=_digest(secret), token_id=record.token_id,
                                                          username=username, name=name, created_at=now))  # fmt: skip
        return secret, record

    def token_user(self, secret: str) -> User | None:
        """The user an API token acts for, or None; its last use is recorded."""
        query = (
            select(dashboard_tokens.c.token_hash, dashboard_users.c.username, dashboard_users.c.role)
            .join(dashboard_users, dashboard_users.c.username == dashboard_tokens.c.username)
            .where(dashboard_tokens.c.token_hash == _digest(secret))
        )
        with self.store.engine.begin() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            conn.execute(update(dashboard_tokens).where(dashboard_tokens.c.token_hash == row.token_hash)
                         .values(last_used_at=time.time()))  # fmt: skip
        return User(row.username, row.role)

    def tokens(self) -> list[ApiToken]:
        columns = (dashboard_tokens.c.token_id, dashboard_tokens.c.username, dashboard_tokens.c.name,
                   dashboard_tokens.c.created_at, dashboard_tokens.c.last_used_at)  # fmt: skip
        with self.store.engine.connect() as conn:
            return [ApiToken(*r) for r in conn.execute(select(*columns).order_by(dashboard_tokens.c.created_at))]

    def revoke_token(self, token_id: str) -> None:
        with self.store.engine.begin() as conn:
            if not conn.execute(delete(dashboard_tokens).where(dashboard_tokens.c.token_id == token_id)).rowcount:
                raise AccountError(f"no token {token_id!r}")
