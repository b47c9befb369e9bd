"""SQLite backend of :class:`issuer.store.Store`: one file, WAL mode, one connection per thread.

Durability: ``synchronous=FULL``, so a committed rotation survives a power cut as well as a
``kill -9`` -- a client never holds a refresh token the database has forgotten. Writers take
the lock up front (``BEGIN IMMEDIATE``) so concurrent logins and refreshes queue instead of
failing half-way; a writer that cannot get it within the busy timeout raises
:class:`StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from ..sealing import Sealed
from . import (
    Identity,
    LoginOutcome,
    NewSession,
    SealedRow,
    ServerToken,
    Session,
    StoreUnavailable,
    User,
)

BUSY_TIMEOUT_SECONDS = 5.0

# Each entry moves the schema one version up; `PRAGMA user_version` says where a file stands.
# Never edit a released entry: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            unionid TEXT UNIQUE,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE identities (
            appid TEXT NOT NULL,
            openid TEXT NOT NULL,
            user_id TEXT NOT NULL REFERENCES users(id),
            session_key BLOB NOT NULL,
            session_key_kid TEXT NOT NULL,
            session_key_updated_at REAL NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (appid, openid)
        ) WITHOUT ROWID""",
        "CREATE INDEX identities_user ON identities(user_id)",
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(id),
            appid TEXT NOT NULL,
            openid TEXT NOT NULL,
            secret BLOB NOT NULL,
            secret_kid TEXT NOT NULL,
            counter INTEGER NOT NULL DEFAULT 0,
            rotated_at REAL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            revoked_at REAL,
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
        "ALTER TABLE identities ADD COLUMN phone BLOB",
        "ALTER TABLE identities ADD COLUMN phone_kid TEXT",
        "ALTER TABLE identities ADD COLUMN country_code TEXT",
        "ALTER TABLE identities ADD COLUMN phone_updated_at REAL",
        # Completed code exchanges, by a hash of the code, for the login retry window.
        """CREATE TABLE login_codes (
            code_hash TEXT PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions(id),
            is_new_user INTEGER NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX login_codes_created ON login_codes(created_at)",
        # WeChat server access tokens, shared by every worker and host, with a refresh lease.
        """CREATE TABLE server_tokens (
            appid TEXT PRIMARY KEY,
            token BLOB,
            token_kid TEXT,
            expires_at REAL,
            fetched_at REAL,
            lease_owner TEXT,
            lease_until REAL
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

SELECT_SESSION = """SELECT s.id, s.user_id, s.appid, s.openid, u.unionid, s.secret,
    s.secret_kid, s.counter, s.rotated_at, s.created_at, s.expires_at, s.revoked_at
    FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?"""


def new_user_id() -> str:
    """``usr_`` + 128 random bits. The prefix says what the id is in a log line, and keeps an
    id from starting with ``-``, which a command line would take for an option."""
    return "usr_" + secrets.token_urlsafe(16)


class SQLiteStore:
    """A :class:`issuer.store.Store` on one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative/path`` (to the working directory) or ``sqlite:////abs/path``."""
        return cls(Path(url.removeprefix("sqlite:///")))

    # -- connections

    def _connection(self, *, create: bool = False) -> sqlite3.Connection:
        # Keyed by pid too: a connection must never cross a fork (gunicorn --preload).
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            return connection
        # Only migrate() may create the file: a database that vanished while serving must
        # read as unavailable, not be silently replaced by an empty one.
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = "rwc" if create else "rw"
        connection = sqlite3.connect(
            f"file:{quote(str(self.path.absolute()))}?mode={mode}",
            uri=True,
            timeout=BUSY_TIMEOUT_SECONDS,
            isolation_level=None,
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as error:
            # Locked past the busy timeout, read-only, disk full, file gone: all transient
            # from the client's side. The driver's text stays out of the response.
            self.close()
            raise StoreUnavailable(f"SQLite: {error}") from error

    @contextlib.contextmanager
    def _transaction(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        with self._guard():
            connection = self._connection(create=create)
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _read(self, sql: str, *params: object) -> sqlite3.Row | None:
        with self._guard():
            connection = self._connection()
            row: sqlite3.Row | None = connection.execute(sql, params).fetchone()
            return row

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    # -- schema

    def migrate(self) -> int:
        with self._transaction(create=True) as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"database schema {version} is newer than this issuer ({SCHEMA_VERSION})"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return SCHEMA_VERSION

    def ping(self) -> None:
        self._read("SELECT 1")

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
    ) -> LoginOutcome:
        with self._transaction() as db:
            row = db.execute(
                "SELECT user_id FROM identities WHERE appid = ? AND openid = ?", (appid, openid)
            ).fetchone()
            if row is not None:
                user_id, is_new = row[0], False
                db.execute(
                    """UPDATE identities SET session_key = ?, session_key_kid = ?,
                    session_key_updated_at = ? WHERE appid = ? AND openid = ?""",
                    (session_key.blob, session_key.kid, now, appid, openid),
                )
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
                counter, rotated_at, created_at, expires_at)
                VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?, ?)""",
                (
                    session.id,
                    user_id,
                    appid,
                    openid,
                    session.secret.blob,
                    session.secret.kid,
                    now,
                    session.expires_at,
                ),
            )
            if forget_codes_before is not None:
                db.execute("DELETE FROM login_codes WHERE created_at < ?", (forget_codes_before,))
            if code_hash is not None:
                db.execute(
                    """INSERT OR REPLACE INTO login_codes (code_hash, session_id, is_new_user,
                    created_at) VALUES (?, ?, ?, ?)""",
                    (code_hash, session.id, int(is_new), now),
                )
            user = db.execute(f"{SELECT_USER} WHERE id = ?", (user_id,)).fetchone()
        return LoginOutcome(User(*user), is_new)

    def find_login(self, code_hash: str, since: float) -> tuple[str, bool] | None:
        row = self._read(
            """SELECT session_id, is_new_user FROM login_codes
            WHERE code_hash = ? AND created_at > ?""",
            code_hash,
            since,
        )
        return None if row is None else (row[0], bool(row[1]))

    def get_session(self, sid: str) -> Session | None:
        row = self._read(SELECT_SESSION, sid)
        if row is None:
            return None
        (id_, user_id, appid, openid, unionid, secret, secret_kid, counter, rotated_at,
         created_at, expires_at, revoked_at) = row  # fmt: skip
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
        )

    def advance_session(self, sid: str, counter: int, now: float) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                """UPDATE sessions SET counter = counter + 1, rotated_at = ?
                WHERE id = ? AND counter = ? AND revoked_at IS NULL""",
                (now, sid, counter),
            )
            return cursor.rowcount == 1

    def revoke_session(self, sid: str, now: float) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, sid),
            )

    def get_user(self, user_id: str) -> User | None:
        row = self._read(f"{SELECT_USER} WHERE id = ?", user_id)
        return None if row is None else User(*row)

    def get_identity(self, appid: str, openid: str) -> Identity | None:
        row = self._read(f"{SELECT_IDENTITY} WHERE appid = ? AND openid = ?", appid, openid)
        return None if row is None else _identity(row)

    def identities_of(self, user_id: str) -> list[Identity]:
        with self._guard():
            rows = (
                self._connection()
                .execute(f"{SELECT_IDENTITY} WHERE user_id = ? ORDER BY created_at", (user_id,))
                .fetchall()
            )
        return [_identity(row) for row in rows]

    # -- what WeChat user data reveals

    def link_unionid(self, appid: str, openid: str, unionid: str) -> str:
        with self._transaction() as db:
            row = db.execute(
                "SELECT user_id FROM identities WHERE appid = ? AND openid = ?", (appid, openid)
            ).fetchone()
            if row is None:
                raise LookupError(f"no identity ({appid}, {openid})")
            return _link_unionid(db, row[0], unionid)

    def update_profile(self, user_id: str, nickname: str | None, avatar_url: str | None) -> None:
        with self._transaction() as db:
            db.execute(
                """UPDATE users SET nickname = COALESCE(?, nickname),
                avatar_url = COALESCE(?, avatar_url) WHERE id = ?""",
                (nickname, avatar_url, user_id),
            )

    def set_phone(
        self, appid: str, openid: str, phone: Sealed, country_code: str | None, now: float
    ) -> None:
        with self._transaction() as db:
            db.execute(
                """UPDATE identities SET phone = ?, phone_kid = ?, country_code = ?,
                phone_updated_at = ? WHERE appid = ? AND openid = ?""",
                (phone.blob, phone.kid, country_code, now, appid, openid),
            )

    # -- WeChat server access tokens

    def get_server_token(self, appid: str) -> ServerToken | None:
        row = self._read(
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
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO server_tokens (appid) VALUES (?)", (appid,))
            cursor = db.execute(
                """UPDATE server_tokens SET lease_owner = ?, lease_until = ?
                WHERE appid = ? AND (lease_until IS NULL OR lease_until <= ?)
                AND fetched_at IS ?""",
                (owner, until, appid, now, seen_fetched_at),
            )
            return cursor.rowcount == 1

    def put_server_token(self, appid: str, token: Sealed, expires_at: float, now: float) -> None:
        with self._transaction() as db:
            db.execute(
                """UPDATE server_tokens SET token = ?, token_kid = ?, expires_at = ?,
                fetched_at = ?, lease_owner = NULL, lease_until = NULL WHERE appid = ?""",
                (token.blob, token.kid, expires_at, now, appid),
            )

    # -- maintenance

    def prune(self, now: float) -> dict[str, int]:
        with self._transaction() as db:
            codes = db.execute(
                """DELETE FROM login_codes WHERE created_at < ? OR session_id IN
                (SELECT id FROM sessions WHERE expires_at <= ? OR revoked_at IS NOT NULL)""",
                (now - LOGIN_CODE_MEMORY, now),
            ).rowcount
            sessions = db.execute(
                "DELETE FROM sessions WHERE expires_at <= ? OR revoked_at IS NOT NULL", (now,)
            ).rowcount
        return {"sessions": sessions, "login_codes": codes}

    def live_sessions(self, user_id: str, now: float) -> int:
        row = self._read(
            """SELECT count(*) FROM sessions WHERE user_id = ? AND revoked_at IS NULL
            AND expires_at > ?""",
            user_id,
            now,
        )
        return int(row[0]) if row else 0

    def sealed_rows(self, not_kid: str, limit: int) -> list[SealedRow]:
        rows: list[SealedRow] = []
        with self._guard():
            db = self._connection()
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

    def replace_sealed(self, row: SealedRow, new: Sealed) -> bool:
        table, keys, blob, kid = SEALED_COLUMNS[row.kind]
        match = " AND ".join(f"{column} = ?" for column in keys)
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE {table} SET {blob} = ?, {kid} = ? "  # noqa: S608
                f"WHERE {match} AND {blob} = ? AND {kid} = ?",
                (new.blob, new.kid, *row.key, row.sealed.blob, row.sealed.kid),
            )
            return cursor.rowcount == 1

    def sealed_kid_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._guard():
            db = self._connection()
            for table, _, blob, kid in SEALED_COLUMNS.values():
                for key_id, count in db.execute(
                    f"SELECT {kid}, count(*) FROM {table} "  # noqa: S608
                    f"WHERE {blob} IS NOT NULL GROUP BY {kid}"
                ):
                    counts[key_id] = counts.get(key_id, 0) + count
        return counts

    def release_server_token_lease(self, appid: str, owner: str) -> None:
        with self._transaction() as db:
            db.execute(
                """UPDATE server_tokens SET lease_owner = NULL, lease_until = NULL
                WHERE appid = ? AND lease_owner = ?""",
                (appid, owner),
            )


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

SELECT_USER = "SELECT id, unionid, created_at, nickname, avatar_url, merged_into FROM users"
SELECT_IDENTITY = """SELECT appid, openid, user_id, session_key, session_key_kid, created_at,
    session_key_updated_at, phone, phone_kid, country_code, phone_updated_at FROM identities"""


def _identity(row: sqlite3.Row) -> Identity:
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


def _link_unionid(db: sqlite3.Connection, user_id: str, unionid: str) -> str:
    """Give ``user_id`` its unionid, merging it into the user who already holds it.

    The holder of the unionid survives: it is the user other apps already know by that
    unionid. The other user's identities and live sessions move to it (its refresh tokens keep
    working and mint tokens with the surviving ``sub``); the absorbed row stays as a
    tombstone with ``merged_into`` set. A user that already has a *different* unionid is left
    alone: WeChat gives one person one unionid, so that is a conflict, not a merge.

    :returns: the id of the user the identity belongs to afterwards.
    """
    current = db.execute("SELECT unionid FROM users WHERE id = ?", (user_id,)).fetchone()
    if current is None or current[0] == unionid:
        return user_id
    if current[0] is not None:
        return user_id
    holder = db.execute("SELECT id FROM users WHERE unionid = ?", (unionid,)).fetchone()
    if holder is None:
        db.execute("UPDATE users SET unionid = ? WHERE id = ?", (unionid, user_id))
        return user_id
    survivor: str = holder[0]
    db.execute("UPDATE identities SET user_id = ? WHERE user_id = ?", (survivor, user_id))
    db.execute("UPDATE sessions SET user_id = ? WHERE user_id = ?", (survivor, user_id))
    db.execute(
        """UPDATE users SET
        nickname = COALESCE(nickname, (SELECT nickname FROM users WHERE id = ?)),
        avatar_url = COALESCE(avatar_url, (SELECT avatar_url FROM users WHERE id = ?))
        WHERE id = ?""",
        (user_id, user_id, survivor),
    )
    db.execute(
        "UPDATE users SET merged_into = ? WHERE id = ? OR merged_into = ?",
        (survivor, user_id, user_id),
    )
    return survivor
