"""SQLite dialect of :class:`issuer.store.sql.SQLStore`: one file, WAL mode, one connection per
thread for reads, and one writer at a time per process committing for everyone waiting.

Writes: group commit. A thread with a write puts it in its process's queue. If no write is
being committed, the thread at the head of the queue becomes the *leader*: it takes every write
waiting, runs each inside its own ``SAVEPOINT`` of one ``BEGIN IMMEDIATE`` transaction, and
commits once -- one fsync for the whole group -- before any of them is answered. A write that
raises is rolled back to its savepoint and fails alone; the others commit. A failure of the
transaction itself (the lock not obtained within the busy timeout, a full disk, an I/O error
at ``COMMIT``) fails every write of the group with :class:`StoreUnavailable`, and none of them
was written. The leader then hands the queue to the next waiting thread, so writers are served
in arrival order and nobody polls.

Across processes (gunicorn workers, the CLI) the leaders queue on ``flock(2)`` of a lock file
beside the database before ``BEGIN IMMEDIATE``: the kernel wakes a waiter the moment the lock
is released, where SQLite's busy handler would sleep 1-100 ms while the lock often lies free.
SQLite's busy timeout is still there for writers that do not take the file lock (another
program on the same file) and bounds each holder's time: a holder keeps the file lock only for
one ``BEGIN IMMEDIATE`` ... ``COMMIT``, whose every step gives up after the busy timeout, and
the kernel drops the lock of a process that dies (``kill -9``).

Durability: ``synchronous=FULL`` in WAL mode, so the WAL is fsynced at each commit and a
rotation a client saw survives a power cut as well as a ``kill -9``. Group commit pays that
fsync once per group rather than once per request, which is why ``NORMAL`` (no fsync at
commit: a power cut may lose the last commits, a crash of the process loses nothing) buys
little here; ``docs/performance.md`` has the measurement. The schema version is
``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

from . import StoreUnavailable
from .sql import SCHEMA_VERSION as SCHEMA_VERSION
from .sql import Executor, SQLStore

T = TypeVar("T")
log = logging.getLogger("issuer.store")

BUSY_TIMEOUT_SECONDS = 5.0
# The shared SQL needs `IS NOT DISTINCT FROM` (3.39), `RETURNING` (3.35) and upserts (3.24).
MINIMUM_SQLITE = (3, 39)
# At most this many writes share one commit: bounds how long the first of them waits for the
# last (a write here is a handful of indexed statements, tens of microseconds each).
MAX_GROUP = 64
# The file processes queue on for the write lock, beside the database.
LOCK_SUFFIX = "-writer.lock"
# Page cache per connection, KiB (SQLite's default is 2000). Every gunicorn thread holds a
# connection, so SQLite's default costs a worker up to 64 MB at 32 threads (measured: 6 MB of
# RSS per worker under the bench); pages past this come from the operating system's cache,
# shared by every connection, and the top of each index stays cached.
CACHE_KIB = 256


class _Write:
    """One write waiting in the queue: its work, and what it came to."""

    __slots__ = ("done", "error", "result", "wake", "work")

    def __init__(self, work: Callable[[Executor], Any], lock: threading.Lock) -> None:
        self.work = work
        # Shares the queue's lock: a waiter sleeps until it is done or at the head.
        self.wake = threading.Condition(lock)
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class _WriteQueue:
    """The writes of one process, in arrival order, and whether one is being committed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: deque[_Write] = deque()
        self.leading = False
        self.pid = os.getpid()


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
        self.lock_path = path.with_name(path.name + LOCK_SUFFIX)
        self._local = threading.local()
        self._queue = _WriteQueue()

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
            connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        except sqlite3.Error:
            connection.close()
            raise
        self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.OperationalError, OSError) as error:
            # Locked past the busy timeout, read-only, disk full, file or folder gone: all
            # transient from the client's side. The driver's text stays out of the response.
            self.close()
            raise StoreUnavailable(f"SQLite: {error}") from error

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Hold the lock file, queueing in the kernel behind other processes' writers.

        A fresh descriptor each time: ``flock`` locks belong to the open file, which a fork
        would share and a moved database folder would leave pointing elsewhere.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _run(self, work: Callable[[Executor], T], *, write: bool) -> T:
        if not write:
            with self._guard():
                return work(self._connection())
        return self._submit(work)

    # -- group commit

    def _submit(self, work: Callable[[Executor], T]) -> T:
        """Queue ``work``; lead a group commit when it reaches the head; return its result once
        its group is committed. Raises what ``work`` raised, or :class:`StoreUnavailable`."""
        queue = self._queue
        if queue.pid != os.getpid():  # a forked child: the parent's queue is not ours
            queue = self._queue = _WriteQueue()
        write = _Write(work, queue.lock)
        with queue.lock:
            queue.pending.append(write)
            while not write.done and (queue.leading or queue.pending[0] is not write):
                write.wake.wait()
            if not write.done:
                queue.leading = True
                group = [queue.pending.popleft() for _ in range(min(MAX_GROUP, len(queue.pending)))]
        if not write.done:
            try:
                self._commit(group)
            finally:
                with queue.lock:
                    for member in group:
                        member.done = True
                        if member is not write:
                            member.wake.notify()
                    queue.leading = False
                    if queue.pending:
                        queue.pending[0].wake.notify()
        if write.error is not None:
            raise write.error
        result: T = write.result
        return result

    def _commit(self, group: list[_Write]) -> None:
        """Apply ``group`` in one transaction, each write in its own savepoint; commit once.
        Each write's outcome is set on it; only a BaseException (an interrupt) escapes."""
        try:
            with self._guard():
                connection = self._connection()
                with self._file_lock():
                    connection.execute("BEGIN IMMEDIATE")
                    try:
                        if len(group) == 1:
                            _apply_alone(connection, group[0])
                        else:
                            for write in group:
                                _apply_in_savepoint(connection, write)
                        connection.execute("COMMIT")
                    except BaseException:
                        if connection.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                connection.execute("ROLLBACK")
                        raise
        except BaseException as error:
            # Nothing of the group was written: each write that had not failed on its own
            # fails now, each with an exception of its own (they are raised in many threads).
            for write in group:
                if write.error is None:
                    write.result = None
                    write.error = _unavailable(error)
            if not isinstance(error, Exception):
                raise

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
        with self._guard():
            connection = self._connection(create=True)
            with self._file_lock():
                connection.execute("BEGIN IMMEDIATE")
                try:
                    result = work(connection)
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
                return result

    def _schema_version(self, db: Executor) -> int:
        version: int = db.execute("PRAGMA user_version", ()).fetchone()[0]
        return version

    def _set_schema_version(self, db: Executor, version: int) -> None:
        db.execute(f"PRAGMA user_version = {int(version)}", ())


def _apply_alone(connection: sqlite3.Connection, write: _Write) -> None:
    """A group of one: no savepoint needed, its failure is the transaction's."""
    try:
        write.result = write.work(connection)
    except sqlite3.OperationalError as error:
        write.error = _unavailable(error)
        raise
    except Exception as error:
        write.error = error
        raise


def _apply_in_savepoint(connection: sqlite3.Connection, write: _Write) -> None:
    """Run one write of a group; on failure undo it alone, unless SQLite undid everything."""
    connection.execute("SAVEPOINT write")
    try:
        write.result = write.work(connection)
    except Exception as error:
        write.result = None
        write.error = _unavailable(error) if isinstance(error, sqlite3.OperationalError) else error
        if not connection.in_transaction:
            # Some errors (I/O, full disk) make SQLite roll back the whole transaction: the
            # writes before this one are gone too, so the group fails.
            raise
        connection.execute("ROLLBACK TO write")
    connection.execute("RELEASE write")


def _unavailable(error: BaseException) -> StoreUnavailable:
    if isinstance(error, StoreUnavailable):
        fresh = StoreUnavailable(*error.args)
        fresh.__cause__ = error.__cause__
        return fresh
    fresh = StoreUnavailable(f"SQLite: {error}")
    fresh.__cause__ = error
    return fresh


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
