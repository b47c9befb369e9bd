"""The Store contract (issuer/store/__init__.py), tested directly on SQLite and on PostgreSQL.

Every test marked by the module's ``stores`` mark runs once per backend, each on an empty
database of its own. Concurrency is real: threads released together by ``all_at_once``, each
with its own connection, against the one database. The tests at the end are PostgreSQL's
alone (its pool across a fork, its errors, its password never in a message) and take the
session's throwaway server directly.
"""

from __future__ import annotations

import multiprocessing
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import issuer.store.postgres as postgres_store
from issuer.config import ConfigError, load_settings
from issuer.sealing import Sealed
from issuer.store import LoginOutcome, NewSession, SealedRow, Store, StoreUnavailable, open_store
from issuer.store.postgres import PostgresStore
from issuer.store.sql import SCHEMA_VERSION
from issuer.store.sqlite import SQLiteStore
from tests.conftest import all_at_once, free_port
from tests.pgserver import PostgresServer, query

pytestmark = pytest.mark.stores

APP1, APP2 = "wx1111111111111111", "wx2222222222222222"
NOW = 1_800_000_000.0
DAY = 86_400.0
THREADS = 8


# -- helpers


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_store(database_url)
    assert opened.migrate() == SCHEMA_VERSION
    yield opened
    opened.close()


@pytest.fixture
def racing_store(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The store with a connection ready for each of THREADS racing threads: PostgreSQL's
    pool opens connections one at a time, which would stagger the racers into a queue."""
    monkeypatch.setattr(postgres_store, "POOL_MIN_SIZE", THREADS)
    monkeypatch.setattr(postgres_store, "POOL_MAX_SIZE", THREADS)
    opened = open_store(database_url)
    opened.migrate()
    if isinstance(opened, PostgresStore):
        opened._pool().wait(timeout=30)
    yield opened
    opened.close()


def sealed(kid: str = "k1") -> Sealed:
    return Sealed(kid, secrets.token_bytes(24))


def new_session(expires_at: float = NOW + DAY) -> NewSession:
    return NewSession(secrets.token_urlsafe(16), sealed(), expires_at)


def log_in(
    store: Store,
    openid: str,
    *,
    appid: str = APP1,
    unionid: str | None = None,
    now: float = NOW,
    code_hash: str | None = None,
    session: NewSession | None = None,
) -> tuple[LoginOutcome, NewSession]:
    session = session or new_session(now + DAY)
    outcome = store.record_login(
        appid=appid,
        openid=openid,
        unionid=unionid,
        session_key=sealed(),
        session=session,
        now=now,
        code_hash=code_hash,
        forget_codes_before=None if code_hash is None else now - 300,
    )
    return outcome, session


def count(database_url: str, table: str) -> int:
    rows = query(database_url, f"SELECT count(*) FROM {table}")
    return int(rows[0][0])


def set_schema_version(database_url: str, version: int) -> None:
    if database_url.startswith("sqlite:///"):
        query(database_url, f"PRAGMA user_version = {version}")
    else:
        query(database_url, "UPDATE schema_version SET version = ?", version)


def tables(database_url: str) -> set[str]:
    if database_url.startswith("sqlite:///"):
        rows = query(database_url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = query(
            database_url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    return {row[0] for row in rows}


# -- schema


def test_migrate_is_idempotent_and_makes_every_table(database_url: str) -> None:
    store = open_store(database_url)
    try:
        assert store.migrate() == SCHEMA_VERSION
        assert store.migrate() == SCHEMA_VERSION
    finally:
        store.close()
    expected = {"users", "identities", "sessions", "login_codes", "server_tokens"}
    assert expected <= tables(database_url)


def test_concurrent_migrations_make_the_schema_once(database_url: str) -> None:
    """Every host of a fleet migrates at start-up, all at once."""
    stores = [open_store(database_url) for _ in range(4)]
    try:
        outcomes = all_at_once([store.migrate for store in stores])
    finally:
        for store in stores:
            store.close()
    assert outcomes == [SCHEMA_VERSION] * 4
    store = open_store(database_url)
    try:
        log_in(store, "o-after-migrations")
    finally:
        store.close()
    assert count(database_url, "users") == 1


def test_a_newer_schema_is_refused(store: Store, database_url: str) -> None:
    set_schema_version(database_url, SCHEMA_VERSION + 1)
    with pytest.raises(StoreUnavailable, match="newer than this issuer"):
        store.migrate()


def test_ping_answers(store: Store) -> None:
    store.ping()


def test_a_sqlite_too_old_for_the_shared_sql_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(StoreUnavailable, match=r"SQLite 3\.31\.1 is too old: issuer needs 3\.39"):
        SQLiteStore(tmp_path / "issuer.db").migrate()
    assert not (tmp_path / "issuer.db").exists()


# -- misses


def test_reads_that_find_nothing_return_none(store: Store) -> None:
    assert store.get_session("no-such-session") is None
    assert store.get_user("usr_nobody") is None
    assert store.get_identity(APP1, "nobody") is None
    assert store.identities_of("usr_nobody") == []
    assert store.find_login("no-such-hash", NOW - 10) is None
    assert store.get_server_token(APP1) is None
    assert store.live_sessions("usr_nobody", NOW) == 0
    assert store.sealed_rows("k1", 10) == []
    assert store.sealed_kid_counts() == {}


def test_writes_to_nothing_change_nothing(store: Store, database_url: str) -> None:
    assert store.advance_session("no-such-session", 0, NOW) is False
    store.revoke_session("no-such-session", NOW)
    store.update_profile("usr_nobody", "Nemo", None)
    store.set_phone(APP1, "nobody", sealed(), "86", NOW)
    store.release_server_token_lease(APP1, "me")
    with pytest.raises(LookupError):
        store.link_unionid(APP1, "nobody", "union-x")
    assert store.prune(NOW) == {"sessions": 0, "login_codes": 0}
    assert count(database_url, "users") == 0


# -- logins


def test_first_login_makes_a_user_and_the_next_finds_it(store: Store) -> None:
    first, session = log_in(store, "o-alice", now=NOW, code_hash="hash-1")
    assert first.is_new_user is True
    user = first.user
    assert user.id.startswith("usr_")
    assert (user.unionid, user.created_at, user.merged_into) == (None, NOW, None)
    assert store.get_user(user.id) == user

    identity = store.get_identity(APP1, "o-alice")
    assert identity is not None
    assert (identity.user_id, identity.created_at, identity.session_key_updated_at) == (
        user.id,
        NOW,
        NOW,
    )
    stored_session = store.get_session(session.id)
    assert stored_session is not None
    assert stored_session.user_id == user.id
    assert (stored_session.appid, stored_session.openid) == (APP1, "o-alice")
    assert stored_session.secret == session.secret
    assert (stored_session.counter, stored_session.rotated_at) == (0, None)
    assert (stored_session.created_at, stored_session.expires_at) == (NOW, session.expires_at)
    assert stored_session.revoked_at is None
    assert store.find_login("hash-1", NOW - 10) == (session.id, True)
    assert store.find_login("hash-1", NOW) is None  # remembered only after `since`

    key = sealed("k2")
    again = store.record_login(
        appid=APP1,
        openid="o-alice",
        unionid=None,
        session_key=key,
        session=new_session(),
        now=NOW + 60,
    )
    assert again == LoginOutcome(user, False)
    updated = store.get_identity(APP1, "o-alice")
    assert updated is not None
    assert (updated.session_key, updated.session_key_updated_at) == (key, NOW + 60)
    assert updated.created_at == NOW
    assert store.live_sessions(user.id, NOW + 60) == 2


def test_old_login_code_hashes_are_forgotten(store: Store) -> None:
    _, first = log_in(store, "o-bob", now=NOW, code_hash="hash-old")
    _, second = log_in(store, "o-bob", now=NOW + 301, code_hash="hash-new")
    assert store.find_login("hash-old", 0) is None  # forgotten: before forget_codes_before
    assert store.find_login("hash-new", 0) == (second.id, False)
    assert first.id != second.id


def test_a_second_apps_identity_joins_the_unionid_holder(store: Store) -> None:
    first, _ = log_in(store, "o-app1", appid=APP1, unionid="union-carol")
    second, _ = log_in(store, "o-app2", appid=APP2, unionid="union-carol")
    assert first.is_new_user is True
    assert second == LoginOutcome(first.user, False)
    identities = store.identities_of(first.user.id)
    assert [(item.appid, item.openid) for item in identities] == [
        (APP1, "o-app1"),
        (APP2, "o-app2"),
    ]


def test_a_known_user_gets_the_unionid_a_login_brings(store: Store) -> None:
    first, _ = log_in(store, "o-dan")
    again, _ = log_in(store, "o-dan", unionid="union-dan", now=NOW + 1)
    assert again.user.id == first.user.id
    assert again.user.unionid == "union-dan"


@pytest.mark.parametrize("failing", ["new user", "known user"])
def test_a_failing_login_writes_nothing(store: Store, database_url: str, failing: str) -> None:
    """The session row is written last; when it fails (here a NOT NULL violation from the
    database itself), the user, identity and session_key update before it go too."""
    if failing == "known user":
        log_in(store, "o-erin")
    before = {table: count(database_url, table) for table in ("users", "identities", "sessions")}
    identity_before = store.get_identity(APP1, "o-erin")
    broken = NewSession(secrets.token_urlsafe(16), sealed(), None)
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)):
        store.record_login(
            appid=APP1,
            openid="o-erin",
            unionid="union-erin",
            session_key=sealed("k9"),
            session=broken,
            now=NOW + 5,
            code_hash="hash-erin",
        )
    after = {table: count(database_url, table) for table in ("users", "identities", "sessions")}
    assert after == before
    assert store.get_identity(APP1, "o-erin") == identity_before
    assert store.find_login("hash-erin", 0) is None
    store.ping()  # the connection is usable after the rollback


@pytest.mark.parametrize("unionid", [None, "union-race"], ids=["no unionid", "unionid"])
def test_concurrent_first_logins_of_one_person_make_one_user(
    racing_store: Store, database_url: str, unionid: str | None
) -> None:
    outcomes = all_at_once([lambda: log_in(racing_store, "o-race", unionid=unionid)[0]] * THREADS)
    assert all(isinstance(outcome, LoginOutcome) for outcome in outcomes), outcomes
    assert len({outcome.user.id for outcome in outcomes}) == 1
    assert sum(outcome.is_new_user for outcome in outcomes) == 1
    assert count(database_url, "users") == 1
    assert count(database_url, "identities") == 1
    assert count(database_url, "sessions") == THREADS


def test_concurrent_first_logins_from_two_apps_make_one_user(
    racing_store: Store, database_url: str
) -> None:
    calls = [
        lambda appid=appid: log_in(racing_store, f"o-{appid}", appid=appid, unionid="union-twin")[0]
        for appid in (APP1, APP2) * (THREADS // 2)
    ]
    outcomes = all_at_once(calls)
    assert all(isinstance(outcome, LoginOutcome) for outcome in outcomes), outcomes
    assert len({outcome.user.id for outcome in outcomes}) == 1
    assert sum(outcome.is_new_user for outcome in outcomes) == 1
    assert count(database_url, "users") == 1
    assert count(database_url, "identities") == 2


# -- sessions


def test_advance_session_moves_the_chain_once_per_counter(store: Store) -> None:
    _, session = log_in(store, "o-fay")
    assert store.advance_session(session.id, 0, NOW + 1) is True
    assert store.advance_session(session.id, 0, NOW + 2) is False  # already spent
    after = store.get_session(session.id)
    assert after is not None
    assert (after.counter, after.rotated_at) == (1, NOW + 1)
    assert store.advance_session(session.id, 1, NOW + 3) is True


def test_concurrent_advances_move_the_chain_exactly_once(racing_store: Store) -> None:
    _, session = log_in(racing_store, "o-gus")
    outcomes = all_at_once([lambda: racing_store.advance_session(session.id, 0, NOW + 1)] * THREADS)
    assert sorted(outcomes, key=repr) == [False] * (THREADS - 1) + [True]
    after = racing_store.get_session(session.id)
    assert after is not None
    assert after.counter == 1


def test_a_revoked_session_does_not_advance(store: Store) -> None:
    outcome, session = log_in(store, "o-hal")
    store.revoke_session(session.id, NOW + 1)
    store.revoke_session(session.id, NOW + 2)  # idempotent: the first time stays
    revoked = store.get_session(session.id)
    assert revoked is not None
    assert revoked.revoked_at == NOW + 1
    assert store.advance_session(session.id, 0, NOW + 3) is False
    assert store.live_sessions(outcome.user.id, NOW + 3) == 0


def test_live_sessions_counts_neither_expired_nor_revoked(store: Store) -> None:
    outcome, _ = log_in(store, "o-ida", now=NOW)
    _, revoked = log_in(store, "o-ida", now=NOW)
    log_in(store, "o-ida", now=NOW - DAY + 10)  # expires at NOW + 10
    store.revoke_session(revoked.id, NOW)
    assert store.live_sessions(outcome.user.id, NOW) == 2
    assert store.live_sessions(outcome.user.id, NOW + 10) == 1


def test_prune_deletes_ended_sessions_and_stale_codes(store: Store, database_url: str) -> None:
    _, expired = log_in(store, "o-jo", now=NOW - DAY)
    _, revoked = log_in(store, "o-jo", now=NOW, code_hash="hash-revoked")
    _, live = log_in(store, "o-jo", now=NOW, code_hash="hash-live")
    store.revoke_session(revoked.id, NOW)
    # The revoked session's code hash goes with it; the live one's stays.
    assert store.prune(NOW) == {"sessions": 2, "login_codes": 1}
    assert store.get_session(expired.id) is None
    assert store.get_session(revoked.id) is None
    assert store.get_session(live.id) is not None
    assert store.find_login("hash-live", 0) == (live.id, False)
    # A code hash outlives no retry window: gone after LOGIN_CODE_MEMORY, session or not.
    assert store.prune(NOW + 301) == {"sessions": 0, "login_codes": 1}
    assert count(database_url, "login_codes") == 0


# -- user data


def test_profile_and_phone(store: Store) -> None:
    outcome, _ = log_in(store, "o-kim")
    store.update_profile(outcome.user.id, "Kim", None)
    store.update_profile(outcome.user.id, None, "https://avatar.example/kim.png")
    user = store.get_user(outcome.user.id)
    assert user is not None
    assert (user.nickname, user.avatar_url) == ("Kim", "https://avatar.example/kim.png")
    phone = sealed()
    store.set_phone(APP1, "o-kim", phone, "86", NOW + 9)
    identity = store.get_identity(APP1, "o-kim")
    assert identity is not None
    assert (identity.phone, identity.country_code, identity.phone_updated_at) == (
        phone,
        "86",
        NOW + 9,
    )


def test_get_profile_reads_session_user_and_phones_at_once(store: Store) -> None:
    assert store.get_profile("no-such-session") is None
    outcome, session = log_in(store, "o-lee", unionid="union-lee")
    profile = store.get_profile(session.id)
    assert profile is not None
    assert profile.session == store.get_session(session.id)
    assert profile.user == store.get_user(outcome.user.id)
    assert profile.phones == ()  # no identity of the user holds a phone number yet
    # A second identity of the same user (another app, joined by unionid) with a phone, and
    # the first identity's own phone: both are there, whichever session asks.
    log_in(store, "o-lee-2", appid=APP2, unionid="union-lee", now=NOW + 1)
    phone2, phone1 = sealed(), sealed()
    store.set_phone(APP2, "o-lee-2", phone2, "86", NOW + 2)
    store.set_phone(APP1, "o-lee", phone1, "1", NOW + 3)
    store.update_profile(outcome.user.id, "Lee", None)
    profile = store.get_profile(session.id)
    assert profile is not None
    assert profile.user.nickname == "Lee"
    assert sorted(profile.phones, key=lambda item: item.appid) == [
        store.get_identity(APP1, "o-lee"),
        store.get_identity(APP2, "o-lee-2"),
    ]
    store.revoke_session(session.id, NOW + 4)
    ended = store.get_profile(session.id)
    assert ended is not None
    assert ended.session.revoked_at == NOW + 4


def test_link_unionid_gives_a_free_unionid_and_leaves_a_different_one(store: Store) -> None:
    outcome, _ = log_in(store, "o-lea")
    assert store.link_unionid(APP1, "o-lea", "union-lea") == outcome.user.id
    assert store.link_unionid(APP1, "o-lea", "union-lea") == outcome.user.id
    # One person has one unionid: a different one is a conflict, never a merge.
    other, _ = log_in(store, "o-max", appid=APP2, unionid="union-max")
    assert store.link_unionid(APP1, "o-lea", "union-max") == outcome.user.id
    user = store.get_user(outcome.user.id)
    assert user is not None
    assert (user.unionid, user.merged_into) == ("union-lea", None)
    assert store.identities_of(other.user.id)[0].openid == "o-max"


def test_link_unionid_merges_into_the_holder(store: Store) -> None:
    holder, holder_session = log_in(store, "o-nia-2", appid=APP2, unionid="union-nia")
    absorbed, absorbed_session = log_in(store, "o-nia-1", appid=APP1)
    store.update_profile(absorbed.user.id, "Nia", "https://avatar.example/nia.png")
    store.update_profile(holder.user.id, "Nia W.", None)

    assert store.link_unionid(APP1, "o-nia-1", "union-nia") == holder.user.id

    tombstone = store.get_user(absorbed.user.id)
    assert tombstone is not None
    assert tombstone.merged_into == holder.user.id
    survivor = store.get_user(holder.user.id)
    assert survivor is not None
    assert (survivor.nickname, survivor.avatar_url) == ("Nia W.", "https://avatar.example/nia.png")
    assert survivor.merged_into is None
    assert {item.openid for item in store.identities_of(holder.user.id)} == {"o-nia-1", "o-nia-2"}
    assert store.identities_of(absorbed.user.id) == []
    moved = store.get_session(absorbed_session.id)
    assert moved is not None
    assert (moved.user_id, moved.unionid) == (holder.user.id, "union-nia")
    assert store.live_sessions(holder.user.id, NOW) == 2
    assert holder_session.id != absorbed_session.id
    # The absorbed identity logs in as the survivor from now on.
    again, _ = log_in(store, "o-nia-1", appid=APP1, now=NOW + 1)
    assert again == LoginOutcome(survivor, False)


def test_concurrent_links_of_one_unionid_leave_one_holder(
    racing_store: Store, database_url: str
) -> None:
    users = [log_in(racing_store, f"o-pat-{index}")[0].user.id for index in range(THREADS)]
    outcomes = all_at_once(
        [
            lambda index=index: racing_store.link_unionid(APP1, f"o-pat-{index}", "union-pat")
            for index in range(THREADS)
        ]
    )
    assert all(isinstance(outcome, str) for outcome in outcomes), outcomes
    (survivor,) = set(outcomes)
    assert survivor in users
    assert query(database_url, "SELECT id FROM users WHERE unionid = ?", "union-pat") == [
        (survivor,)
    ]
    for user_id in users:
        user = racing_store.get_user(user_id)
        assert user is not None
        assert user.merged_into == (None if user_id == survivor else survivor)
    assert len(racing_store.identities_of(survivor)) == THREADS


def test_a_login_racing_a_merge_ends_with_the_survivor(racing_store: Store) -> None:
    """Logins of the absorbed identity while it is merged: each session lands on a user that
    is not a tombstone once the dust settles (it moves with the merge or is made after it)."""
    holder, _ = log_in(racing_store, "o-quin-2", appid=APP2, unionid="union-quin")
    absorbed, _ = log_in(racing_store, "o-quin-1", appid=APP1)
    calls: list[Callable[[], Any]] = [
        lambda: racing_store.link_unionid(APP1, "o-quin-1", "union-quin"),
        *[lambda: log_in(racing_store, "o-quin-1", appid=APP1)[1].id] * (THREADS - 1),
    ]
    outcomes = all_at_once(calls)
    assert outcomes[0] == holder.user.id
    for sid in outcomes[1:]:
        session = racing_store.get_session(sid)
        assert session is not None
        assert session.user_id == holder.user.id
    assert racing_store.live_sessions(absorbed.user.id, NOW) == 0


# -- WeChat server tokens


def test_server_token_lease(store: Store) -> None:
    assert store.take_server_token_lease(APP1, "a", NOW, NOW + 30, None) is True
    assert store.take_server_token_lease(APP1, "b", NOW + 1, NOW + 31, None) is False  # held
    leased = store.get_server_token(APP1)
    assert leased is not None
    assert (leased.token, leased.lease_until) == (None, NOW + 30)
    store.release_server_token_lease(APP1, "b")  # not b's: nothing happens
    assert store.take_server_token_lease(APP1, "b", NOW + 1, NOW + 31, None) is False
    store.release_server_token_lease(APP1, "a")
    assert store.take_server_token_lease(APP1, "b", NOW + 1, NOW + 31, None) is True
    # The lease runs out by itself.
    assert store.take_server_token_lease(APP1, "c", NOW + 31, NOW + 61, None) is True

    token = sealed()
    store.put_server_token(APP1, token, NOW + 7200, NOW + 40)  # ends c's lease
    stored = store.get_server_token(APP1)
    assert stored is not None
    assert (stored.token, stored.expires_at, stored.fetched_at, stored.lease_until) == (
        token,
        NOW + 7200,
        NOW + 40,
        None,
    )
    # Someone stored a token since the caller looked: no lease for a refresh already done.
    assert store.take_server_token_lease(APP1, "d", NOW + 41, NOW + 71, None) is False
    assert store.take_server_token_lease(APP1, "d", NOW + 41, NOW + 71, NOW + 40) is True


def test_concurrent_lease_takers_get_one_lease(racing_store: Store) -> None:
    outcomes = all_at_once(
        [
            lambda owner=owner: racing_store.take_server_token_lease(
                APP2, owner, NOW, NOW + 30, None
            )
            for owner in map(str, range(THREADS))
        ]
    )
    assert sorted(outcomes, key=repr) == [False] * (THREADS - 1) + [True]


# -- sealed secrets (data-key rotation)


def test_sealed_rows_and_replace_sealed(store: Store) -> None:
    _, session = log_in(store, "o-rex")  # a session_key and a session secret, both "k1"
    store.set_phone(APP1, "o-rex", sealed("k0"), "86", NOW)
    store.take_server_token_lease(APP1, "a", NOW, NOW + 30, None)
    store.put_server_token(APP1, sealed("k0"), NOW + 7200, NOW)
    assert store.sealed_kid_counts() == {"k1": 2, "k0": 2}

    rows = store.sealed_rows("k1", 10)
    assert sorted((row.kind, row.key) for row in rows) == [
        ("phone", (APP1, "o-rex")),
        ("server_token", (APP1,)),
    ]
    assert len(store.sealed_rows("k9", 3)) == 3  # the limit holds across tables
    fresh = sealed("k1")
    assert store.replace_sealed(rows[0], fresh) is True
    assert store.replace_sealed(rows[0], sealed("k1")) is False  # it changed since it was read
    stale = SealedRow("refresh_secret", (session.id,), sealed("k1"))
    assert store.replace_sealed(stale, sealed("k2")) is False
    assert store.sealed_kid_counts() == {"k1": 3, "k0": 1}


# -- PostgreSQL alone: its pool, its errors, its password


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    with postgres_server.fresh_schema() as url:
        store = open_store(url)
        store.migrate()
        store.close()
        yield url


def backend_pid(store: Store) -> int:
    """Which server process answers this store's calls (one connection: a pool of one)."""
    rows = store._run(  # type: ignore[attr-defined]
        lambda db: db.execute("SELECT pg_backend_pid()").fetchall(), write=False
    )
    return int(rows[0][0])


def _use_in_child(store: Store, results: Any) -> None:
    """In the forked child: use the store object inherited from the parent."""
    try:
        results.put(("pid", backend_pid(store)))
        log_in(store, "o-child")
        results.put(("ok", None))
    except BaseException as error:
        results.put(("error", repr(error)))
    finally:
        store.close()


def test_a_forked_child_opens_its_own_pool_and_leaves_the_parents_alone(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As gunicorn forks workers from a master that built the app: the child must not use,
    nor close, the connections it inherited."""
    monkeypatch.setattr(postgres_store, "POOL_MAX_SIZE", 1)
    monkeypatch.setattr(postgres_store, "POOL_MIN_SIZE", 1)
    store = open_store(pg_url)
    parent_pid = backend_pid(store)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_use_in_child, args=(store, results))
    child.start()
    child.join(timeout=30)
    got = dict(results.get(timeout=5) for _ in range(2))
    assert child.exitcode == 0
    assert got["ok"] is None, got
    assert got["pid"] != parent_pid
    # The parent's connection lived through the child: same server process, still answering.
    assert backend_pid(store) == parent_pid
    assert count(pg_url, "users") == 1


def test_an_unreachable_database_is_unavailable_quickly(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_store, "POOL_TIMEOUT_SECONDS", 0.5)
    url = postgres_server.url().replace(f":{postgres_server.port}/", f":{free_port()}/")
    store = open_store(url)
    with pytest.raises(StoreUnavailable, match="refused"):
        store.migrate()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.get_user("usr_x")
    assert time.monotonic() - started < 3
    store.close()


def test_a_wrong_password_is_unavailable_and_never_shown(postgres_server: PostgresServer) -> None:
    password = "wrong/p@ss:word%"
    store = open_store(postgres_server.url(password=password))
    with pytest.raises(StoreUnavailable) as caught:
        store.migrate()
    message = str(caught.value)
    assert "password authentication failed" in message
    assert "\n" not in message
    assert password not in message
    assert postgres_server.password not in message


def test_a_read_only_database_is_unavailable_for_writes(
    pg_url: str, postgres_server: PostgresServer
) -> None:
    writer = open_store(pg_url)
    outcome, _ = log_in(writer, "o-sam")
    schema = pg_url.split("search_path%3D", 1)[1]
    reader = open_store(postgres_server.url(schema, default_transaction_read_only="on"))
    with pytest.raises(StoreUnavailable, match="read-only"):
        log_in(reader, "o-sam")
    assert reader.get_user(outcome.user.id) == outcome.user  # reads still answer


def test_a_statement_stuck_behind_a_lock_times_out(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_store, "STATEMENT_TIMEOUT_SECONDS", 0.3)
    store = open_store(pg_url)
    _, session = log_in(store, "o-tia")
    with psycopg.connect(pg_url) as holder:  # a transaction holding the session's row
        holder.execute("UPDATE sessions SET counter = counter WHERE id = %s", (session.id,))
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            store.advance_session(session.id, 0, NOW)
        assert time.monotonic() - started < 3
        holder.rollback()
    assert store.advance_session(session.id, 0, NOW) is True


def test_terminated_connections_are_replaced(pg_url: str, postgres_server: PostgresServer) -> None:
    """An administrator (or a failover) ends every session: the next call gets a new one."""
    store = open_store(pg_url)
    before = backend_pid(store)
    with postgres_server.admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (before,))
    log_in(store, "o-uma")
    assert backend_pid(store) != before


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 32),  # gunicorn.conf.py's default thread count
        ({"ISSUER_THREADS": "12"}, 12),
        ({"ISSUER_THREADS": "12", "ISSUER_DATABASE_POOL_SIZE": "3"}, 3),
    ],
)
def test_the_pool_size_is_a_setting_defaulting_to_the_thread_count(
    environ: dict[str, str], expected: int, pg_url: str
) -> None:
    settings = load_settings(environ={"ISSUER_ENV": "development", **environ})
    assert settings.database_pool_size == expected
    store = open_store(pg_url, pool_size=settings.database_pool_size)
    assert isinstance(store, PostgresStore)
    try:
        store.ping()
        assert store._pool().max_size == expected
    finally:
        store.close()


@pytest.mark.parametrize("name", ["ISSUER_DATABASE_POOL_SIZE", "ISSUER_THREADS"])
def test_a_malformed_pool_size_stops_start_up_naming_the_setting(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"ISSUER_ENV": "development", name: "many"})
    assert name in str(raised.value)
