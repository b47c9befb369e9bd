"""Concurrent writers across the workers of a real gunicorn, on one SQLite file: every login
and refresh commits (writers of one worker in groups, the workers queued on the lock file),
each answered write is on disk, and a write that fails fails alone."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import requests

from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, Gunicorn, all_at_once

WRITERS = 40
TIMEOUT = 30


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(sql).fetchall()


def test_concurrent_logins_and_refreshes_across_two_workers_all_commit(
    gunicorn: Callable[..., Gunicorn],
    gunicorn_env: dict[str, str],
    wechat: WeChatEmulator,
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "issuer.db"
    server = gunicorn(gunicorn_env, workers=2)
    # One user's identity cannot be written (as a full disk would refuse it): its login must
    # fail alone, not take the logins committed beside it down with it.
    victim, _ = wechat.identity(APPID, "victim")
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON identities WHEN NEW.openid = '{victim}' "
            # An error only when it runs (a missing table would fail every INSERT).
            "BEGIN SELECT json('not json'); END"
        )
    names = [f"user{number}" for number in range(WRITERS)] + ["victim"]
    codes = [wechat.mint_code(APPID, name) for name in names]

    def log_in(code: str) -> requests.Response:
        return requests.post(f"{server.url}/auth/login", json={"code": code}, timeout=TIMEOUT)

    logins = all_at_once([lambda code=code: log_in(code) for code in codes])
    assert all(isinstance(item, requests.Response) for item in logins), logins
    *good, refused = logins
    assert [response.status_code for response in good] == [200] * WRITERS
    assert refused.status_code == 503
    assert refused.json()["error"] == "temporarily_unavailable"

    bodies = [response.json() for response in good]
    refreshes = all_at_once(
        [
            lambda token=body["refresh_token"]: requests.post(
                f"{server.url}/auth/refresh", json={"refresh_token": token}, timeout=TIMEOUT
            )
            for body in bodies
        ]
    )
    assert [getattr(item, "status_code", item) for item in refreshes] == [200] * WRITERS

    # Every answered write is in the file, read on a connection of the test's own.
    openids = {wechat.identity(APPID, name)[0] for name in names[:WRITERS]}
    assert {row[0] for row in rows(db_path, "SELECT openid FROM identities")} == openids
    sessions = rows(db_path, "SELECT user_id, counter FROM sessions")
    assert sorted(sessions) == sorted((body["user_id"], 1) for body in bodies)
    assert server.process is not None
    assert server.process.poll() is None
