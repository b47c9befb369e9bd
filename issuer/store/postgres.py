"""PostgreSQL dialect of :class:`issuer.store.sql.SQLStore`, for fleets of issuer hosts.

``ISSUER_DATABASE_URL=postgresql://user:password@host:port/dbname?param=value`` (or
``postgres://``): any libpq connection parameter may ride in the query string.

Connections. One :class:`psycopg_pool.ConnectionPool` per process, opened at the first query
and keyed by ``os.getpid()``: gunicorn loads the app in its master and forks the workers, and
a socket must never be shared across a fork, so a child never touches a pool it inherited --
it opens its own. A call borrows a connection for one transaction (or one read) and gives it
back, so between calls no thread holds one. The pool is bounded (:data:`POOL_MAX_SIZE`), hands
out only connections that answered a round trip (a database restart leaves dead ones behind),
and gives up after :data:`POOL_TIMEOUT_SECONDS`, so a database that is down costs a request a
503 after a few seconds, not a hung worker. Every statement runs under
``statement_timeout`` (:data:`STATEMENT_TIMEOUT_SECONDS`), the counterpart of SQLite's busy
timeout: a writer stuck behind a lock gives up and answers 503.

Transactions run under the server's default isolation (READ COMMITTED): the shared SQL is
written so that racing writers end as SQLite's serialised ones do, and a transaction that
loses a race (unique violation, deadlock, serialization failure) runs again whole.

Migrations run on a connection of their own, without the statement timeout, in one
transaction that first takes ``pg_advisory_xact_lock``: every host of a fleet migrating at
start-up waits for the first, then finds the schema current. The version is the one row of
``schema_version``; DDL is transactional in PostgreSQL, so a migration lands whole or not at
all.

Durability is PostgreSQL's own: with its default ``synchronous_commit = on`` a commit returns
only once its WAL is flushed, so a rotation a client saw survives a crash of issuer or of the
database host.

The password of the URL is never in a message this module raises: the driver's text is
redacted before it reaches :class:`StoreUnavailable` (and so the log or a start-up error).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from . import StoreUnavailable
from .sql import Conflict, Cursor, Executor, SQLStore

T = TypeVar("T")

# A process holds at most this many connections unless told otherwise: the app passes
# ISSUER_DATABASE_POOL_SIZE, by default its thread count (ISSUER_THREADS), so no request
# thread waits for a connection another holds. A thread borrows one only for a transaction
# or a read (never while it waits on WeChat), so the pool fills only as far as requests
# really overlap; a fleet needs hosts x workers x the pool size of the server's
# max_connections (100 by default): lower the setting for large fleets.
POOL_MAX_SIZE = 8
# Kept open while idle, so a quiet worker answers its next request without a handshake.
POOL_MIN_SIZE = 1
# How long a call waits for a connection before the request gets a 503.
POOL_TIMEOUT_SECONDS = 3.0
# /readyz answers sooner: a probe has a short deadline of its own.
PING_TIMEOUT_SECONDS = 1.0
# libpq's connect_timeout (whole seconds; libpq takes 2 as its minimum) unless the URL sets it.
CONNECT_TIMEOUT_SECONDS = 3
# The pool retries a lost connection with a growing backoff for this long, then starts over
# at the next request: the backoff cannot grow past a few seconds, so issuer is serving again
# within seconds of the database coming back, however long it was away.
RECONNECT_TIMEOUT_SECONDS = 10.0
# Per statement; the URL's own ``options=-cstatement_timeout=…`` wins.
STATEMENT_TIMEOUT_SECONDS = 5.0
# Every issuer migrating one database takes this advisory lock (a fixed 64-bit key).
MIGRATION_LOCK = int.from_bytes(hashlib.sha256(b"issuer migrate").digest()[:8], "big", signed=True)

# A transaction that lost a race: run it again.
RETRYABLE = (errors.UniqueViolation, errors.SerializationFailure, errors.DeadlockDetected)
# The database cannot serve now: refused, auth failure, pool timeout or closed, admin
# shutdown, statement timeout (OperationalError); read-only, aborted transaction
# (InternalError); a connection that broke under the driver (InterfaceError).
UNAVAILABLE = (psycopg.OperationalError, psycopg.InternalError, psycopg.InterfaceError)


def parse_url(url: str) -> dict[str, Any]:
    """libpq's connection parameters of a ``postgresql://`` or ``postgres://`` URL.

    :raises ValueError: libpq cannot parse it; the reason never contains the password.
    """
    try:
        params: dict[str, Any] = conninfo_to_dict(url)
    except psycopg.Error as error:
        reason = redact(str(error), url_passwords(url))
        raise ValueError(f"is not a usable PostgreSQL URL: {reason}") from None
    return params


def url_passwords(url: str, params: dict[str, Any] | None = None) -> set[str]:
    """Every spelling of the URL's password: as written (percent-encoded) and decoded."""
    found: set[str] = set()
    try:
        raw = urlsplit(url).password
    except ValueError:
        raw = None
    if raw is None and "@" in url:
        # A URL urlsplit cannot take apart: take what stands between the last ":" and "@"
        # of the authority, so even a malformed URL's password is redacted.
        authority = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[0]
        raw = authority.split(":", 1)[1] if ":" in authority else None
    if raw:
        found |= {raw, unquote(raw)}
    if params and params.get("password"):
        found.add(str(params["password"]))
    return {item for item in found if item}


def redact(text: str, passwords: Iterable[str]) -> str:
    """``text`` on one line, each password replaced by ``***``."""
    for password in sorted(passwords, key=len, reverse=True):
        text = text.replace(password, "***")
    return " ".join(text.split())


@functools.lru_cache(maxsize=512)
def pyformat(sql: str) -> str:
    """The shared SQL's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled).

    The shared SQL never has a ``?`` inside a literal, so plain substitution is exact; the
    cache makes it once per distinct statement.
    """
    return sql.replace("%", "%%").replace("?", "%s")


class _Translating:
    """A psycopg connection that runs the shared ``?``-style SQL."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        # Always with a parameter sequence (even empty): psycopg then undoubles the "%%".
        return self._connection.execute(pyformat(sql), tuple(parameters))


class PostgresStore(SQLStore):
    """A :class:`issuer.store.Store` on a PostgreSQL database."""

    COLUMN_TYPES: ClassVar[dict[str, str]] = {
        "blob": "BYTEA",
        "real": "DOUBLE PRECISION",
        "without_rowid": "",
    }

    def __init__(self, url: str, *, pool_size: int | None = None) -> None:
        self._params = parse_url(url)
        self.pool_size = pool_size
        self._passwords = url_passwords(url, self._params)
        self._lock = threading.Lock()
        self._pool_in_use: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_pid = 0
        # Pools inherited from a parent process: kept referenced and never touched, so that
        # no finaliser ever runs on them here -- their sockets are the parent's.
        self._inherited: list[ConnectionPool[psycopg.Connection[Any]]] = []
        _track(self)

    @classmethod
    def from_url(cls, url: str, *, pool_size: int | None = None) -> PostgresStore:
        return cls(url, pool_size=pool_size)

    def __repr__(self) -> str:
        where = {key: self._params.get(key) for key in ("host", "port", "dbname")}
        return f"<PostgresStore {where}>"

    # -- connections

    def _connect_params(self, *, statement_timeout: bool) -> dict[str, Any]:
        """The URL's parameters plus issuer's defaults (the URL wins where it sets one)."""
        params = {
            "connect_timeout": str(CONNECT_TIMEOUT_SECONDS),
            "application_name": "issuer",
            **self._params,
        }
        if statement_timeout:
            # Ours first: libpq applies -c options in order, so the URL's own setting wins.
            ours = f"-c statement_timeout={int(STATEMENT_TIMEOUT_SECONDS * 1000)}"
            params["options"] = f"{ours} {self._params.get('options', '')}".strip()
        return params

    def _pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        pool = self._pool_in_use
        if pool is not None and self._pool_pid == os.getpid():
            return pool
        with self._lock:
            if self._pool_in_use is not None and self._pool_pid != os.getpid():
                self._forget_parent_pool()
            if self._pool_in_use is None:
                pool = ConnectionPool(
                    kwargs={"autocommit": True, **self._connect_params(statement_timeout=True)},
                    min_size=min(POOL_MIN_SIZE, self.pool_size or POOL_MAX_SIZE),
                    max_size=self.pool_size or POOL_MAX_SIZE,
                    timeout=POOL_TIMEOUT_SECONDS,
                    reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
                    # A round trip before a connection is handed out: after a database
                    # restart the idle ones are dead, and a request should not find out.
                    check=ConnectionPool.check_connection,
                    name="issuer",
                    open=False,
                )
                pool.open()
                self._pool_in_use, self._pool_pid = pool, os.getpid()
                _OPEN.add(self)
            return self._pool_in_use

    def _forget_parent_pool(self) -> None:
        """In a forked child: leave the parent's pool alone, open a new one when needed."""
        if self._pool_in_use is not None:
            self._inherited.append(self._pool_in_use)
        self._pool_in_use = None

    def close(self) -> None:
        """Close this process's pool: no connection stays open (at start-up, before gunicorn
        forks, and at exit). A call in flight finishes on the connection it holds; the next
        call opens a new pool."""
        with self._lock:
            pool, self._pool_in_use = self._pool_in_use, None
            mine = self._pool_pid == os.getpid()
            _OPEN.discard(self)
        if pool is not None and mine:
            pool.close()
        elif pool is not None:
            self._inherited.append(pool)

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        text = redact(str(error), self._passwords) or type(error).__name__
        return StoreUnavailable(f"PostgreSQL: {text}")

    def _run(
        self, work: Callable[[Executor], T], *, write: bool, timeout: float | None = None
    ) -> T:
        try:
            with self._pool().connection(timeout=timeout) as connection:
                if not write:
                    return work(_Translating(connection))
                with connection.transaction():
                    return work(_Translating(connection))
        except RETRYABLE as error:
            if write:
                raise Conflict(type(error).__name__) from error
            raise self._unavailable(error) from error
        except UNAVAILABLE as error:
            raise self._unavailable(error) from error

    def ping(self) -> None:
        self._run(
            lambda db: db.execute("SELECT 1").fetchone(), write=False, timeout=PING_TIMEOUT_SECONDS
        )

    # -- schema

    def _migrating(self, work: Callable[[Executor], T]) -> T:
        # Its own connection, not the pool: start-up (often in gunicorn's master, which then
        # forks) leaves nothing open behind, and a failure names the real cause (refused,
        # password, unknown database) instead of a pool timeout.
        try:
            with (
                psycopg.connect(
                    autocommit=True, **self._connect_params(statement_timeout=False)
                ) as connection,
                connection.transaction(),
            ):
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                return work(_Translating(connection))
        except (*RETRYABLE, *UNAVAILABLE) as error:
            raise self._unavailable(error) from error

    def _schema_version(self, db: Executor) -> int:
        found = db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if not found[0]:
            db.execute(
                """CREATE TABLE schema_version (
                    one_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one_row),
                    version INTEGER NOT NULL
                )"""
            )
            return 0
        row = db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def _set_schema_version(self, db: Executor, version: int) -> None:
        db.execute(
            """INSERT INTO schema_version (version) VALUES (?)
            ON CONFLICT (one_row) DO UPDATE SET version = excluded.version""",
            (version,),
        )


# -- every store of this process, for the fork and exit hooks

_STORES: weakref.WeakSet[PostgresStore] = weakref.WeakSet()
# Stores whose pool is open, held strongly until close(): a pool must be closed, never left to
# the garbage collector, which may run its finaliser in one of the pool's own threads (which
# then tries to join itself).
_OPEN: set[PostgresStore] = set()
_HOOKS_INSTALLED = False
_HOOKS_LOCK = threading.Lock()


def _track(store: PostgresStore) -> None:
    global _HOOKS_INSTALLED
    with _HOOKS_LOCK:
        _STORES.add(store)
        if not _HOOKS_INSTALLED:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            atexit.register(close_all)
            _HOOKS_INSTALLED = True


def _after_fork_in_child() -> None:
    # The child has one thread: a lock another thread of the parent held at the fork would
    # stay locked forever here, so each store gets a fresh one with its pool forgotten.
    _OPEN.clear()
    for store in list(_STORES):
        store._lock = threading.Lock()
        store._forget_parent_pool()


def close_all() -> None:
    """Close the pool of every PostgreSQL store of this process (at exit, and between tests):
    the server sees each connection end cleanly instead of a dropped socket."""
    for store in list(_OPEN):
        store.close()
