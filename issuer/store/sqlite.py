"""SQLite dialect of :class:`issuer.store.sql.SQLStore`: one file, WAL mode, one connection per
thread.

Durability: ``synchronous=FULL``, so a committed rotation survives a power cut as well as a
``kill -9`` -- a client never holds a refresh token the database has forgotten. Writers take
the lock up front (``BEGIN IMMEDIATE``) so concurrent logins and refreshes queue instead of
failing half-way; a writer that cannot get it within the busy timeout raises
:class:`StoreUnavailable`. The schema version is ``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, TypeVar
from urllib.parse import quote

from . import StoreUnavailable
from .sql import SCHEMA_VERSION as SCHEMA_VERSION
from .sql import Executor, SQLStore

T = TypeVar("T")
log = logging.getLogger("issuer.store")

BUSY_TIMEOUT_SECONDS = 5.0
# The shared SQL needs `IS NOT DISTINCT FROM` (3.39), `RETURNING` (3.35) and upserts (3.24).
MINIMUM_SQLITE = (3, 39)


def create_private(path: Path) -> None:
    """Make the database's missing directories (0700) and the file itself (0600), whatever
    the umask: it holds sealed secrets, for the service's user only.

    SQLite gives the ``-wal`` and ``-shm`` files the database file's mode, so they follow it.
    Directories that already exist (the working directory, ``/tmp``) are the operator's and
    keep their mode; a database file or sidecar that exists is narrowed to 0600.
    """
    missing: list[Path] = []
    parent = path.absolute().parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process just made it
            directory.mkdir(mode=0o700)
            os.chmod(directory, 0o700)  # mkdir's mode passes through the umask
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(PermissionError):  # a file of another user: left as it is
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for sidecar in (f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.chmod(sidecar, 0o600)


class SQLiteStore(SQLStore):
    """A :class:`issuer.store.Store` on one SQLite file."""

    COLUMN_TYPES: ClassVar[dict[str, str]] = {
        "blob": "BLOB",
        "real": "REAL",
        "without_rowid": " WITHOUT ROWID",
    }

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
            create_private(self.path)
        mode = "rwc" if create else "rw"
        connection = sqlite3.connect(
            f"file:{quote(str(self.path.absolute()))}?mode={mode}",
            uri=True,
            timeout=BUSY_TIMEOUT_SECONDS,
            isolation_level=None,
        )
        try:
            _use_wal(connection)
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error:
            connection.close()
            raise
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

    def _run(self, work: Callable[[Executor], T], *, write: bool, create: bool = False) -> T:
        with self._guard():
            connection = self._connection(create=create)
            if not write:
                return work(connection)
            # Writers queue here, for up to the busy timeout: nothing they read can change
            # before they commit, so no write transaction ever has to run again.
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

    def delete_user(self, user_id: str) -> bool:
        """:meth:`SQLStore.delete_user`, leaving none of the user's bytes in the files.

        A deleted row's bytes would otherwise linger in the page's free space, in freed
        pages, and in old frames of the ``-wal`` file. ``secure_delete`` (for this one
        transaction) makes SQLite zero what it deletes; the ``TRUNCATE`` checkpoint then
        copies the zeroed pages into the main file and empties the ``-wal``. Both cost only
        the deleting request (a few milliseconds, ``docs/userdata.md``). A reader holding an
        old snapshot past the busy timeout leaves the checkpoint partial: the next
        checkpoint finishes the job, and the command says so in the log.
        """
        with self._guard():
            connection = self._connection()
            # Debian's and Python's SQLite builds default to ON, upstream's to OFF: restore
            # whatever this build does for every other delete.
            previous = int(connection.execute("PRAGMA secure_delete").fetchone()[0])
            connection.execute("PRAGMA secure_delete=ON")
        try:
            deleted = super().delete_user(user_id)
        finally:
            with contextlib.suppress(sqlite3.Error):
                connection.execute(f"PRAGMA secure_delete={previous}")
        if deleted:
            with self._guard():
                busy = self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy and busy[0]:
                log.warning(
                    "checkpoint after deleting %s was partial; a later one ends it", user_id
                )
        return deleted

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    # -- schema

    def _migrating(self, work: Callable[[Executor], T]) -> T:
        if sqlite3.sqlite_version_info < MINIMUM_SQLITE:
            needed = ".".join(map(str, MINIMUM_SQLITE))
            raise StoreUnavailable(
                f"SQLite {sqlite3.sqlite_version} is too old: issuer needs {needed} or newer"
            )
        return self._run(work, write=True, create=True)

    def _schema_version(self, db: Executor) -> int:
        version: int = db.execute("PRAGMA user_version", ()).fetchone()[0]
        return version

    def _set_schema_version(self, db: Executor, version: int) -> None:
        db.execute(f"PRAGMA user_version = {int(version)}", ())


def _use_wal(connection: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so), waiting up to the busy timeout for the lock.

    Switching a file to WAL takes an exclusive lock for which SQLite does not call the busy
    handler, so several processes opening a new file at once (every worker of a fleet
    migrating at start-up) would see "database is locked" at once: wait here instead.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
