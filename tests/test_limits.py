"""Limits on every endpoint that calls WeChat or decrypts, on ``/me``, and on issuer's own calls
to WeChat per app; ``Retry-After`` on 429 and 503 answers only; no thread per counted request.

One process, ``memory://`` counters (the Redis-shared counting is in ``test_ratelimit_redis.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient

from issuer.web.ratelimit import LazyMemoryStorage
from issuer.wechat.emulator import Fault, WeChatEmulator
from tests.conftest import APPID

CHECKSESSION = "/wxa/checksession"
PHONE = "/wxa/business/getuserphonenumber"
STABLE_TOKEN = "/cgi-bin/stable_token"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def log_in(client: FlaskClient, wechat: WeChatEmulator, user: str) -> str:
    response = client.post("/auth/login", json={"code": wechat.mint_code(APPID, user)})
    assert response.status_code == 200, response.get_json()
    token: str = response.get_json()["access_token"]
    return token


def assert_slow_down(response: Any) -> None:
    assert response.status_code == 429, response.get_json()
    assert response.get_json()["error"] == "slow_down"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["Cache-Control"] == "no-store"


# -- per user, per client address


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/wechat/session"), ("POST", "/wechat/phone"), ("POST", "/wechat/decrypt")],
)
def test_each_wechat_endpoint_is_limited_per_user(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator, method: str, path: str
) -> None:
    client = app_factory(ratelimit_wechat_user="2/minute").test_client()
    alice, bob = log_in(client, wechat, "alice"), log_in(client, wechat, "bob")

    def send(token: str, user: str) -> Any:
        if path == "/wechat/phone":
            body = {"code": wechat.mint_phone_code(APPID, user)}
        elif path == "/wechat/decrypt":
            body = wechat.user_data(APPID, user)
        else:
            body = None
        return client.open(path, method=method, json=body, headers=bearer(token))

    assert [send(alice, "alice").status_code for _ in range(2)] == [200, 200]
    wechat.calls.clear()
    assert_slow_down(send(alice, "alice"))
    assert wechat.calls == []  # refused before WeChat is asked anything
    # Another user from the same address has an allowance of their own.
    assert send(bob, "bob").status_code == 200
    # And the limit is per endpoint: alice can still read /me.
    assert client.get("/me", headers=bearer(alice)).status_code == 200


def test_a_forged_token_naming_a_user_spends_nothing_of_theirs(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    """The user's allowance is counted only once the token verifies: otherwise anyone could
    lock a user out by sending tokens that merely name them."""
    client = app_factory(ratelimit_wechat_user="1/minute").test_client()
    token = log_in(client, wechat, "victim")
    claims = jwt.decode(token, options={"verify_signature": False})
    kid = jwt.get_unverified_header(token)["kid"]
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims, attacker, "ES256", headers={"kid": kid, "typ": "at+jwt"})
    for _ in range(3):
        assert client.get("/wechat/session", headers=bearer(forged)).status_code == 401
    assert client.get("/wechat/session", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/wechat/session"), ("POST", "/wechat/phone"), ("POST", "/wechat/decrypt")],
)
def test_each_wechat_endpoint_is_limited_per_address_before_the_token_is_checked(
    app_factory: Callable[..., Flask], method: str, path: str
) -> None:
    client = app_factory(ratelimit_wechat="2/minute").test_client()
    statuses = [
        client.open(path, method=method, json={}, headers=bearer("garbage")).status_code
        for _ in range(3)
    ]
    assert statuses == [401, 401, 429]
    assert_slow_down(client.open(path, method=method, json={}, headers=bearer("garbage")))


def test_me_is_limited_per_address(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    client = app_factory(ratelimit_me="2/minute").test_client()
    token = log_in(client, wechat, "carol")
    assert [client.get("/me", headers=bearer(token)).status_code for _ in range(2)] == [200, 200]
    assert_slow_down(client.get("/me", headers=bearer(token)))
    # Behind a trusted proxy, another address has its own count.
    proxied = app_factory(ratelimit_me="1/minute", proxy_hops=1).test_client()
    token = log_in(proxied, wechat, "carol")
    for address in ("203.0.113.1", "203.0.113.2"):
        headers = {**bearer(token), "X-Forwarded-For": address}
        assert proxied.get("/me", headers=headers).status_code == 200


# -- per app: issuer's own calls to WeChat


def test_the_app_budget_refuses_before_wechat_is_called(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    """Three calls to WeChat per minute for the app: a server token and a checksession for
    the first user, a checksession for the second; the third user's check is refused with
    429 before any call, whoever asks. Logins are not counted (WeChat counts them per user)."""
    client = app_factory(ratelimit_wechat_app="3/minute").test_client()
    tokens = [log_in(client, wechat, user) for user in ("u1", "u2", "u3")]
    wechat.calls.clear()
    assert client.get("/wechat/session", headers=bearer(tokens[0])).status_code == 200
    assert client.get("/wechat/session", headers=bearer(tokens[1])).status_code == 200
    assert wechat.calls == [STABLE_TOKEN, CHECKSESSION, CHECKSESSION]

    refused = client.get("/wechat/session", headers=bearer(tokens[2]))
    assert_slow_down(refused)
    assert "budget" in refused.get_json()["error_description"]
    phone = client.post(
        "/wechat/phone",
        json={"code": wechat.mint_phone_code(APPID, "u3")},
        headers=bearer(tokens[2]),
    )
    assert_slow_down(phone)
    assert wechat.calls == [STABLE_TOKEN, CHECKSESSION, CHECKSESSION]
    # Logging in still works: the login exchange is not part of the budget.
    log_in(client, wechat, "u4")


def test_a_busy_retry_counts_against_the_budget(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    client = app_factory(ratelimit_wechat_app="3/minute").test_client()
    token = log_in(client, wechat, "busy")
    wechat.inject(Fault(errcode=-1, path=CHECKSESSION))
    wechat.calls.clear()
    # stable_token, checksession (busy), checksession again: the whole budget.
    assert client.get("/wechat/session", headers=bearer(token)).status_code == 200
    assert wechat.calls == [STABLE_TOKEN, CHECKSESSION, CHECKSESSION]
    assert_slow_down(client.get("/wechat/session", headers=bearer(token)))


# -- Retry-After on 429 and 503 only


def test_answers_that_passed_carry_no_rate_limit_headers(
    client: FlaskClient, wechat: WeChatEmulator
) -> None:
    login = client.post("/auth/login", json={"code": wechat.mint_code(APPID, "h")})
    bad = client.post("/auth/refresh", json={"refresh_token": "x"})
    me = client.get("/me", headers=bearer(login.get_json()["access_token"]))
    for response in (login, bad, me):
        assert response.status_code in (200, 400)
        assert "Retry-After" not in response.headers
        names = {name for name, _ in response.headers.items()}
        assert not [name for name in names if name.startswith("X-RateLimit")]


def test_a_503_says_retry_after_one_second(client: FlaskClient, wechat: WeChatEmulator) -> None:
    wechat.inject(Fault(status=500))
    response = client.post("/auth/login", json={"code": wechat.mint_code(APPID)})
    assert response.status_code == 503
    assert response.get_json()["error"] == "temporarily_unavailable"
    assert response.headers["Retry-After"] == "1"


def test_a_429_says_when_its_window_resets(app_factory: Callable[..., Flask]) -> None:
    client = app_factory(ratelimit_refresh="1/hour").test_client()
    assert client.post("/auth/refresh", json={"refresh_token": "x"}).status_code == 400
    response = client.post("/auth/refresh", json={"refresh_token": "x"})
    assert response.status_code == 429
    # The hour's window, not a fixed minute: the real reset, in whole seconds.
    assert 3500 < int(response.headers["Retry-After"]) <= 3600


# -- the in-memory counters start no thread


def test_counting_in_memory_starts_no_thread(
    app_factory: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """limits' MemoryStorage starts a timer thread on nearly every hit to expire keys; the
    storage issuer counts with expires them as it goes."""
    client = app_factory(ratelimit_refresh="1000/minute").test_client()
    started: list[threading.Thread] = []
    original = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        started.append(thread)
        original(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    for _ in range(20):
        assert client.post("/auth/refresh", json={"refresh_token": "x"}).status_code == 400
        time.sleep(0.015)  # longer than MemoryStorage's 10 ms timer: each hit would start one
    assert started == []


def test_the_lazy_storage_sweeps_keys_nobody_reads_again() -> None:
    storage = LazyMemoryStorage()
    storage.incr("gone", expiry=-1)  # a window that has already ended
    storage.incr("live", expiry=60)
    storage.sweep()
    assert "gone" not in storage.storage
    assert "gone" not in storage.expirations
    assert storage.get("live") == 1
