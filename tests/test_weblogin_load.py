"""Waiting scan polls under a real gunicorn (gthread, a fixed pool of threads): they never
take the threads that logins and refreshes need.

One worker with four threads lets one poll wait (a quarter of the pool); six polls waiting
for a change that does not come, and logins and refreshes meanwhile: every login and refresh
is answered while the waiting poll still waits, the other polls answer at once with their
``interval``, and the test prints the login latencies it saw (measured, not asserted).
"""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from issuer.oauth.pkce import s256
from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, SECRET, Gunicorn

pytestmark = pytest.mark.slow

POLLS = 6
TIMEOUT = 60


@pytest.fixture(scope="module")
def host(
    tmp_path_factory: pytest.TempPathFactory, emulator_server: tuple[WeChatEmulator, str]
) -> Iterator[Gunicorn]:
    directory: Path = tmp_path_factory.mktemp("weblogin-load")
    config = directory / "issuer.toml"
    config.write_text(
        f'[[clients]]\nid = "shop-pc"\nkind = "web"\napp = "{APPID}"\npage = "pages/scan/index"\n'
    )
    env = {
        "ISSUER_URL": "https://issuer.test",
        "ISSUER_CONFIG": str(config),
        "ISSUER_DATABASE_URL": f"sqlite:///{directory / 'issuer.db'}",
        "ISSUER_KEYS_DIR": str(directory / "keys"),
        "ISSUER_WECHAT_API_BASE": emulator_server[1],
        "ISSUER_WECHAT_APPID": APPID,
        "ISSUER_WECHAT_SECRET": SECRET,
        "ISSUER_THREADS": "4",
    }
    server = Gunicorn(env, directory / "gunicorn.log", workers=1).start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_waiting_polls_leave_threads_for_logins(host: Gunicorn, wechat: WeChatEmulator) -> None:
    ticket = requests.post(
        f"{host.url}/auth/scan",
        json={"client_id": "shop-pc", "code_challenge": s256(secrets.token_urlsafe(48))},
        timeout=TIMEOUT,
    ).json()["ticket"]
    answers: list[dict[str, Any]] = []

    def poll() -> None:
        answer = requests.get(
            f"{host.url}/auth/scan/{ticket}", params={"wait": 25}, timeout=TIMEOUT
        )
        answers.append(answer.json())

    pollers = [threading.Thread(target=poll) for _ in range(POLLS)]
    for poller in pollers:
        poller.start()
    while len(answers) < POLLS - 1:  # all but the one that may wait answer at once
        time.sleep(0.01)
    assert all(answer == {**answer, "status": "pending", "interval": 2} for answer in answers)

    latencies, pair = [], None
    for _ in range(20):
        started = time.perf_counter()
        login = requests.post(
            f"{host.url}/auth/login",
            json={"code": wechat.mint_code(APPID, "load-phone")},
            timeout=TIMEOUT,
        )
        assert login.status_code == 200, login.text
        pair = login.json()
        refresh = requests.post(
            f"{host.url}/auth/refresh",
            json={"refresh_token": pair["refresh_token"]},
            timeout=TIMEOUT,
        )
        assert refresh.status_code == 200, refresh.text
        latencies.append(time.perf_counter() - started)
    still_waiting = [poller for poller in pollers if poller.is_alive()]
    assert len(still_waiting) == 1  # the logins did not wait for it
    print(
        f"\nlogin+refresh with {POLLS} polls (1 waiting) on 4 threads: "
        f"median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )

    # End the wait: the phone scans, and the waiting poll sees the change.
    assert pair is not None
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    requests.post(f"{host.url}/auth/scan/{ticket}/scanned", headers=bearer, timeout=TIMEOUT)
    still_waiting[0].join(timeout=TIMEOUT)
    assert answers[-1]["status"] == "scanned"
