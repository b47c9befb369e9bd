"""kill -9 of a whole gunicorn (master and workers) while clients rotate refresh tokens.

SPEC §5: "A crash (kill -9) at any moment loses no refresh token that a client has already
received." SPEC §3: a client that lost the response retries with the token it sent and gets the
current successor within the reuse grace; the chain never forks.

Eight clients, each its own user and login session, run their refresh chains back to back
against a real gunicorn (two gthread workers, ``preload_app``) on a real SQLite file. Three
times, at a seeded random moment, the whole process group gets SIGKILL at once: no worker
finishes its request, no shutdown code runs. Then, before the restart:

- ``PRAGMA integrity_check`` from a separate connection says ``ok``;
- each session's chain counter in the file is at least the number of the last refresh token
  its client received (exactly that when the client was idle at the kill; that or one more
  when its request was in flight), and no session is revoked.

After the restart on the same files and port, each client presents the token it holds (the last
one it received; for a request in flight at the kill, also the one it sent): 200, and its
successor; an in-flight client presents it twice more and gets the same successor each time.
Access tokens received before the crash still pass ``/me`` (their sessions are live).

Outcome does not depend on timing: whatever moment the kill hits, every assertion holds for a
correct issuer. Only the counts printed at the end vary.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from issuer.tokens import parse_refresh_token
from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, Gunicorn

pytestmark = pytest.mark.slow

SEED = 20250605
CLIENTS = 8
KILLS = 3
KILL_AFTER = (0.3, 1.5)  # seconds into a round
GRACE = 10.0  # ISSUER_REFRESH_REUSE_GRACE
TIMEOUT = 10


class KillableGunicorn(Gunicorn):
    """The conftest server (the leader of its own process group), killed with one ``killpg``
    that takes master and workers down together; optionally on a given port."""

    def __init__(self, env: dict[str, str], log_path: Path, *, port: int | None = None) -> None:
        super().__init__(env, log_path, workers=2)
        if port is not None:
            self.port = port
            self.url = f"http://127.0.0.1:{port}"
            self.env["ISSUER_BIND"] = f"127.0.0.1:{port}"

    def kill_group(self) -> None:
        """SIGKILL to every process of the group at once; return when none is left running."""
        assert self.process is not None
        pgid = self.process.pid  # session leader: its pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while (alive := running_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive, f"processes {alive} of group {pgid} survived SIGKILL"


def running_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not dead yet (zombies count as dead: workers
    orphaned by the master may never be reaped in a container)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            members.append(int(entry))
    return members


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[list[KillableGunicorn]]:
    """Servers started by the test; whatever happens, each group is SIGKILLed at the end."""
    servers: list[KillableGunicorn] = []
    yield servers
    for server in servers:
        if server.process is not None:
            server.kill_group()


@dataclass
class Client:
    """One mini-program: its refresh chain and everything it received."""

    name: str
    user_id: str
    current: str  # the last refresh token received: the one it sends next
    received: list[str] = field(default_factory=list)  # every refresh token in a 200
    access: list[str] = field(default_factory=list)  # every access token in a 200
    refreshes: int = 0  # 200s to refresh requests
    in_flight: str | None = None  # the token of a request a kill cut off
    in_flight_error: str = ""
    failure: str | None = None  # a non-200 answer in the loop

    def take(self, body: dict[str, Any]) -> None:
        self.current = body["refresh_token"]
        self.received.append(body["refresh_token"])
        self.access.append(body["access_token"])


def counter(token: str) -> int:
    parsed = parse_refresh_token(token)
    assert parsed is not None, token
    return parsed.counter


def sid_of(token: str) -> str:
    parsed = parse_refresh_token(token)
    assert parsed is not None, token
    return parsed.sid


def refresh(http: requests.Session, url: str, token: str) -> requests.Response:
    return http.post(url + "/auth/refresh", json={"refresh_token": token}, timeout=TIMEOUT)


def run_chain(client: Client, url: str, running: threading.Event) -> None:
    """Refresh back to back while ``running``; stop at the first error or non-200."""
    with requests.Session() as http:
        while running.is_set():
            token = client.current
            try:
                response = refresh(http, url, token)
            except requests.RequestException as error:  # the kill cut this request off
                client.in_flight = token
                client.in_flight_error = type(error).__name__
                return
            if response.status_code != 200:
                client.failure = f"{response.status_code} {response.text}"
                return
            client.refreshes += 1
            client.take(response.json())


def chain_state(db_path: Path) -> tuple[str, dict[str, tuple[int, float | None]]]:
    """After the kill, before the restart, from a connection of our own: the integrity check
    and each session's (counter, revoked_at).

    Read-only, so the crashed WAL is left for the restarted issuer to recover itself.
    """
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        integrity = "\n".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
        rows = connection.execute("SELECT id, counter, revoked_at FROM sessions").fetchall()
    finally:
        connection.close()
    return integrity, {sid: (count, revoked) for sid, count, revoked in rows}


def me_status(url: str, access_token: str) -> tuple[int, str]:
    response = requests.get(
        url + "/me", headers={"Authorization": f"Bearer {access_token}"}, timeout=TIMEOUT
    )
    return response.status_code, response.json().get("user_id", response.text)


def test_kill_9_of_master_and_workers_loses_no_received_refresh_token(
    killable: list[KillableGunicorn],
    gunicorn_env: dict[str, str],
    wechat: WeChatEmulator,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    env = {
        **gunicorn_env,
        "ISSUER_REFRESH_REUSE_GRACE": str(int(GRACE)),
        "ISSUER_RATELIMIT_REFRESH": "1000000/minute",
    }
    db_path = Path(gunicorn_env["ISSUER_DATABASE_URL"].removeprefix("sqlite:///"))

    def boot(port: int | None = None) -> KillableGunicorn:
        server = KillableGunicorn(env, tmp_path / f"gunicorn-{len(killable)}.log", port=port)
        killable.append(server)
        server.start()
        server.wait_ready(timeout=GRACE / 2)
        return server

    server = boot()
    port = server.port
    clients = []
    for index in range(CLIENTS):
        code = wechat.mint_code(APPID, f"crash-client-{index}")
        response = requests.post(server.url + "/auth/login", json={"code": code}, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        body = response.json()
        client = Client(f"client-{index}", body["user_id"], body["refresh_token"])
        client.take(body)
        clients.append(client)
    assert len({client.user_id for client in clients}) == CLIENTS
    assert len({sid_of(client.current) for client in clients}) == CLIENTS

    report = []
    loop_seconds = 0.0
    running = threading.Event()
    threads: list[threading.Thread] = []
    try:
        for round_number in range(1, KILLS + 1):
            # -- a round: every client refreshes back to back until the kill
            kill_after = rng.uniform(*KILL_AFTER)
            before = {client.name: client.refreshes for client in clients}
            unchecked = {client.name: len(client.access) for client in clients}
            for client in clients:
                client.in_flight, client.in_flight_error = None, ""
            running.set()
            threads = [
                threading.Thread(target=run_chain, args=(client, server.url, running))
                for client in clients
            ]
            round_started = time.monotonic()
            for thread in threads:
                thread.start()
            time.sleep(kill_after)
            running.clear()  # no client starts a request after this; those under way go on
            server.kill_group()
            killed_at = time.monotonic()
            loop_seconds += killed_at - round_started
            for thread in threads:
                thread.join(timeout=TIMEOUT)
            assert not any(thread.is_alive() for thread in threads), "a client hung"
            failures = {client.name: client.failure for client in clients if client.failure}
            assert not failures, f"round {round_number}: refused before the kill: {failures}"
            cut_off = [client for client in clients if client.in_flight is not None]
            for client in cut_off:
                # The client sent the last token it had received, and holds nothing newer.
                assert client.in_flight == client.current == client.received[-1]

            # -- the file as the crash left it: intact, and it remembers every received token
            integrity, chains = chain_state(db_path)
            assert integrity == "ok", f"round {round_number}: integrity_check: {integrity}"
            committed_in_flight = 0
            for client in clients:
                sid, last = sid_of(client.current), counter(client.current)
                assert sid in chains, f"{client.name}: session {sid} lost in the crash"
                stored, revoked_at = chains[sid]
                assert revoked_at is None, f"{client.name}: session revoked"
                allowed = {last, last + 1} if client.in_flight else {last}
                assert stored in allowed, (
                    f"round {round_number}, {client.name}: the file's chain is at {stored}, "
                    f"the client received token {last}"
                    + (" and had the next request in flight" if client.in_flight else "")
                )
                committed_in_flight += bool(client.in_flight) and stored == last + 1

            # -- restart on the same files and port; every client carries on with its token
            server = boot(port)
            crashed_access = [
                token for client in clients for token in client.access[unchecked[client.name] :]
            ]
            with requests.Session() as http:
                for client in clients:
                    token = client.current
                    first = refresh(http, server.url, token)
                    assert time.monotonic() - killed_at < GRACE, (
                        "the restart took longer than the reuse grace: this run cannot tell "
                        "a lost response from reuse"
                    )
                    assert first.status_code == 200, (
                        f"round {round_number}, {client.name} "
                        f"({'in flight: ' + client.in_flight_error if client.in_flight else 'idle'}"
                        f") presented token {counter(token)}: {first.status_code} {first.text}"
                    )
                    successor = first.json()["refresh_token"]
                    assert sid_of(successor) == sid_of(token)
                    assert counter(successor) == counter(token) + 1
                    if client.in_flight:
                        # The retry again (two more lost responses): the grace predecessor
                        # answers with the one successor every time; the chain never forks.
                        for _ in range(2):
                            again = refresh(http, server.url, token)
                            assert again.status_code == 200, again.text
                            assert again.json()["refresh_token"] == successor
                    client.take(first.json())

            # -- every access token received since the last restart (and so before this
            # crash) still passes /me: its session is live
            with ThreadPoolExecutor(CLIENTS) as pool:
                answers = list(pool.map(me_status, itertools.repeat(server.url), crashed_access))
            bad = [answer for answer in answers if answer[0] != 200]
            assert not bad, f"round {round_number}: /me refused access tokens: {bad[:5]}"
            users = {client.user_id for client in clients}
            assert {user for _, user in answers} <= users

            report.append(
                {
                    "round": round_number,
                    "kill_after_s": round(kill_after, 3),
                    "refreshes": sum(c.refreshes - before[c.name] for c in clients),
                    "me_checked": len(answers),
                    "in_flight": len(cut_off),
                    "in_flight_committed": committed_in_flight,
                    "errors": sorted({client.in_flight_error for client in cut_off}),
                    "restart_s": round(time.monotonic() - killed_at, 2),
                }
            )
    finally:
        running.clear()
        for thread in threads:
            thread.join(timeout=TIMEOUT)
        server.kill_group()

    total = sum(client.refreshes for client in clients)
    in_flight = sum(entry["in_flight"] for entry in report)
    print()
    for entry in report:
        print(f"crash durability: {entry}")
    print(
        f"crash durability: {total} refreshes in the loops ({total / loop_seconds:.0f}/s over "
        f"{loop_seconds:.1f} s), {in_flight} in flight at {KILLS} kills "
        f"({sum(entry['in_flight_committed'] for entry in report)} of them committed), "
        f"module {time.monotonic() - started:.1f} s"
    )
