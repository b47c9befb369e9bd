"""Web login across a fleet: two issuer hosts (gunicorn, two workers each) on one PostgreSQL
and one Redis. An authorize on one host finishes with its callback on the other, and a PC's
poll waiting on one host sees a confirmation made through the other within its wait."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from issuer.oauth.pkce import s256
from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import Gunicorn, ServerThread
from tests.pgserver import PostgresServer
from tests.redisserver import RedisServer

pytestmark = pytest.mark.slow

MP = "wx1111111111111111"
OA = "wx3333333333333333"
DONE = "https://shop.example.com/auth/done"
TIMEOUT = 10


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> Iterator[tuple[WeChatEmulator, Gunicorn, Gunicorn]]:
    directory = tmp_path_factory.mktemp("weblogin-fleet")
    mp_secret, oa_secret = secrets.token_hex(16), secrets.token_hex(16)
    emulator = WeChatEmulator({MP: mp_secret, OA: oa_secret}, official_accounts=[OA])
    wechat = ServerThread(emulator.app)
    config = directory / "issuer.toml"
    config.write_text(
        f'[[apps]]\nappid = "{MP}"\nsecret = "{mp_secret}"\n'
        f'[[apps]]\nappid = "{OA}"\nsecret = "{oa_secret}"\nkind = "officialaccount"\n'
        f'[[clients]]\nid = "shop-h5"\nkind = "h5"\napp = "{OA}"\nredirect_uris = ["{DONE}"]\n'
        'scope = "snsapi_userinfo"\n'
        f'[[clients]]\nid = "shop-pc"\nkind = "web"\napp = "{MP}"\npage = "pages/scan/index"\n'
    )
    redis_server.flush()
    with postgres_server.fresh_schema() as database_url:
        env = {
            "ISSUER_URL": "https://issuer.test",
            "ISSUER_CONFIG": str(config),
            "ISSUER_DATABASE_URL": database_url,
            "ISSUER_RATELIMIT_STORAGE_URI": redis_server.url(),
            "ISSUER_KEYS_DIR": str(directory / "keys"),
            "ISSUER_WECHAT_API_BASE": wechat.url,
            "ISSUER_WECHAT_OPEN_BASE": wechat.url,
        }
        a = Gunicorn(env, directory / "a.log").start()
        b = Gunicorn(env, directory / "b.log").start()
        try:
            a.wait_ready()
            b.wait_ready()
            yield emulator, a, b
        finally:
            a.stop()
            b.stop()
            wechat.stop()


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def on(host: Gunicorn, location: str) -> str:
    """``location`` (an issuer URL) as served by ``host``."""
    parts = urlsplit(location)
    return f"{host.url}{parts.path}?{parts.query}"


def test_an_authorize_on_one_host_finishes_on_the_other(
    hosts: tuple[WeChatEmulator, Gunicorn, Gunicorn],
) -> None:
    _, a, b = hosts
    verifier = secrets.token_urlsafe(48)
    started = requests.get(
        f"{a.url}/auth/authorize",
        params={
            "response_type": "code",
            "client_id": "shop-h5",
            "redirect_uri": DONE,
            "state": "s1",
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert started.status_code == 302, started.text
    page = started.headers["Location"].split("#")[0]
    wechat = requests.post(
        page,
        data={**query_of(page), "user": "fleet-h5", "action": "consent"},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    back = requests.get(on(b, wechat.headers["Location"]), allow_redirects=False, timeout=TIMEOUT)
    assert back.status_code == 302, back.text
    answer = query_of(back.headers["Location"])
    assert answer["state"] == "s1"
    tokens = requests.post(
        f"{a.url}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": DONE,
            "client_id": "shop-h5",
            "code_verifier": verifier,
        },
        timeout=TIMEOUT,
    )
    assert tokens.status_code == 200, tokens.text
    again = requests.get(on(a, wechat.headers["Location"]), allow_redirects=False, timeout=TIMEOUT)
    assert again.status_code == 400  # the state was taken on the other host


def test_a_poll_on_one_host_sees_a_confirmation_made_on_the_other(
    hosts: tuple[WeChatEmulator, Gunicorn, Gunicorn],
) -> None:
    emulator, a, b = hosts
    login = requests.post(
        f"{a.url}/auth/login",
        json={"code": emulator.mint_code(MP, "fleet-phone"), "appid": MP},
        timeout=TIMEOUT,
    ).json()
    bearer = {"Authorization": f"Bearer {login['access_token']}"}
    verifier = secrets.token_urlsafe(48)
    ticket = requests.post(
        f"{b.url}/auth/scan",
        json={"client_id": "shop-pc", "code_challenge": s256(verifier)},
        timeout=TIMEOUT,
    ).json()["ticket"]
    image = requests.get(f"{a.url}/auth/scan/{ticket}/qrcode", timeout=TIMEOUT)
    assert image.headers["Content-Type"] == "image/png"
    scanned = requests.post(f"{a.url}/auth/scan/{ticket}/scanned", headers=bearer, timeout=TIMEOUT)
    assert scanned.status_code == 200, scanned.text

    seen: dict[str, Any] = {}

    def poll() -> None:
        seen.update(
            requests.get(
                f"{b.url}/auth/scan/{ticket}",
                params={"since": "scanned", "wait": 25},
                timeout=60,
            ).json()
        )

    poller = threading.Thread(target=poll)
    poller.start()
    confirmed = requests.post(
        f"{a.url}/auth/scan/{ticket}/confirm",
        json={"approve": True},
        headers=bearer,
        timeout=TIMEOUT,
    )
    assert confirmed.status_code == 200, confirmed.text
    poller.join(timeout=60)
    assert seen["status"] == "confirmed"
    tokens = requests.post(
        f"{a.url}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": seen["code"],
            "client_id": "shop-pc",
            "code_verifier": verifier,
        },
        timeout=TIMEOUT,
    )
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["user_id"] == login["user_id"]
