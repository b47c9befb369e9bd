"""Storage contract: users, WeChat identities, login sessions and their refresh chains.

The rest of issuer sees only :class:`Store` and the records below; a backend implements it:
SQLite (``sqlite.py``, the default) or PostgreSQL for fleets (``postgres.py``), both thin
dialects of the SQL written once in ``sql.py``. Contract common to every backend:

- a read that finds nothing returns ``None``; nothing raises for a miss;
- every method that writes is one transaction: it happens whole or not at all;
- a backend that cannot be reached, or is locked or read-only past its timeout, raises
  :class:`StoreUnavailable` (rendered as 503), never a driver exception;
- secrets arrive already sealed (:class:`issuer.sealing.Sealed`) and are stored as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..sealing import Sealed

if TYPE_CHECKING:
    from ..oauth.grants import AuthorizationRequest, IssuedCode, ScanTicket, TicketStatus


class StoreUnavailable(Exception):
    """The database cannot serve the request right now."""


@dataclass(frozen=True)
class User:
    id: str
    unionid: str | None
    created_at: float
    nickname: str | None = None
    avatar_url: str | None = None
    # Set on a user absorbed by a unionid merge: the id of the user that survived.
    merged_into: str | None = None


@dataclass(frozen=True)
class Identity:
    """One WeChat identity ``(appid, openid)`` of a user, with its sealed ``session_key``."""

    appid: str
    openid: str
    user_id: str
    session_key: Sealed = field(repr=False)
    created_at: float
    session_key_updated_at: float
    phone: Sealed | None = field(default=None, repr=False)
    country_code: str | None = None
    phone_updated_at: float | None = None


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
    # The web client (``[[clients]]`` id) the session was opened for; None: the app itself.
    client_id: str | None = None


@dataclass(frozen=True)
class NewSession:
    id: str
    secret: Sealed = field(repr=False)
    expires_at: float


@dataclass(frozen=True)
class ServerToken:
    """The cached WeChat server access token of an app, and who is refreshing it."""

    appid: str
    token: Sealed | None = field(repr=False)
    expires_at: float | None
    fetched_at: float | None
    lease_until: float | None


@dataclass(frozen=True)
class SealedRow:
    """One stored secret: its kind (``session_key``, ``phone``, ``refresh_secret``,
    ``server_token``), the row's key values, and the ciphertext."""

    kind: str
    key: tuple[str, ...]
    sealed: Sealed = field(repr=False)


@dataclass(frozen=True)
class Profile:
    """What ``GET /me`` shows, read at once: a session, its user, and the user's identities
    that hold a phone number."""

    session: Session
    user: User
    phones: tuple[Identity, ...]


@dataclass(frozen=True)
class LoginOutcome:
    user: User
    is_new_user: bool


@dataclass(frozen=True)
class StoredAvatar:
    """An avatar as issuer serves it: already re-encoded, never the bytes a client sent."""

    id: str
    user_id: str
    content_type: str
    image: bytes = field(repr=False)
    created_at: float


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
        code_hash: str | None = None,
        forget_codes_before: float | None = None,
        client_id: str | None = None,
    ) -> LoginOutcome:
        """Find or create the user of ``(appid, openid)``, store its new ``session_key``, open
        ``session`` for it, and remember ``code_hash`` as answered by it (forgetting code
        hashes recorded before ``forget_codes_before``) -- one transaction.

        A new identity whose ``unionid`` another user already holds joins that user
        (``is_new_user`` false); a known user gets the unionid as :meth:`link_unionid` does.
        ``client_id`` names the web client the session is for (None: the app itself).
        """
        ...

    def find_login(self, code_hash: str, since: float) -> tuple[str, bool] | None:
        """The (session id, is_new_user) a code with this hash was answered with after
        ``since``, or None."""
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

    def revoke_user_sessions(self, user_id: str, now: float) -> int:
        """End every live session of a user (sign out everywhere).

        :returns: how many sessions it ended (0 for an unknown user).
        """
        ...

    def get_user(self, user_id: str) -> User | None: ...

    def get_profile(self, sid: str) -> Profile | None:
        """Session ``sid``, its user and the user's identities holding a phone number, in
        one query (the read behind every ``GET /me``); None when there is no such session."""
        ...

    def get_identity(self, appid: str, openid: str) -> Identity | None: ...

    def identities_of(self, user_id: str) -> list[Identity]:
        """Every identity of a user, oldest first."""
        ...

    def link_unionid(self, appid: str, openid: str, unionid: str) -> str:
        """Give the identity's user this unionid; if another user holds it, merge into that
        user (identities and sessions move; the absorbed user keeps ``merged_into``).

        :returns: the user id the identity belongs to afterwards.
        :raises LookupError: no such identity.
        """
        ...

    def update_profile(self, user_id: str, nickname: str | None, avatar_url: str | None) -> None:
        """Set the profile fields that are not None."""
        ...

    def set_phone(
        self, appid: str, openid: str, phone: Sealed, country_code: str | None, now: float
    ) -> None: ...

    def edit_profile(
        self, user_id: str, *, nickname: str | None, avatar_url: str | None, keep_avatar: str | None
    ) -> bool:
        """Set the fields that are not None, as the user typed them (``PATCH /me``). With an
        ``avatar_url``, the user's stored avatars other than ``keep_avatar`` are deleted: the
        profile no longer points at them.

        :returns: False for an unknown user (nothing written).
        """
        ...

    def put_avatar(self, avatar: StoredAvatar, avatar_url: str) -> bool:
        """Store ``avatar`` for its user, point the profile's ``avatar_url`` at it, and
        delete the user's earlier avatars -- one transaction. Storing the same one again is
        not an error.

        :returns: False for an unknown user (nothing written).
        """
        ...

    def get_avatar(self, avatar_id: str) -> StoredAvatar | None: ...

    def delete_user(self, user_id: str) -> bool:
        """Delete a user and everything personal of it, in one transaction: its sessions and
        their login code hashes, identities (openid, sealed session_key and phone), avatars,
        profile, and the users merged into it (``merged_into``) with theirs. Access tokens
        of the user stop authenticating at once (their sessions are gone); the same WeChat
        user logging in later is a new user.

        :returns: False for an unknown user (nothing deleted).
        """
        ...

    def get_server_token(self, appid: str) -> ServerToken | None: ...

    def take_server_token_lease(
        self, appid: str, owner: str, now: float, until: float, seen_fetched_at: float | None
    ) -> bool:
        """Atomically become the one process refreshing ``appid``'s token until ``until``,
        provided nobody stored a token since the caller saw ``seen_fetched_at``.

        :returns: False while another owner's lease has not run out, or when a newer token
            than the one the caller saw is already there.
        """
        ...

    def put_server_token(self, appid: str, token: Sealed, expires_at: float, now: float) -> None:
        """Store a fresh token and end the lease, whoever holds it: WeChat's normal mode
        hands every caller the same current token, so a late writer stores no other one."""
        ...

    def release_server_token_lease(self, appid: str, owner: str) -> None: ...

    def prune(self, now: float) -> dict[str, int]:
        """Delete sessions past their lifetime or revoked, and stale login code hashes.

        :returns: how many rows of each went.
        """
        ...

    def live_sessions(self, user_id: str, now: float) -> int: ...

    def sealed_rows(self, not_kid: str, limit: int) -> list[SealedRow]:
        """Up to ``limit`` stored secrets sealed with a data key other than ``not_kid``."""
        ...

    def replace_sealed(self, row: SealedRow, new: Sealed) -> bool:
        """Swap a row's ciphertext, unless it changed since it was read (then False)."""
        ...

    def sealed_kid_counts(self) -> dict[str, int]:
        """How many stored secrets each data key sealed."""
        ...

    def data_key_checks(self) -> dict[str, bytes]:
        """Every data key's check value (a known plaintext sealed with it), by key id."""
        ...

    def add_data_key_check(self, kid: str, check_value: bytes, now: float) -> None:
        """Remember a data key's check value; a key that already has one keeps it."""
        ...

    def drop_data_key_check(self, kid: str) -> None:
        """Forget the check value of a data key that no longer seals anything."""
        ...

    # -- web login (``weblogin.py``): issuer as an OAuth 2.0 authorization server

    def put_authorization_request(self, request: AuthorizationRequest) -> None: ...

    def take_authorization_request(
        self, request_id: str, now: float
    ) -> AuthorizationRequest | None:
        """The request, taken once: None when unknown, expired or already taken."""
        ...

    def put_code(self, code: IssuedCode) -> None: ...

    def spend_code(self, code_hash: str, now: float) -> tuple[IssuedCode, bool] | None:
        """Mark a code used: the code and whether this was its first use, or None."""
        ...

    def open_session(
        self, appid: str, openid: str, session: NewSession, client_id: str, now: float
    ) -> bool:
        """Open a session for a known identity; False when the identity is gone."""
        ...

    def put_ticket(self, ticket: ScanTicket) -> None: ...

    def get_ticket(self, ticket_id: str) -> ScanTicket | None: ...

    def move_ticket(
        self,
        ticket_id: str,
        to: TicketStatus,
        *,
        from_: frozenset[TicketStatus],
        now: float,
        user_id: str | None = None,
        session_id: str | None = None,
    ) -> bool:
        """Move a live ticket from one of ``from_`` to ``to`` (only the scanning user's)."""
        ...

    def deliver_ticket(self, ticket_id: str, now: float) -> str | None:
        """The session of a confirmed ticket, handed out once, or None."""
        ...

    def ticket_qrcode(self, ticket_id: str) -> bytes | None: ...

    def put_ticket_qrcode(self, ticket_id: str, png: bytes) -> None: ...

    def prune_web_login(self, now: float) -> int: ...

    def close(self) -> None:
        """Release the connections held for the caller: SQLite's connection of this thread,
        PostgreSQL's pool of this process (its calls borrow a connection only while they
        run). The next call opens what it needs."""
        ...


def open_store(database_url: str, *, pool_size: int | None = None) -> Store:
    """The backend for ``ISSUER_DATABASE_URL`` (already validated by the config).

    :param pool_size: PostgreSQL's connections per process (``ISSUER_DATABASE_POOL_SIZE``);
        SQLite has no pool.
    """
    if database_url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore.from_url(database_url, pool_size=pool_size)
    from .sqlite import SQLiteStore

    return SQLiteStore.from_url(database_url)
