"""The SQL both backends speak: every :class:`issuer.store.Store` method, written once.

:class:`SQLStore` holds the queries, the migrations and the rules (how a login finds or makes
its user, how a unionid merges two users); a dialect (``sqlite.py``, ``postgres.py``) adds only
what differs: opening connections, running a transaction, turning driver errors into
:class:`StoreUnavailable`, keeping the schema version, and its placeholder style.

The SQL here uses ``?`` placeholders and only what SQLite 3.39+ and PostgreSQL share:
``INSERT … ON CONFLICT … DO NOTHING / DO UPDATE SET x = excluded.x``, ``IS NOT DISTINCT FROM``
and ``UPDATE … RETURNING``. A ``?`` never appears inside a literal, so a dialect may
translate placeholders by plain substitution.

Concurrency. SQLite serialises writers (``BEGIN IMMEDIATE``); PostgreSQL runs them side by
side under READ COMMITTED. The writes below are shaped so that both give the same answers:
every "check, then change" is either a single conditional statement (``UPDATE … WHERE counter
= ?``) or is guarded by a unique index or a conditional ``UPDATE`` whose row count says whether
the state read earlier still holds. When it does not, the transaction raises :class:`Conflict`
(or the driver reports a unique violation, a deadlock or a serialization failure) and
:meth:`SQLStore._write` runs the whole transaction again: it is rolled back first, so nothing
half-written is ever seen.
"""

from __future__ import annotations

import random
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from ..sealing import Sealed
from . import (
    Identity,
    LoginOutcome,
    NewSession,
    Profile,
    SealedRow,
    ServerToken,
    Session,
    StoredAvatar,
    StoreUnavailable,
    User,
)
from .weblogin import MIGRATION as WEB_LOGIN_MIGRATION
from .weblogin import WebLoginRows
from .weblogin import prune_rows as prune_web_login_rows

T = TypeVar("T")

# Each entry moves the schema one version up. Never edit a released entry: append a new one.
# Templates: ``{blob}``, ``{real}`` and ``{without_rowid}`` are a dialect's COLUMN_TYPES, so
# SQLite gets exactly the statements it always had and PostgreSQL its own spelling of them.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            unionid TEXT UNIQUE,
            created_at {real} NOT NULL
        )""",
        """CREATE TABLE identities (
            appid TEXT NOT NULL,
            openid TEXT NOT NULL,
            user_id TEXT NOT NULL REFERENCES users(id),
            session_key {blob} NOT NULL,
            session_key_kid TEXT NOT NULL,
            session_key_updated_at {real} NOT NULL,
            created_at {real} NOT NULL,
            PRIMARY KEY (appid, openid)
        ){without_rowid}""",
        "CREATE INDEX identities_user ON identities(user_id)",
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            appid TEXT NOT NULL,
            openid TEXT NOT NULL,
            secret {blob} NOT NULL,
            secret_kid TEXT NOT NULL,
            counter INTEGER NOT NULL DEFAULT 0,
            rotated_at {real},
            created_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            revoked_at {real},
            FOREIGN KEY (appid, openid) REFERENCES identities(appid, openid)
        )""",
        "CREATE INDEX sessions_user ON sessions(user_id)",
        "CREATE INDEX sessions_expires ON sessions(expires_at)",
    ),
    (
        # Profile (not secret) on the user; the phone number sealed on the identity, bound to
        # (appid, openid) like the session_key, so it moves with the identity in a merge.
        "ALTER TABLE users ADD COLUMN nickname TEXT",
        "ALTER TABLE users ADD COLUMN avatar_url TEXT",
        "ALTER TABLE users ADD COLUMN merged_into TEXT REFERENCES users(id)",
        "ALTER TABLE identities ADD COLUMN phone {blob}",
        "ALTER TABLE identities ADD COLUMN phone_kid TEXT",
        "ALTER TABLE identities ADD COLUMN country_code TEXT",
        "ALTER TABLE identities ADD COLUMN phone_updated_at {real}",
        # Completed code exchanges, by a hash of the code, for the login retry window.
        """CREATE TABLE login_codes (
            code_hash TEXT PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id),
            is_new_user INTEGER NOT NULL,
            created_at {real} NOT NULL
        )""",
        "CREATE INDEX login_codes_created ON login_codes(created_at)",
        # WeChat server access tokens, shared by every worker and host, with a refresh lease.
        """CREATE TABLE server_tokens (
            appid TEXT PRIMARY KEY,
            token {blob},
            token_kid TEXT,
            expires_at {real},
            fetched_at {real},
            lease_owner TEXT,
            lease_until {real}
        )""",
    ),
    (
        # For each data key, a known plaintext sealed with it (never the key): at start-up a
        # key directory that cannot open it, or lacks the key, does not match this database.
        """CREATE TABLE data_key_checks (
            kid TEXT PRIMARY KEY,
            check_value {blob} NOT NULL,
            created_at {real} NOT NULL
        )""",
    ),
    (
        # Avatars users upload, re-encoded, in the database so every host of a fleet serves
        # them. The id is a hash of the owner and the bytes: immutable, so cached for good.
        """CREATE TABLE avatars (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            content_type TEXT NOT NULL,
            image {blob} NOT NULL,
            created_at {real} NOT NULL
        )""",
        "CREATE INDEX avatars_user ON avatars(user_id)",
        "CREATE INDEX login_codes_session ON login_codes(session_id)",
    ),
    WEB_LOGIN_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)

# Every sealed column: kind -> (table, key columns, ciphertext column, key id column).
# Constants only: the names never come from input.
SEALED_COLUMNS: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    "session_key": ("identities", ("appid", "openid"), "session_key", "session_key_kid"),
    "phone": ("identities", ("appid", "openid"), "phone", "phone_kid"),
    "refresh_secret": ("sessions", ("id",), "secret", "secret_kid"),
    "server_token": ("server_tokens", ("appid",), "token", "token_kid"),
}
# Login code hashes are kept at most this long (the retry window's upper bound).
LOGIN_CODE_MEMORY = 300.0
# How often a write transaction that lost a race is run again before the caller gets
# StoreUnavailable (503): each retry follows a writer that has committed, so two or three
# are plenty; the bound only stops a pathological livelock.
WRITE_ATTEMPTS = 5

SELECT_USER = "SELECT id, unionid, created_at, nickname, avatar_url, merged_into FROM users"
SELECT_IDENTITY = """SELECT appid, openid, user_id, session_key, session_key_kid, created_at,
    session_key_updated_at, phone, phone_kid, country_code, phone_updated_at FROM identities"""
SELECT_SESSION = """SELECT s.id, s.user_id, s.appid, s.openid, u.unionid, s.secret,
    s.secret_kid, s.counter, s.rotated_at, s.created_at, s.expires_at, s.revoked_at,
    s.client_id FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?"""


# A session, its user, and (LEFT JOIN) each identity of the user that holds a phone number:
# one row per such identity, or one row with NULLs in its place.
SELECT_PROFILE = """SELECT s.id, s.user_id, s.appid, s.openid, u.unionid, s.secret,
    s.secret_kid, s.counter, s.rotated_at, s.created_at, s.expires_at, s.revoked_at,
    s.client_id, u.id, u.unionid, u.created_at, u.nickname, u.avatar_url, u.merged_into,
    i.appid, i.openid, i.user_id, i.session_key, i.session_key_kid, i.created_at,
    i.session_key_updated_at, i.phone, i.phone_kid, i.country_code, i.phone_updated_at
    FROM sessions s JOIN users u ON u.id = s.user_id
    LEFT JOIN identities i ON i.user_id = s.user_id AND i.phone IS NOT NULL
    WHERE s.id = ?"""
SESSION_COLUMNS = 13
USER_COLUMNS = 6


class Conflict(Exception):
    """What a write transaction read changed under it (a concurrent writer won a race):
    :meth:`SQLStore._write` rolls it back and runs it again."""


class Cursor(Protocol):
    """The part of a DB-API cursor the queries use."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Executor(Protocol):
    """A connection inside a dialect's transaction: runs ``?``-style SQL."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


def new_user_id() -> str:
    """``usr_`` + 128 random bits. The prefix says what the id is in a log line, and keeps an
    id from starting with ``-``, which a command line would take for an option."""
    return "usr_" + secrets.token_urlsafe(16)


class SQLStore(WebLoginRows, ABC):
    """Every :class:`issuer.store.Store` method on top of a dialect's four primitives."""

    # Column types the migration templates name, in this dialect's spelling.
    COLUMN_TYPES: ClassVar[dict[str, str]]

    # -- what a dialect provides

    @abstractmethod
    def _run(self, work: Callable[[Executor], T], *, write: bool) -> T:
        """Run ``work`` on a connection: in one transaction when ``write``, else as plain
        reads. Rolls back when ``work`` raises.

        :raises Conflict: the transaction lost a race (a unique violation, a deadlock, a
            serialization failure, or ``work``'s own :class:`Conflict`); nothing was written.
        :raises StoreUnavailable: the database cannot serve it now.
        """

    @abstractmethod
    def _migrating(self, work: Callable[[Executor], T]) -> T:
        """Run ``work`` as the one migration transaction: concurrent callers wait for it."""

    @abstractmethod
    def _schema_version(self, db: Executor) -> int:
        """The version the database is at (0 for an empty one), inside ``_migrating``."""

    @abstractmethod
    def _set_schema_version(self, db: Executor, version: int) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    # -- building blocks

    def _write(self, work: Callable[[Executor], T]) -> T:
        """``work`` as one write transaction, run again (whole) when it loses a race."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return self._run(work, write=True)
            except Conflict:
                # A short, growing, jittered pause: two writers that collided once should not
                # collide again in lockstep (it matters for serialization failures).
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))  # noqa: S311
        raise StoreUnavailable(f"a write kept conflicting after {WRITE_ATTEMPTS} attempts")

    def _one(self, sql: str, *params: object) -> Any:
        return self._run(lambda db: db.execute(sql, params).fetchone(), write=False)

    def _all(self, sql: str, *params: object) -> list[Any]:
        return self._run(lambda db: db.execute(sql, params).fetchall(), write=False)

    # -- schema

    def migrate(self) -> int:
        def work(db: Executor) -> int:
            version = self._schema_version(db)
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"database schema {version} is newer than this issuer ({SCHEMA_VERSION})"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    db.execute(statement.format_map(self.COLUMN_TYPES))
            if version != SCHEMA_VERSION:
                self._set_schema_version(db, SCHEMA_VERSION)
            return SCHEMA_VERSION

        return self._migrating(work)

    def ping(self) -> None:
        self._one("SELECT 1")

    # -- logins and sessions

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
        def work(db: Executor) -> LoginOutcome:
            # Update first, read the owner from the same statement: the row lock it takes
            # (PostgreSQL) means a merge moving this identity either finished before -- and
            # the new owner is returned -- or waits for this login and then moves its session.
            known = db.execute(
                """UPDATE identities SET session_key = ?, session_key_kid = ?,
                session_key_updated_at = ? WHERE appid = ? AND openid = ? RETURNING user_id""",
                (session_key.blob, session_key.kid, now, appid, openid),
            ).fetchall()
            if known:
                user_id, is_new = known[0][0], False
                if unionid:
                    user_id = _link_unionid(db, user_id, unionid)
            else:
                holder = None
                if unionid:
                    holder = db.execute(
                        "SELECT id FROM users WHERE unionid = ?", (unionid,)
                    ).fetchone()
                if holder is not None:
                    user_id, is_new = holder[0], False
                else:
                    # Two first logins of one person racing: the unique unionid (or, without
                    # one, the identity's primary key below) stops the second, which runs
                    # again and finds the first one's user.
                    user_id, is_new = new_user_id(), True
                    db.execute(
                        "INSERT INTO users (id, unionid, created_at) VALUES (?, ?, ?)",
                        (user_id, unionid, now),
                    )
                db.execute(
                    """INSERT INTO identities (appid, openid, user_id, session_key,
                    session_key_kid, session_key_updated_at, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)""",
                    (appid, openid, user_id, session_key.blob, session_key.kid, now, now),
                )
            db.execute(
                """INSERT INTO sessions (id, user_id, appid, openid, secret, secret_kid,
                counter, rotated_at, created_at, expires_at, client_id)
                VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?, ?, ?)""",
                (
                    session.id,
                    user_id,
                    appid,
                    openid,
                    session.secret.blob,
                    session.secret.kid,
                    now,
                    session.expires_at,
                    client_id,
                ),
            )
            if forget_codes_before is not None:
                db.execute("DELETE FROM login_codes WHERE created_at < ?", (forget_codes_before,))
            if code_hash is not None:
                db.execute(
                    """INSERT INTO login_codes (code_hash, session_id, is_new_user, created_at)
                    VALUES (?, ?, ?, ?) ON CONFLICT (code_hash) DO UPDATE SET
                    session_id = excluded.session_id, is_new_user = excluded.is_new_user,
                    created_at = excluded.created_at""",
                    (code_hash, session.id, int(is_new), now),
                )
            user = db.execute(f"{SELECT_USER} WHERE id = ?", (user_id,)).fetchone()
            return LoginOutcome(User(*user), is_new)

        return self._write(work)

    def find_login(self, code_hash: str, since: float) -> tuple[str, bool] | None:
        row = self._one(
            """SELECT session_id, is_new_user FROM login_codes
            WHERE code_hash = ? AND created_at > ?""",
            code_hash,
            since,
        )
        return None if row is None else (row[0], bool(row[1]))

    def get_session(self, sid: str) -> Session | None:
        row = self._one(SELECT_SESSION, sid)
        return None if row is None else _session(row)

    def get_profile(self, sid: str) -> Profile | None:
        rows = self._all(SELECT_PROFILE, sid)
        if not rows:
            return None
        first = rows[0]
        user_end = SESSION_COLUMNS + USER_COLUMNS
        return Profile(
            session=_session(first[:SESSION_COLUMNS]),
            user=User(*first[SESSION_COLUMNS:user_end]),
            phones=tuple(_identity(row[user_end:]) for row in rows if row[user_end] is not None),
        )

    def advance_session(self, sid: str, counter: int, now: float) -> bool:
        # One conditional statement: of racing callers, the row lock lets one through and the
        # others re-check `counter = ?` against its result and match nothing.
        return self._write(
            lambda db: (
                db.execute(
                    """UPDATE sessions SET counter = counter + 1, rotated_at = ?
                WHERE id = ? AND counter = ? AND revoked_at IS NULL""",
                    (now, sid, counter),
                ).rowcount
                == 1
            )
        )

    def revoke_user_sessions(self, user_id: str, now: float) -> int:
        return self._write(
            lambda db: (
                db.execute(
                    """UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL
                AND expires_at > ?""",
                    (now, user_id, now),
                ).rowcount
            )
        )

    def revoke_session(self, sid: str, now: float) -> None:
        self._write(
            lambda db: db.execute(
                "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, sid),
            )
        )

    def get_user(self, user_id: str) -> User | None:
        row = self._one(f"{SELECT_USER} WHERE id = ?", user_id)
        return None if row is None else User(*row)

    def get_identity(self, appid: str, openid: str) -> Identity | None:
        row = self._one(f"{SELECT_IDENTITY} WHERE appid = ? AND openid = ?", appid, openid)
        return None if row is None else _identity(row)

    def identities_of(self, user_id: str) -> list[Identity]:
        rows = self._all(f"{SELECT_IDENTITY} WHERE user_id = ? ORDER BY created_at", user_id)
        return [_identity(row) for row in rows]

    # -- what WeChat user data reveals

    def link_unionid(self, appid: str, openid: str, unionid: str) -> str:
        def work(db: Executor) -> str:
            row = db.execute(
                "SELECT user_id FROM identities WHERE appid = ? AND openid = ?", (appid, openid)
            ).fetchone()
            if row is None:
                raise LookupError(f"no identity ({appid}, {openid})")
            return _link_unionid(db, row[0], unionid)

        return self._write(work)

    def update_profile(self, user_id: str, nickname: str | None, avatar_url: str | None) -> None:
        self._write(
            lambda db: db.execute(
                """UPDATE users SET nickname = COALESCE(?, nickname),
                avatar_url = COALESCE(?, avatar_url) WHERE id = ?""",
                (nickname, avatar_url, user_id),
            )
        )

    def set_phone(
        self, appid: str, openid: str, phone: Sealed, country_code: str | None, now: float
    ) -> None:
        self._write(
            lambda db: db.execute(
                """UPDATE identities SET phone = ?, phone_kid = ?, country_code = ?,
                phone_updated_at = ? WHERE appid = ? AND openid = ?""",
                (phone.blob, phone.kid, country_code, now, appid, openid),
            )
        )

    # -- what the user fills in (profile, avatar) and account deletion

    def edit_profile(
        self, user_id: str, *, nickname: str | None, avatar_url: str | None, keep_avatar: str | None
    ) -> bool:
        def work(db: Executor) -> bool:
            changed = db.execute(
                """UPDATE users SET nickname = COALESCE(?, nickname),
                avatar_url = COALESCE(?, avatar_url) WHERE id = ?""",
                (nickname, avatar_url, user_id),
            ).rowcount
            if changed and avatar_url is not None:
                db.execute(
                    "DELETE FROM avatars WHERE user_id = ? AND id IS DISTINCT FROM ?",
                    (user_id, keep_avatar),
                )
            return changed == 1

        return self._write(work)

    def put_avatar(self, avatar: StoredAvatar, avatar_url: str) -> bool:
        def work(db: Executor) -> bool:
            if not db.execute(
                "UPDATE users SET avatar_url = ? WHERE id = ?", (avatar_url, avatar.user_id)
            ).rowcount:
                return False
            db.execute(
                """INSERT INTO avatars (id, user_id, content_type, image, created_at)
                VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING""",
                (avatar.id, avatar.user_id, avatar.content_type, avatar.image, avatar.created_at),
            )
            db.execute(
                "DELETE FROM avatars WHERE user_id = ? AND id != ?", (avatar.user_id, avatar.id)
            )
            return True

        return self._write(work)

    def get_avatar(self, avatar_id: str) -> StoredAvatar | None:
        row = self._one(
            "SELECT id, user_id, content_type, image, created_at FROM avatars WHERE id = ?",
            avatar_id,
        )
        if row is None:
            return None
        return StoredAvatar(row[0], row[1], row[2], bytes(row[3]), row[4])

    def delete_user(self, user_id: str) -> bool:
        def work(db: Executor) -> bool:
            if db.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
                return False
            # A merge points every absorbed user at the survivor directly, so one level holds
            # them all; the loop also covers a chain a future merge rule might leave.
            doomed, frontier = [user_id], [user_id]
            while frontier:
                found = [
                    row[0]
                    for parent in frontier
                    for row in db.execute(
                        "SELECT id FROM users WHERE merged_into = ?", (parent,)
                    ).fetchall()
                ]
                frontier = [found_id for found_id in found if found_id not in doomed]
                doomed.extend(frontier)
            # Children before parents: the foreign keys hold at every statement.
            for doomed_id in doomed:
                db.execute(
                    """DELETE FROM login_codes WHERE session_id IN
                    (SELECT id FROM sessions WHERE user_id = ?)""",
                    (doomed_id,),
                )
                db.execute("DELETE FROM sessions WHERE user_id = ?", (doomed_id,))
                db.execute("DELETE FROM avatars WHERE user_id = ?", (doomed_id,))
                db.execute("DELETE FROM identities WHERE user_id = ?", (doomed_id,))
            for doomed_id in reversed(doomed):
                db.execute("DELETE FROM users WHERE id = ?", (doomed_id,))
            return True

        return self._write(work)

    # -- WeChat server access tokens

    def get_server_token(self, appid: str) -> ServerToken | None:
        row = self._one(
            """SELECT appid, token, token_kid, expires_at, fetched_at, lease_until
            FROM server_tokens WHERE appid = ?""",
            appid,
        )
        if row is None:
            return None
        appid_, blob, kid, expires_at, fetched_at, lease_until = row
        sealed = Sealed(kid, bytes(blob)) if blob is not None else None
        return ServerToken(appid_, sealed, expires_at, fetched_at, lease_until)

    def take_server_token_lease(
        self, appid: str, owner: str, now: float, until: float, seen_fetched_at: float | None
    ) -> bool:
        def work(db: Executor) -> bool:
            db.execute(
                "INSERT INTO server_tokens (appid) VALUES (?) ON CONFLICT (appid) DO NOTHING",
                (appid,),
            )
            cursor = db.execute(
                """UPDATE server_tokens SET lease_owner = ?, lease_until = ?
                WHERE appid = ? AND (lease_until IS NULL OR lease_until <= ?)
                AND fetched_at IS NOT DISTINCT FROM ?""",
                (owner, until, appid, now, seen_fetched_at),
            )
            return cursor.rowcount == 1

        return self._write(work)

    def put_server_token(self, appid: str, token: Sealed, expires_at: float, now: float) -> None:
        self._write(
            lambda db: db.execute(
                """UPDATE server_tokens SET token = ?, token_kid = ?, expires_at = ?,
                fetched_at = ?, lease_owner = NULL, lease_until = NULL WHERE appid = ?""",
                (token.blob, token.kid, expires_at, now, appid),
            )
        )

    def release_server_token_lease(self, appid: str, owner: str) -> None:
        self._write(
            lambda db: db.execute(
                """UPDATE server_tokens SET lease_owner = NULL, lease_until = NULL
                WHERE appid = ? AND lease_owner = ?""",
                (appid, owner),
            )
        )

    # -- maintenance

    def prune(self, now: float) -> dict[str, int]:
        def work(db: Executor) -> dict[str, int]:
            codes = db.execute(
                """DELETE FROM login_codes WHERE created_at < ? OR session_id IN
                (SELECT id FROM sessions WHERE expires_at <= ? OR revoked_at IS NOT NULL)""",
                (now - LOGIN_CODE_MEMORY, now),
            ).rowcount
            sessions = db.execute(
                "DELETE FROM sessions WHERE expires_at <= ? OR revoked_at IS NOT NULL", (now,)
            ).rowcount
            prune_web_login_rows(db, now)  # expired web login requests, codes and tickets
            return {"sessions": sessions, "login_codes": codes}

        return self._write(work)

    def live_sessions(self, user_id: str, now: float) -> int:
        row = self._one(
            """SELECT count(*) FROM sessions WHERE user_id = ? AND revoked_at IS NULL
            AND expires_at > ?""",
            user_id,
            now,
        )
        return int(row[0]) if row else 0

    def sealed_rows(self, not_kid: str, limit: int) -> list[SealedRow]:
        def work(db: Executor) -> list[SealedRow]:
            rows: list[SealedRow] = []
            for kind, (table, keys, blob, kid) in SEALED_COLUMNS.items():
                found = db.execute(
                    f"SELECT {', '.join(keys)}, {blob}, {kid} FROM {table} "  # noqa: S608
                    f"WHERE {blob} IS NOT NULL AND {kid} != ? LIMIT ?",
                    (not_kid, limit - len(rows)),
                ).fetchall()
                for row in found:
                    rows.append(
                        SealedRow(kind, tuple(row[: len(keys)]), Sealed(row[-1], bytes(row[-2])))
                    )
                if len(rows) >= limit:
                    break
            return rows

        return self._run(work, write=False)

    def replace_sealed(self, row: SealedRow, new: Sealed) -> bool:
        table, keys, blob, kid = SEALED_COLUMNS[row.kind]
        match = " AND ".join(f"{column} = ?" for column in keys)
        return self._write(
            lambda db: (
                db.execute(
                    f"UPDATE {table} SET {blob} = ?, {kid} = ? "  # noqa: S608
                    f"WHERE {match} AND {blob} = ? AND {kid} = ?",
                    (new.blob, new.kid, *row.key, row.sealed.blob, row.sealed.kid),
                ).rowcount
                == 1
            )
        )

    def sealed_kid_counts(self) -> dict[str, int]:
        def work(db: Executor) -> dict[str, int]:
            counts: dict[str, int] = {}
            for table, _, blob, kid in SEALED_COLUMNS.values():
                for key_id, count in db.execute(
                    f"SELECT {kid}, count(*) FROM {table} "  # noqa: S608
                    f"WHERE {blob} IS NOT NULL GROUP BY {kid}"
                ).fetchall():
                    counts[key_id] = counts.get(key_id, 0) + count
            return counts

        return self._run(work, write=False)

    # -- data key check values

    def data_key_checks(self) -> dict[str, bytes]:
        return {
            kid: bytes(value)
            for kid, value in self._all("SELECT kid, check_value FROM data_key_checks")
        }

    def add_data_key_check(self, kid: str, check_value: bytes, now: float) -> None:
        self._write(
            lambda db: db.execute(
                """INSERT INTO data_key_checks (kid, check_value, created_at) VALUES (?, ?, ?)
                ON CONFLICT (kid) DO NOTHING""",
                (kid, check_value, now),
            )
        )

    def drop_data_key_check(self, kid: str) -> None:
        self._write(lambda db: db.execute("DELETE FROM data_key_checks WHERE kid = ?", (kid,)))


def _session(row: Sequence[Any]) -> Session:
    (id_, user_id, appid, openid, unionid, secret, secret_kid, counter, rotated_at,
     created_at, expires_at, revoked_at, client_id) = row  # fmt: skip
    return Session(
        id=id_,
        user_id=user_id,
        appid=appid,
        openid=openid,
        unionid=unionid,
        secret=Sealed(secret_kid, bytes(secret)),
        counter=counter,
        rotated_at=rotated_at,
        created_at=created_at,
        expires_at=expires_at,
        revoked_at=revoked_at,
        client_id=client_id,
    )


def _identity(row: Sequence[Any]) -> Identity:
    (appid, openid, user_id, blob, kid, created_at, updated_at,
     phone, phone_kid, country_code, phone_updated_at) = row  # fmt: skip
    return Identity(
        appid=appid,
        openid=openid,
        user_id=user_id,
        session_key=Sealed(kid, bytes(blob)),
        created_at=created_at,
        session_key_updated_at=updated_at,
        phone=Sealed(phone_kid, bytes(phone)) if phone is not None else None,
        country_code=country_code,
        phone_updated_at=phone_updated_at,
    )


def _link_unionid(db: Executor, user_id: str, unionid: str) -> str:
    """Give ``user_id`` its unionid, merging it into the user who already holds it.

    The holder of the unionid survives: it is the user other apps already know by that
    unionid. The other user's identities and live sessions move to it (its refresh tokens keep
    working and mint tokens with the surviving ``sub``); the absorbed row stays as a
    tombstone with ``merged_into`` set. A user that already has a *different* unionid is left
    alone: WeChat gives one person one unionid, so that is a conflict, not a merge.

    Only a user with no unionid and no ``merged_into`` is ever changed here, and the statement
    that changes it says so in its ``WHERE``: if a concurrent writer gave it a unionid or
    absorbed it after it was read, that statement matches nothing and the transaction runs
    again (:class:`Conflict`) on what is now true. A holder (it has a unionid) is never
    absorbed, so the survivor cannot move under the merge.

    :returns: the id of the user the identity belongs to afterwards.
    :raises Conflict: what was read changed before it could be written.
    """
    current = db.execute(
        "SELECT unionid, merged_into FROM users WHERE id = ?", (user_id,)
    ).fetchone()
    if current is None or current[0] is not None:
        return user_id  # unknown, already this unionid, or a different one: nothing to do
    if current[1] is not None:
        # Absorbed after the caller read its identity: the identity belongs elsewhere now.
        raise Conflict(f"user {user_id} was merged meanwhile")
    untouched = "id = ? AND unionid IS NULL AND merged_into IS NULL"
    holder = db.execute("SELECT id FROM users WHERE unionid = ?", (unionid,)).fetchone()
    if holder is None:
        if (
            db.execute(
                f"UPDATE users SET unionid = ? WHERE {untouched}",  # noqa: S608
                (unionid, user_id),
            ).rowcount
            != 1
        ):
            raise Conflict(f"user {user_id} changed meanwhile")
        return user_id
    survivor: str = holder[0]
    # The absorbed user first: its row lock keeps a concurrent link of it waiting until the
    # merge is over (and then finding it absorbed).
    if (
        db.execute(
            f"UPDATE users SET merged_into = ? WHERE {untouched}",  # noqa: S608
            (survivor, user_id),
        ).rowcount
        != 1
    ):
        raise Conflict(f"user {user_id} changed meanwhile")
    db.execute("UPDATE users SET merged_into = ? WHERE merged_into = ?", (survivor, user_id))
    db.execute("UPDATE identities SET user_id = ? WHERE user_id = ?", (survivor, user_id))
    db.execute("UPDATE sessions SET user_id = ? WHERE user_id = ?", (survivor, user_id))
    db.execute("UPDATE avatars SET user_id = ? WHERE user_id = ?", (survivor, user_id))
    db.execute(
        """UPDATE users SET
        nickname = COALESCE(nickname, (SELECT nickname FROM users WHERE id = ?)),
        avatar_url = COALESCE(avatar_url, (SELECT avatar_url FROM users WHERE id = ?))
        WHERE id = ?""",
        (user_id, user_id, survivor),
    )
    return survivor
