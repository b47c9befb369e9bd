"""The store failing under a running app: SQLite locked, gone, or failing mid-transaction;
PostgreSQL stopped and started again, or failing mid-transaction.

Each fault must read as SPEC §2's transient error -- 503 ``temporarily_unavailable`` JSON with
``Retry-After``, never a 500 or a traceback -- must leave no half-written login behind, and
must heal without restarting the app once the fault is gone.

- Locked: another connection holds ``BEGIN EXCLUSIVE`` past the busy timeout. (As root, file
  modes do not make a database read-only, so a lock stands in for "cannot write".) The busy
  timeout is the module constant ``issuer.store.sqlite.BUSY_TIMEOUT_SECONDS``, read when a
  thread opens its connection; the tests lower it with ``monkeypatch`` to keep the module
  fast. A lock shorter than the timeout is waited out (writers queue, they do not fail).
- Gone: the database's directory moved away and back, as tests/test_discovery.py does for
  ``/readyz``.
- Failing mid-transaction: a trigger makes one INSERT of ``record_login`` raise
  ``OperationalError`` after WeChat accepted the code and after the earlier rows of the
  same transaction were written; none of them may survive.
- PostgreSQL stopped: a server of the test's own is shut down (as an operator's restart or a
  failover does) and started again; issuer's pool reconnects by itself. The pool's acquire
  timeout (``issuer.store.postgres.POOL_TIMEOUT_SECONDS``) is lowered like the busy timeout.
- PostgreSQL failing mid-transaction: a trigger raises ``disk_full`` from inside the login's
  transaction, as the SQLite trigger does.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

import issuer.store.postgres as postgres_store
import issuer.store.sqlite as sqlite_store
from issuer.store.postgres import close_all
from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID
from tests.pgserver import PostgresServer, query

CODE2SESSION = "/sns/jscode2session"
TABLES = ("users", "identities", "sessions", "login_codes")
SHORT_BUSY_TIMEOUT = 0.3
# What must never reach a client from a database failure.
LEAKS = ("Traceback", "sqlite", "SQLite", "OperationalError", "locked", "no such", 'File "')
PG_LEAKS = ("Traceback", "psycopg", "PostgreSQL", "connection", "refused", "disk", 'File "')
SHORT_POOL_TIMEOUT = 0.5


# -- fixtures and helpers


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """The database file, alone in its own directory (so the directory can be moved)."""
    return tmp_path / "data" / "issuer.db"


@pytest.fixture
def store_app(app_factory: Callable[..., Flask], db_path: Path) -> Flask:
    return app_factory(database_url=f"sqlite:///{db_path}")


@pytest.fixture
def client(store_app: Flask) -> FlaskClient:
    return store_app.test_client()


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    """Connections opened from now on give up on a lock after SHORT_BUSY_TIMEOUT seconds."""
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", SHORT_BUSY_TIMEOUT)
    return SHORT_BUSY_TIMEOUT


def log_in(client: FlaskClient, code: str) -> Any:
    return client.post("/auth/login", json={"code": code})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def counts(path: Path) -> dict[str, int]:
    """Row counts of the login tables, read on a connection of the test's own."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES
        }


def identity_row(path: Path, openid: str) -> tuple[Any, ...]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute(
            """SELECT user_id, session_key, session_key_kid, session_key_updated_at
            FROM identities WHERE appid = ? AND openid = ?""",
            (APPID, openid),
        ).fetchone()
    assert row is not None
    return tuple(row)


def session_row(path: Path, sid: str) -> tuple[Any, ...]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT counter, rotated_at, revoked_at FROM sessions WHERE id = ?", (sid,)
        ).fetchone()
    assert row is not None
    return tuple(row)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Another process's writer holding the database lock until the block ends."""
    holder = sqlite3.connect(path, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def execute(path: Path, sql: str) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=5)) as db:
        db.execute(sql)


def assert_unavailable(response: Any, leaks: tuple[str, ...] = LEAKS) -> None:
    """SPEC §2: a transient failure is 503 temporarily_unavailable JSON with Retry-After."""
    text = response.get_data(as_text=True)
    assert response.status_code == 503, text
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == "temporarily_unavailable"
    assert set(body) == {"error", "error_description"}
    assert body["error_description"]
    retry_after = response.headers.get("Retry-After", "")
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    assert response.headers["Cache-Control"] == "no-store"
    for leak in leaks:
        assert leak not in text, (leak, text)


def sid_of(access_token: str) -> str:
    sid: str = jwt.decode(access_token, options={"verify_signature": False})["sid"]
    return sid


# -- (1) the database locked by another writer past the busy timeout


def test_a_locked_database_answers_503_writes_nothing_and_recovers(
    short_busy_timeout: float,
    store_app: Flask,
    client: FlaskClient,
    db_path: Path,
    wechat: WeChatEmulator,
) -> None:
    alice = log_in(client, wechat.mint_code(APPID, "alice")).get_json()
    refresh_token, access_token = alice["refresh_token"], alice["access_token"]
    sid = sid_of(access_token)
    alice_openid, _ = wechat.identity(APPID, "alice")
    before = counts(db_path)
    identity_before = identity_row(db_path, alice_openid)
    session_before = session_row(db_path, sid)
    new_user_code = wechat.mint_code(APPID, "bob")
    old_user_code = wechat.mint_code(APPID, "alice")
    wechat.calls.clear()

    with exclusive_lock(db_path):
        started = time.monotonic()
        response = log_in(client, new_user_code)
        waited = time.monotonic() - started
        assert_unavailable(response)
        # It waited out the busy timeout (writers queue) and then gave up promptly.
        assert short_busy_timeout * 0.8 <= waited < short_busy_timeout + 3
        assert_unavailable(log_in(client, old_user_code))
        assert_unavailable(client.post("/auth/refresh", json={"refresh_token": refresh_token}))
        assert_unavailable(
            client.post(
                "/auth/refresh",
                data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            )
        )
        # Logout must not answer 204 for a session it could not end.
        assert_unavailable(client.post("/auth/logout", json={"refresh_token": refresh_token}))
        # Readers are not blocked by a writer in WAL mode: /me still answers.
        assert client.get("/me", headers=bearer(access_token)).status_code == 200
        # WeChat did accept both codes: the failure came after, in the store.
        assert wechat.calls.count(CODE2SESSION) == 2
        assert counts(db_path) == before

    # No half-written user, identity, session or remembered code.
    assert counts(db_path) == before
    assert identity_row(db_path, alice_openid) == identity_before
    assert session_row(db_path, sid) == session_before  # the refresh token was not spent

    # Without a restart: the very same refresh request now succeeds ...
    response = client.post("/auth/refresh", json={"refresh_token": refresh_token})
    assert response.status_code == 200, response.get_json()
    rotated = response.get_json()
    assert rotated["user_id"] == alice["user_id"]
    # ... and so does logging in. The code of the failed attempt was spent at WeChat (one
    # use only), so a retry with it may only be refused cleanly; a fresh wx.login code works.
    retried = log_in(client, new_user_code)
    assert retried.status_code in (200, 400), retried.get_json()
    if retried.status_code == 400:
        assert retried.get_json()["error"] == "invalid_grant"
    bob = log_in(client, wechat.mint_code(APPID, "bob"))
    assert bob.status_code == 200, bob.get_json()
    assert bob.get_json()["is_new_user"] is (retried.status_code != 200)
    assert counts(db_path)["users"] == before["users"] + 1
    assert (
        client.post("/auth/logout", json={"refresh_token": rotated["refresh_token"]}).status_code
        == 204
    )
    assert client.get("/readyz").status_code == 200


def test_a_lock_shorter_than_the_busy_timeout_is_waited_out(
    store_app: Flask, client: FlaskClient, db_path: Path, wechat: WeChatEmulator
) -> None:
    """The default busy timeout (5 s): a writer holding the lock for 0.4 s delays a login,
    it does not fail it."""
    assert sqlite_store.BUSY_TIMEOUT_SECONDS >= 1
    alice = log_in(client, wechat.mint_code(APPID, "alice")).get_json()
    code = wechat.mint_code(APPID, "carol")
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with exclusive_lock(db_path):
            locked.set()
            release.wait(timeout=0.4)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(timeout=5)
        started = time.monotonic()
        response = log_in(client, code)
        waited = time.monotonic() - started
        refreshed = client.post("/auth/refresh", json={"refresh_token": alice["refresh_token"]})
    finally:
        release.set()
        holder.join(timeout=10)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["is_new_user"] is True
    assert waited >= 0.3
    assert refreshed.status_code == 200, refreshed.get_json()


# -- (2) the database directory moved away and back


def test_a_vanished_database_answers_503_and_recovers_when_it_is_back(
    store_app: Flask, client: FlaskClient, db_path: Path, wechat: WeChatEmulator
) -> None:
    alice = log_in(client, wechat.mint_code(APPID, "alice")).get_json()
    code = wechat.mint_code(APPID, "dave")
    folder = db_path.parent
    elsewhere = folder.with_name("elsewhere")
    wechat.calls.clear()
    store_app.extensions["issuer"].store.close()  # as after a failed query: it reconnects
    shutil.move(folder, elsewhere)
    try:
        assert_unavailable(log_in(client, code))
        assert_unavailable(
            client.post("/auth/refresh", json={"refresh_token": alice["refresh_token"]})
        )
        assert_unavailable(
            client.post("/auth/logout", json={"refresh_token": alice["refresh_token"]})
        )
        # /me cannot check the session: unavailable, not a 401 that would log the user out.
        assert_unavailable(client.get("/me", headers=bearer(alice["access_token"])))
        assert client.get("/readyz").status_code == 503
        # Nothing re-created an empty database in its place ...
        assert not folder.exists()
        # ... and the code was not spent at WeChat before the store was found missing.
        assert CODE2SESSION not in wechat.calls
    finally:
        shutil.move(elsewhere, folder)

    # Back, without a restart: the very same requests succeed.
    response = log_in(client, code)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["is_new_user"] is True
    response = client.post("/auth/refresh", json={"refresh_token": alice["refresh_token"]})
    assert response.status_code == 200, response.get_json()
    assert client.get("/me", headers=bearer(alice["access_token"])).status_code == 200
    assert client.get("/readyz").status_code == 200
    assert counts(db_path)["users"] == 2


# -- (3) the store fails after WeChat accepted the code


@pytest.mark.parametrize("table", ["users", "identities", "sessions", "login_codes"])
def test_a_login_failing_mid_transaction_leaves_no_rows(
    store_app: Flask, client: FlaskClient, db_path: Path, wechat: WeChatEmulator, table: str
) -> None:
    """One INSERT of the login transaction fails (an OperationalError from a trigger, as a
    disk I/O error would): the rows written before it in the same transaction go too."""
    log_in(client, wechat.mint_code(APPID, "alice"))  # the database is not empty
    before = counts(db_path)
    execute(
        db_path,
        f"CREATE TRIGGER fail_insert BEFORE INSERT ON {table} "
        "BEGIN INSERT INTO no_such_table VALUES (1); END",
    )
    code = wechat.mint_code(APPID, "erin")
    wechat.calls.clear()
    assert_unavailable(log_in(client, code))
    assert wechat.calls == [CODE2SESSION]  # WeChat accepted the code
    assert counts(db_path) == before

    execute(db_path, "DROP TRIGGER fail_insert")
    response = log_in(client, wechat.mint_code(APPID, "erin"))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["is_new_user"] is True
    after = counts(db_path)
    assert after["users"] == before["users"] + 1
    assert after["identities"] == before["identities"] + 1
    assert after["sessions"] == before["sessions"] + 1


def test_a_returning_users_failed_login_keeps_the_old_session_key(
    store_app: Flask, client: FlaskClient, db_path: Path, wechat: WeChatEmulator
) -> None:
    """For a known identity the transaction first UPDATEs its session_key; the failed INSERT
    of the session after it must take that update back too."""
    first = log_in(client, wechat.mint_code(APPID, "frank")).get_json()
    openid, _ = wechat.identity(APPID, "frank")
    identity_before = identity_row(db_path, openid)
    before = counts(db_path)
    execute(
        db_path,
        "CREATE TRIGGER fail_insert BEFORE INSERT ON sessions "
        "BEGIN INSERT INTO no_such_table VALUES (1); END",
    )
    assert_unavailable(log_in(client, wechat.mint_code(APPID, "frank")))  # a new session_key
    assert identity_row(db_path, openid) == identity_before
    assert counts(db_path) == before
    # The session that did exist is untouched and keeps working.
    execute(db_path, "DROP TRIGGER fail_insert")
    assert client.get("/me", headers=bearer(first["access_token"])).status_code == 200
    response = client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert response.status_code == 200, response.get_json()


# -- (4) PostgreSQL stopped, and started again


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test alone: stopping it disturbs no other test."""
    server = PostgresServer()
    yield server
    close_all()
    server.delete()


@pytest.fixture
def short_pool_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    """Pools opened from now on give up waiting for a connection after SHORT_POOL_TIMEOUT."""
    monkeypatch.setattr(postgres_store, "POOL_TIMEOUT_SECONDS", SHORT_POOL_TIMEOUT)
    monkeypatch.setattr(postgres_store, "PING_TIMEOUT_SECONDS", SHORT_POOL_TIMEOUT)
    return SHORT_POOL_TIMEOUT


def test_a_postgresql_outage_answers_503_and_recovers_without_a_restart(
    own_postgres: PostgresServer,
    short_pool_timeout: float,
    app_factory: Callable[..., Flask],
    wechat: WeChatEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    client = app_factory(database_url=own_postgres.url()).test_client()
    alice = log_in(client, wechat.mint_code(APPID, "alice")).get_json()
    code = wechat.mint_code(APPID, "bob")
    wechat.calls.clear()

    own_postgres.stop()
    try:
        started = time.monotonic()
        assert_unavailable(log_in(client, code), PG_LEAKS)
        assert time.monotonic() - started < short_pool_timeout + 3  # not a hung worker
        refresh = {"refresh_token": alice["refresh_token"]}
        assert_unavailable(client.post("/auth/refresh", json=refresh), PG_LEAKS)
        assert_unavailable(client.post("/auth/logout", json=refresh), PG_LEAKS)
        assert_unavailable(client.get("/me", headers=bearer(alice["access_token"])), PG_LEAKS)
        assert client.get("/readyz").status_code == 503
        # The code was not spent at WeChat before the store was found unavailable.
        assert CODE2SESSION not in wechat.calls
    finally:
        own_postgres.start()

    # Back, without a restart: the pool reconnects by itself (its backoff between attempts
    # is bounded, so this takes seconds however long the outage was).
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "issuer did not reconnect to PostgreSQL"
        time.sleep(0.05)
    response = log_in(client, code)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["is_new_user"] is True
    response = client.post("/auth/refresh", json=refresh)
    assert response.status_code == 200, response.get_json()
    assert client.get("/me", headers=bearer(alice["access_token"])).status_code == 200

    # The outage was logged, without the database password.
    assert "database unavailable" in caplog.text
    for secret in (own_postgres.password, quote(own_postgres.password, safe="")):
        assert secret not in caplog.text


# -- (5) PostgreSQL failing inside the login transaction


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("table", TABLES)
def test_a_postgresql_login_failing_mid_transaction_leaves_no_rows(
    app_factory: Callable[..., Flask], database_url: str, wechat: WeChatEmulator, table: str
) -> None:
    client = app_factory().test_client()  # on database_url: a fresh PostgreSQL schema

    def pg_counts() -> dict[str, int]:
        return {name: query(database_url, f"SELECT count(*) FROM {name}")[0][0] for name in TABLES}

    log_in(client, wechat.mint_code(APPID, "alice"))  # the database is not empty
    before = pg_counts()
    query(
        database_url,
        """CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS
        $body$ BEGIN RAISE EXCEPTION 'no space' USING ERRCODE = 'disk_full'; END $body$""",
    )
    query(
        database_url,
        f"CREATE TRIGGER fail_insert BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION fail()",
    )
    wechat.calls.clear()
    assert_unavailable(log_in(client, wechat.mint_code(APPID, "erin")), PG_LEAKS)
    assert wechat.calls == [CODE2SESSION]  # WeChat accepted the code
    assert pg_counts() == before

    query(database_url, f"DROP TRIGGER fail_insert ON {table}")
    response = log_in(client, wechat.mint_code(APPID, "erin"))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["is_new_user"] is True
    after = pg_counts()
    assert after["users"] == before["users"] + 1
    assert after["sessions"] == before["sessions"] + 1
