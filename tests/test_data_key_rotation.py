"""``issuer data-key rotate`` under load (SPEC §9): a data key is deleted only when no row
uses it and no worker can still be sealing with it. Logins run without pause on a real
multi-worker gunicorn while the command rotates; afterwards every one of those sessions must
still refresh (a row sealed in the gap with a deleted key could never be opened again)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from issuer.cli import main
from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, Gunicorn
from tests.workers import sessions_across_workers

pytestmark = pytest.mark.slow

TIMEOUT = 10
LOGGERS = 4


def test_logins_during_a_data_key_rotation_all_refresh_afterwards(
    gunicorn: Callable[..., Gunicorn],
    gunicorn_env: dict[str, str],
    wechat: WeChatEmulator,
    tmp_path: Path,
) -> None:
    server = gunicorn(gunicorn_env, workers=2)
    keys_dir = Path(gunicorn_env["ISSUER_KEYS_DIR"])
    (old_key,) = keys_dir.glob("data-*.key")
    sessions = sessions_across_workers(server, LOGGERS)
    logins: list[dict[str, Any]] = []
    failures: list[str] = []
    stop = threading.Event()

    def log_in_continuously(session: requests.Session, number: int) -> None:
        count = 0
        while not stop.is_set():
            count += 1
            code = wechat.mint_code(APPID, f"user-{number}-{count}")
            response = session.post(
                server.url + "/auth/login", json={"code": code}, timeout=TIMEOUT
            )
            if response.status_code == 200:
                logins.append(response.json())
            else:
                failures.append(response.text)

    threads = [
        threading.Thread(target=log_in_continuously, args=(session, number))
        for number, session in enumerate(sessions)
    ]
    for thread in threads:
        thread.start()
    try:
        # Each worker reports the key generation it serves at its first look at the key
        # directory (a second after start-up at most, under this load).
        deadline = time.monotonic() + 30
        while len(list(keys_dir.glob("workers/*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = len(logins)
        result = CliRunner().invoke(main, ["data-key", "rotate"], env=gunicorn_env)
        during = len(logins) - before
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=2 * TIMEOUT)
        for session in sessions:
            session.close()

    assert result.exit_code == 0, (result.output, result.exception)
    assert "picked up by every serving process that reports here (2)" in result.stdout
    (new_kid,) = re.findall(r"new data key (\S+);", result.stdout)
    assert "dropped old data keys" in result.stdout
    assert not old_key.exists()
    assert [path.name for path in keys_dir.glob("data-*.key")] == [f"data-{new_kid}.key"]
    assert not failures, failures[:3]
    assert during > 0, "no login ran during the rotation"

    refused = []
    with requests.Session() as session:
        for body in logins:
            response = session.post(
                server.url + "/auth/refresh",
                json={"refresh_token": body["refresh_token"]},
                timeout=TIMEOUT,
            )
            if response.status_code != 200:
                refused.append(response.text)
    assert not refused, f"{len(refused)} of {len(logins)} sessions lost: {refused[:3]}"
