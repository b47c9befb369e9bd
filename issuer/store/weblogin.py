"""Web login's rows, in the SQL both backends speak: authorization requests (issuer's
``state``), authorization codes (by hash) and PC scan tickets.

Every "use once" is one conditional ``UPDATE … RETURNING``: of racing hosts, one wins.
Mixed into :class:`issuer.store.sql.SQLStore`, whose ``_write``/``_one`` it uses.
"""

# The f-strings below insert column lists and table names from constants of this module,
# never input: every value travels as a ? parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from ..oauth.grants import AuthorizationRequest, IssuedCode, ScanTicket, TicketStatus
from . import NewSession

T = TypeVar("T")

MIGRATION: tuple[str, ...] = (
    # The web client a session was opened for: its access tokens carry it as client_id.
    "ALTER TABLE sessions ADD COLUMN client_id TEXT",
    """CREATE TABLE oauth_requests (
        id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        state TEXT,
        code_challenge TEXT NOT NULL,
        scope TEXT NOT NULL,
        expires_at {real} NOT NULL,
        used_at {real}
    )""",
    "CREATE INDEX oauth_requests_expires ON oauth_requests(expires_at)",
    """CREATE TABLE oauth_codes (
        code_hash TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        redirect_uri TEXT,
        code_challenge TEXT NOT NULL,
        session_id TEXT NOT NULL,
        expires_at {real} NOT NULL,
        is_new_user INTEGER NOT NULL,
        used_at {real}
    )""",
    "CREATE INDEX oauth_codes_expires ON oauth_codes(expires_at)",
    """CREATE TABLE scan_tickets (
        id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        code_challenge TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at {real} NOT NULL,
        expires_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        user_id TEXT,
        session_id TEXT,
        delivered_at {real},
        qrcode {blob}
    )""",
    "CREATE INDEX scan_tickets_expires ON scan_tickets(expires_at)",
)

_CODE_COLUMNS = (
    "code_hash, client_id, redirect_uri, code_challenge, session_id, expires_at, is_new_user"
)
_TICKET_COLUMNS = (
    "id, client_id, code_challenge, status, created_at, expires_at, updated_at, user_id"
)


def _code(row: Sequence[Any]) -> IssuedCode:
    code_hash, client_id, redirect_uri, challenge, session_id, expires_at, is_new = row
    return IssuedCode(code_hash, client_id, redirect_uri, challenge, session_id, expires_at,
                      bool(is_new))  # fmt: skip


class _Executor(Protocol):  # the part of sql.Executor used here (kept local: no cycle)
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...


class WebLoginRows:
    """Store methods for web login; the contract of each is in its docstring."""

    _write: Callable[..., Any]
    _one: Callable[..., Any]

    def put_authorization_request(self, request: AuthorizationRequest) -> None:
        """Remember an authorization request until WeChat's callback takes it."""

        def work(db: _Executor) -> None:
            db.execute(
                """INSERT INTO oauth_requests (id, client_id, redirect_uri, state,
                code_challenge, scope, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (request.id, request.client_id, request.redirect_uri, request.state,
                 request.code_challenge, request.scope, request.expires_at),
            )  # fmt: skip

        self._write(work)

    def take_authorization_request(
        self, request_id: str, now: float
    ) -> AuthorizationRequest | None:
        """The request, taken once: None when unknown, expired or already taken."""

        def work(db: _Executor) -> AuthorizationRequest | None:
            rows = db.execute(
                """UPDATE oauth_requests SET used_at = ? WHERE id = ? AND used_at IS NULL
                AND expires_at > ? RETURNING id, client_id, redirect_uri, state,
                code_challenge, scope, expires_at""",
                (now, request_id, now),
            ).fetchall()
            return AuthorizationRequest(*rows[0]) if rows else None

        result: AuthorizationRequest | None = self._write(work)
        return result

    def put_code(self, code: IssuedCode) -> None:
        def work(db: _Executor) -> None:
            db.execute(
                f"INSERT INTO oauth_codes ({_CODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (code.code_hash, code.client_id, code.redirect_uri, code.code_challenge,
                 code.session_id, code.expires_at, int(code.is_new_user)),
            )  # fmt: skip

        self._write(work)

    def spend_code(self, code_hash: str, now: float) -> tuple[IssuedCode, bool] | None:
        """Mark a code used. :returns: the code and whether this call was its first use
        (False: it had been used before), or None for an unknown code."""

        def work(db: _Executor) -> tuple[IssuedCode, bool] | None:
            rows = db.execute(
                f"""UPDATE oauth_codes SET used_at = ? WHERE code_hash = ? AND used_at IS NULL
                RETURNING {_CODE_COLUMNS}""",
                (now, code_hash),
            ).fetchall()
            if rows:
                return _code(rows[0]), True
            row = db.execute(
                f"SELECT {_CODE_COLUMNS} FROM oauth_codes WHERE code_hash = ?", (code_hash,)
            ).fetchone()
            return (_code(row), False) if row else None

        result: tuple[IssuedCode, bool] | None = self._write(work)
        return result

    def put_ticket(self, ticket: ScanTicket) -> None:
        def work(db: _Executor) -> None:
            db.execute(
                f"INSERT INTO scan_tickets ({_TICKET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ticket.id, ticket.client_id, ticket.code_challenge, ticket.status.value,
                 ticket.created_at, ticket.expires_at, ticket.updated_at, ticket.user_id),
            )  # fmt: skip

        self._write(work)

    def get_ticket(self, ticket_id: str) -> ScanTicket | None:
        row = self._one(f"SELECT {_TICKET_COLUMNS} FROM scan_tickets WHERE id = ?", ticket_id)
        if row is None:
            return None
        values = list(row)
        values[3] = TicketStatus(values[3])
        return ScanTicket(*values)

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
        """Move a live ticket from one of ``from_`` to ``to``; with ``user_id``, only the
        ticket that user scanned (or any pending one). :returns: whether it moved."""

        def work(db: _Executor) -> bool:
            marks = ", ".join("?" for _ in from_)
            cursor = db.execute(
                f"""UPDATE scan_tickets SET status = ?, updated_at = ?,
                user_id = COALESCE(user_id, ?), session_id = COALESCE(?, session_id)
                WHERE id = ? AND expires_at > ? AND status IN ({marks})
                AND (user_id IS NULL OR user_id = ?)""",
                (to.value, now, user_id, session_id, ticket_id, now,
                 *sorted(state.value for state in from_), user_id),
            )  # fmt: skip
            return bool(cursor.rowcount == 1)

        result: bool = self._write(work)
        return result

    def deliver_ticket(self, ticket_id: str, now: float) -> str | None:
        """The session of a confirmed ticket, handed out once (the first poll that sees the
        confirmation turns it into a code). None when not confirmed or already delivered."""

        def work(db: _Executor) -> str | None:
            rows = db.execute(
                """UPDATE scan_tickets SET delivered_at = ? WHERE id = ? AND status = ?
                AND delivered_at IS NULL RETURNING session_id""",
                (now, ticket_id, TicketStatus.CONFIRMED.value),
            ).fetchall()
            return str(rows[0][0]) if rows else None

        result: str | None = self._write(work)
        return result

    def ticket_qrcode(self, ticket_id: str) -> bytes | None:
        row = self._one("SELECT qrcode FROM scan_tickets WHERE id = ?", ticket_id)
        return bytes(row[0]) if row is not None and row[0] is not None else None

    def put_ticket_qrcode(self, ticket_id: str, png: bytes) -> None:
        def work(db: _Executor) -> None:
            db.execute("UPDATE scan_tickets SET qrcode = ? WHERE id = ?", (png, ticket_id))

        self._write(work)

    def open_session(
        self, appid: str, openid: str, session: NewSession, client_id: str, now: float
    ) -> bool:
        """Open a session for a known identity (a scan confirmed by its mini-program user),
        its tokens issued to ``client_id``. :returns: False when the identity is gone."""

        def work(db: _Executor) -> bool:
            cursor = db.execute(
                """INSERT INTO sessions (id, user_id, appid, openid, secret, secret_kid,
                counter, rotated_at, created_at, expires_at, client_id)
                SELECT ?, user_id, appid, openid, ?, ?, 0, NULL, ?, ?, ?
                FROM identities WHERE appid = ? AND openid = ?""",
                (session.id, session.secret.blob, session.secret.kid, now, session.expires_at,
                 client_id, appid, openid),
            )  # fmt: skip
            return bool(cursor.rowcount == 1)

        result: bool = self._write(work)
        return result

    def prune_web_login(self, now: float) -> int:
        """Delete expired requests, codes and tickets. :returns: how many rows went."""
        result: int = self._write(lambda db: prune_rows(db, now))
        return result


def prune_rows(db: _Executor, now: float) -> int:
    """Delete web login's expired rows inside the caller's transaction (``issuer prune``):
    every one of them is useless once expired. :returns: how many rows went."""
    total = 0
    for table in ("oauth_requests", "oauth_codes", "scan_tickets"):
        total += int(db.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,)).rowcount)
    return total
