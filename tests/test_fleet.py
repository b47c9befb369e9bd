"""Two issuer hosts on one PostgreSQL and one Redis: the fleet promise of the README.

Each host is its own gunicorn master (two workers each) on its own port, both started at
once on an empty database, an empty Redis and an empty shared keys directory, as a fleet
rolling out for the first time would. Any host must serve any request: a session made on one
is refreshed on the other, a stolen token replayed on either ends the session everywhere, the
login limit counts once across both, and a key rotation made through one host is honoured
by the other. Each test speaks for a client address of its own (``X-Forwarded-For`` through
one trusted proxy hop), so their rate-limit counters stay apart.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import yaml

from issuer.config import SETTINGS
from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, ROOT, SECRET, Gunicorn
from tests.pgserver import PostgresServer
from tests.redisserver import RedisServer

pytestmark = pytest.mark.slow

LOGIN_LIMIT = 6


@dataclass
class Fleet:
    a: Gunicorn
    b: Gunicorn
    env: dict[str, str]

    @property
    def hosts(self) -> tuple[Gunicorn, Gunicorn]:
        return self.a, self.b


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    emulator_server: tuple[WeChatEmulator, str],
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("fleet")
    redis_server.flush()
    with postgres_server.fresh_schema() as database_url:
        env = {
            "ISSUER_URL": "https://issuer.test",
            "ISSUER_DATABASE_URL": database_url,
            "ISSUER_RATELIMIT_STORAGE_URI": redis_server.url(),
            "ISSUER_KEYS_DIR": str(directory / "keys"),
            "ISSUER_WECHAT_API_BASE": emulator_server[1],
            "ISSUER_WECHAT_APPID": APPID,
            "ISSUER_WECHAT_SECRET": SECRET,
            "ISSUER_RATELIMIT_LOGIN": f"{LOGIN_LIMIT}/minute",
            "ISSUER_RATELIMIT_REFRESH": "1000/minute",
            "ISSUER_REFRESH_REUSE_GRACE": "0",
            "ISSUER_PROXY_HOPS": "1",
        }
        a = Gunicorn(env, directory / "a.log").start()
        b = Gunicorn(env, directory / "b.log").start()
        try:
            a.wait_ready()
            b.wait_ready()
            yield Fleet(a, b, env)
        finally:
            a.stop()
            b.stop()


class Client:
    """One mini-program user behind its own address, talking to whichever host it is told."""

    def __init__(self, address: str) -> None:
        self.http = requests.Session()
        self.http.headers["X-Forwarded-For"] = address

    def login(self, host: Gunicorn, code: str) -> requests.Response:
        return self.http.post(f"{host.url}/auth/login", json={"code": code}, timeout=10)

    def refresh(self, host: Gunicorn, token: str) -> requests.Response:
        return self.http.post(f"{host.url}/auth/refresh", json={"refresh_token": token}, timeout=10)

    def me(self, host: Gunicorn, access_token: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {access_token}"}
        return self.http.get(f"{host.url}/me", headers=headers, timeout=10)


def ok(response: requests.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def test_both_hosts_started_together_share_one_schema_and_one_key_ring(fleet: Fleet) -> None:
    jwks = [requests.get(f"{host.url}/.well-known/jwks.json", timeout=10) for host in fleet.hosts]
    assert jwks[0].json() == jwks[1].json()
    assert len(jwks[0].json()["keys"]) == 1
    for host in fleet.hosts:
        assert requests.get(f"{host.url}/readyz", timeout=10).status_code == 200


def test_a_session_made_on_one_host_is_refreshed_and_served_on_the_other(
    fleet: Fleet, wechat: WeChatEmulator
) -> None:
    client = Client("203.0.113.1")
    first = ok(client.login(fleet.a, wechat.mint_code(APPID, "fleet-alice")))
    assert ok(client.me(fleet.b, first["access_token"]))["user_id"] == first["user_id"]

    token = first["refresh_token"]
    for step in range(6):  # the chain alternates hosts, each step spending the last token
        body = ok(client.refresh(fleet.hosts[step % 2], token))
        assert body["refresh_token"] != token
        token = body["refresh_token"]
        me = ok(client.me(fleet.hosts[(step + 1) % 2], body["access_token"]))
        assert me["user_id"] == first["user_id"]

    again = ok(client.login(fleet.b, wechat.mint_code(APPID, "fleet-alice")))
    assert again["user_id"] == first["user_id"]
    assert again["is_new_user"] is False


def test_a_replayed_token_ends_the_session_on_every_host(
    fleet: Fleet, wechat: WeChatEmulator
) -> None:
    client = Client("203.0.113.2")
    first = ok(client.login(fleet.a, wechat.mint_code(APPID)))
    second = ok(client.refresh(fleet.b, first["refresh_token"]))

    replay = client.refresh(fleet.a, first["refresh_token"])  # the thief, on the other host
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"

    for host in fleet.hosts:  # the victim's newer token and access token are dead everywhere
        refused = client.refresh(host, second["refresh_token"])
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_grant"
        me = client.me(host, second["access_token"])
        assert me.status_code == 401
        assert me.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_login_limit_counts_once_across_both_hosts(
    fleet: Fleet, wechat: WeChatEmulator
) -> None:
    client = Client("203.0.113.3")
    statuses = [
        client.login(fleet.hosts[attempt % 2], wechat.mint_code(APPID)).status_code
        for attempt in range(LOGIN_LIMIT + 4)
    ]
    # Four workers on two hosts: counted per process, all ten would pass.
    assert statuses == [200] * LOGIN_LIMIT + [429] * 4

    refused = client.login(fleet.a, wechat.mint_code(APPID))
    assert refused.status_code == 429
    assert refused.json()["error"] == "slow_down"
    assert int(refused.headers["Retry-After"]) > 0


def issuer_command(env: dict[str, str], *args: str) -> str:
    """The operator CLI, run as an operator would on one of the hosts."""
    command = Path(sys.executable).with_name("issuer")
    done = subprocess.run(
        [str(command), *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def kid_of(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def published(host: Gunicorn) -> set[str]:
    keys = requests.get(f"{host.url}/.well-known/jwks.json", timeout=10).json()["keys"]
    return {key["kid"] for key in keys}


def test_a_key_rotation_made_on_one_host_is_honoured_by_the_other(
    fleet: Fleet, wechat: WeChatEmulator
) -> None:
    client = Client("203.0.113.4")
    before = ok(client.login(fleet.a, wechat.mint_code(APPID)))
    old_kid = kid_of(before["access_token"])

    issuer_command(fleet.env, "keys", "rotate", "--now")
    after = refresh_until_signed_by_another_key(client, fleet.b, before, old_kid)
    after = refresh_until_signed_by_another_key(client, fleet.a, after, old_kid)
    new_kid = kid_of(after["access_token"])

    for host in fleet.hosts:
        assert {old_kid, new_kid} <= published(host)  # the retired key verifies until it ends
        assert ok(client.me(host, after["access_token"]))["user_id"] == after["user_id"]
        assert ok(client.me(host, before["access_token"]))["user_id"] == after["user_id"]


def refresh_until_signed_by_another_key(
    client: Client, host: Gunicorn, pair: dict[str, Any], old_kid: str
) -> dict[str, Any]:
    """Walk the refresh chain on ``host`` until its answer is signed by a key other than
    ``old_kid``: every process looks at the shared manifest at most once a second."""
    deadline = time.monotonic() + 10
    pair = ok(client.refresh(host, pair["refresh_token"]))
    while kid_of(pair["access_token"]) == old_kid:
        assert time.monotonic() < deadline, f"{host.url} never signed with the rotated key"
        time.sleep(0.1)
        pair = ok(client.refresh(host, pair["refresh_token"]))
    return pair


def test_the_compose_example_sets_only_settings_issuer_knows() -> None:
    compose = yaml.safe_load((ROOT / "examples/fleet/compose.yaml").read_text())
    names = set(compose["x-issuer"]["environment"])
    env_file = (ROOT / "examples/fleet/.env.example").read_text().splitlines()
    names |= {line.split("=", 1)[0] for line in env_file if line and not line.startswith("#")}
    deployment = {"WEB_CONCURRENCY", "ISSUER_BIND", "ISSUER_THREADS", "POSTGRES_PASSWORD"}
    known = {f"ISSUER_{name.upper()}" for name in SETTINGS} | {
        "ISSUER_WECHAT_APPID",
        "ISSUER_WECHAT_SECRET",
    }
    assert names - deployment <= known, names - deployment - known
    assert compose["x-issuer"]["environment"]["ISSUER_DATABASE_URL"].startswith("postgresql://")
    assert compose["x-issuer"]["environment"]["ISSUER_RATELIMIT_STORAGE_URI"].startswith("redis://")
