"""SQLite's write path (issuer/store/sqlite.py): writes waiting together commit together, each
in its own savepoint, and processes queue for the write lock on a lock file instead of
sleeping in SQLite's busy handler.

The writes are the store's own transactions (``_run(work, write=True)``, the primitive every
write method goes through) with work that records which thread ran it and can be held open,
so a group can be formed on purpose: one write holds the process's commit while others
queue behind it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import issuer.store.sqlite as sqlite_store
from issuer.store import StoreUnavailable
from issuer.store.sql import Executor
from issuer.store.sqlite import SQLiteStore
from tests.conftest import all_at_once

WAIT = 10.0  # seconds any step may take before the test calls it hung
QUEUED = 6


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "issuer.db")
    opened.migrate()
    opened._run(lambda db: db.execute("CREATE TABLE marks (name TEXT PRIMARY KEY)"), write=True)
    yield opened
    opened.close()


def marks(path: Path) -> set[str]:
    """What is durable: read on a connection of the test's own."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute("SELECT name FROM marks")}


def mark(name: str, ran_on: dict[str, int]) -> Callable[[Executor], str]:
    def work(db: Executor) -> str:
        ran_on[name] = threading.get_ident()
        db.execute("INSERT INTO marks (name) VALUES (?)", (name,))
        return name

    return work


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def queued(store: SQLiteStore) -> int:
    with store._queue.lock:
        return len(store._queue.pending)


def wait_until(condition: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("condition not reached")


@contextlib.contextmanager
def a_held_write(store: SQLiteStore) -> Iterator[dict[str, Any]]:
    """A write in progress (the process's leader) until the block ends."""
    inside, release = threading.Event(), threading.Event()

    def hold(db: Executor) -> str:
        db.execute("INSERT INTO marks (name) VALUES ('holder')")
        inside.set()
        assert release.wait(WAIT)
        return "holder"

    thread, outcome = in_thread(lambda: store._run(hold, write=True))
    assert inside.wait(WAIT)
    try:
        yield outcome
    finally:
        release.set()
        thread.join(WAIT)


def test_writes_waiting_together_commit_together_and_each_gets_its_answer(
    store: SQLiteStore,
) -> None:
    ran_on: dict[str, int] = {}
    names = [f"w{i}" for i in range(QUEUED)]
    with a_held_write(store) as holder:
        writers = [in_thread(lambda n=n: store._run(mark(n, ran_on), write=True)) for n in names]
        wait_until(lambda: queued(store) == QUEUED)
    for thread, _ in writers:
        thread.join(WAIT)
    assert holder == {"result": "holder"}
    assert [outcome for _, outcome in writers] == [{"result": n} for n in names]
    # One thread (the group's leader) ran every queued write: one transaction, one commit.
    assert len({ran_on[n] for n in names}) == 1
    assert marks(store.path) == {"holder", *names}


@pytest.mark.parametrize("failure", ["constraint", "exception", "operational"])
def test_a_failing_write_in_a_group_fails_alone(store: SQLiteStore, failure: str) -> None:
    ran_on: dict[str, int] = {}

    def failing(db: Executor) -> None:
        ran_on["bad"] = threading.get_ident()
        db.execute("INSERT INTO marks (name) VALUES ('bad')")
        if failure == "constraint":
            db.execute("INSERT INTO marks (name) VALUES ('w0')")  # w0 ran first: duplicate
        elif failure == "exception":
            raise LookupError("no such identity")
        else:
            db.execute("INSERT INTO no_such_table VALUES (1)")

    with a_held_write(store):
        first = in_thread(lambda: store._run(mark("w0", ran_on), write=True))
        wait_until(lambda: queued(store) == 1)
        bad = in_thread(lambda: store._run(failing, write=True))
        wait_until(lambda: queued(store) == 2)
        last = in_thread(lambda: store._run(mark("w1", ran_on), write=True))
        wait_until(lambda: queued(store) == 3)
    for thread, _ in (first, bad, last):
        thread.join(WAIT)
    assert first[1] == {"result": "w0"}
    assert last[1] == {"result": "w1"}
    expected = {
        "constraint": sqlite3.IntegrityError,
        "exception": LookupError,
        "operational": StoreUnavailable,  # the driver's error never leaves the store
    }[failure]
    assert isinstance(bad[1]["error"], expected), bad[1]
    assert ran_on["bad"] == ran_on["w0"] == ran_on["w1"]  # the three shared a transaction
    # The failing write left nothing (not even its first INSERT); its neighbours committed.
    assert marks(store.path) == {"holder", "w0", "w1"}


def test_writers_of_another_process_queue_on_the_lock_file(store: SQLiteStore) -> None:
    """While another process holds the lock file a write waits for it, whatever SQLite's own
    lock says; it goes through once the lock file is released."""
    fd = os.open(store.lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a new open file: to flock, another process
        thread, outcome = in_thread(lambda: store._run(mark("queued", {}), write=True))
        thread.join(0.5)
        assert thread.is_alive()
        assert not outcome
    finally:
        os.close(fd)
    thread.join(WAIT)
    assert outcome == {"result": "queued"}
    assert marks(store.path) == {"queued"}


def test_the_lock_file_is_the_owners_alone(store: SQLiteStore) -> None:
    assert store.lock_path.parent == store.path.parent
    assert store.lock_path.stat().st_mode & 0o077 == 0


def test_a_group_whose_commit_fails_answers_every_member_unavailable(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction itself fails (here: SQLite's lock held past the busy timeout by a
    program that does not take the lock file): no write of the group is answered as done."""
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", 0.2)
    store.close()  # connections opened from now on take the short timeout
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        outcomes = [in_thread(lambda n=n: store._run(mark(n, {}), write=True)) for n in "abc"]
        for thread, _ in outcomes:
            thread.join(WAIT)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert all(isinstance(outcome.get("error"), StoreUnavailable) for _, outcome in outcomes)
    assert marks(store.path) == set()


def test_each_connection_keeps_a_small_page_cache(store: SQLiteStore) -> None:
    """Every gunicorn thread holds a connection: SQLite's default 2 MB cache each would cost a
    worker tens of MB of RSS."""
    kib = store._run(lambda db: db.execute("PRAGMA cache_size").fetchone()[0], write=False)
    assert kib == -sqlite_store.CACHE_KIB
    assert sqlite_store.CACHE_KIB <= 512


def test_many_threads_of_writes_each_get_their_own_outcome(store: SQLiteStore) -> None:
    """Sixteen threads writing at once, every seventh write failing: each success is in the
    file, each failure is not, and every caller got its own answer."""
    threads, per_thread = 16, 40

    def write(name: str, fail: bool) -> Callable[[Executor], str]:
        def work(db: Executor) -> str:
            db.execute("INSERT INTO marks (name) VALUES (?)", (name,))
            if fail:
                raise LookupError(name)
            return name

        return work

    def run(thread: int) -> list[tuple[str, bool]]:
        seen = []
        for number in range(per_thread):
            name, fail = f"t{thread}-{number}", (thread * per_thread + number) % 7 == 0
            try:
                seen.append((store._run(write(name, fail), write=True), True))
            except LookupError as error:
                seen.append((str(error), False))
        return seen

    outcomes = all_at_once([lambda thread=thread: run(thread) for thread in range(threads)])
    committed, failed = set(), set()
    for thread, seen in enumerate(outcomes):
        assert isinstance(seen, list), seen
        assert [name for name, _ in seen] == [f"t{thread}-{n}" for n in range(per_thread)]
        for name, ok in seen:
            (committed if ok else failed).add(name)
    assert len(failed) == len([n for n in range(threads * per_thread) if n % 7 == 0])
    assert marks(store.path) == committed
