"""Storage contract: users, WeChat identities, login sessions and their refresh chains.

The rest of issuer sees only :class:`Store` and the records below; a backend (SQLite here,
PostgreSQL for fleets) implements it. Contract common to every backend:

- a read that finds nothing returns ``None``; nothing raises for a miss;
- every method that writes is one transaction: it happens whole or not at all;
- a backend that cannot be reached, or is locked or read-only past its timeout, raises
  :class:`StoreUnavailable` (rendered as 503), never a driver exception;
- secrets arrive already sealed (:class:`issuer.sealing.Sealed`) and are stored as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..sealing import Sealed


class StoreUnavailable(Exception):
    """The database cannot serve the request right now."""


@dataclass(frozen=True)
class User:
    id: str
    unionid: str | None
    created_at: float


@dataclass(frozen=True)
class Identity:
    """One WeChat identity ``(appid, openid)`` of a user, with its sealed ``session_key``."""

    appid: str
    openid: str
    user_id: str
    session_key: Sealed = field(repr=False)
    created_at: float
    session_key_updated_at: float


@dataclass(frozen=True)
class Session:
    """A login session: one identity's refresh chain. ``unionid`` is the user's."""

    id: str
    user_id: str
    appid: str
    openid: str
    unionid: str | None
    secret: Sealed = field(repr=False)
    counter: int
    rotated_at: float | None
    created_at: float
    expires_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class NewSession:
    id: str
    secret: Sealed = field(repr=False)
    expires_at: float


@dataclass(frozen=True)
class LoginOutcome:
    user: User
    is_new_user: bool


class Store(Protocol):
    """What issuer needs from its database."""

    def migrate(self) -> int:
        """Bring the schema to the newest version; return it. Safe to run concurrently."""
        ...

    def ping(self) -> None:
        """:raises StoreUnavailable: when the database cannot answer a query."""
        ...

    def record_login(
        self,
        *,
        appid: str,
        openid: str,
        unionid: str | None,
        session_key: Sealed,
        session: NewSession,
        now: float,
    ) -> LoginOutcome:
        """Find or create the user of ``(appid, openid)``, store its new ``session_key``, and
        open ``session`` for it -- all in one transaction.

        A new identity whose ``unionid`` another user already holds joins that user
        (``is_new_user`` false). A known user without a unionid gets this one unless another
        user holds it.
        """
        ...

    def get_session(self, sid: str) -> Session | None: ...

    def advance_session(self, sid: str, counter: int, now: float) -> bool:
        """Spend token ``counter`` of ``sid``: atomically move the chain to ``counter + 1``.

        :returns: True for the one caller that moved it; False when the chain was not at
            ``counter`` (another request spent it first) or the session is revoked.
        """
        ...

    def revoke_session(self, sid: str, now: float) -> None:
        """End a session; every refresh token of it stops working. Idempotent."""
        ...

    def get_user(self, user_id: str) -> User | None: ...

    def get_identity(self, appid: str, openid: str) -> Identity | None: ...

    def close(self) -> None:
        """Release this thread's connection."""
        ...


def open_store(database_url: str) -> Store:
    """The backend for ``ISSUER_DATABASE_URL`` (already validated by the config)."""
    from .sqlite import SQLiteStore

    return SQLiteStore.from_url(database_url)
