"""WeChat server access tokens (issuer.wechat.servertoken): cached in the store, shared by every
worker, refreshed by one process at a time (SPEC §2 ``/wechat/phone``).

Most tests run a loopback emulator of their own on the test's FakeClock, so WeChat's token
lifetime and issuer's cache move together and ``token_fetches`` counts from zero. The last
test races two real gunicorn workers against the shared session emulator.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask

from issuer.config import WeChatApp
from issuer.errors import UpstreamMisconfigured
from issuer.store import Store
from issuer.wechat.emulator import SERVER_TOKEN_LIFETIME, Fault, WeChatEmulator
from issuer.wechat.servertoken import LEASE_SECONDS, REFETCH_INTERVAL, REFRESH_AHEAD, ServerTokens
from tests.conftest import APPID, SECRET, FakeClock, Gunicorn, ServerThread, all_at_once
from tests.test_gunicorn import log_in, sessions_across_workers

STABLE_TOKEN = "/cgi-bin/stable_token"
TIMEOUT = 10


@pytest.fixture
def timed_wechat(clock: FakeClock) -> Iterator[tuple[WeChatEmulator, str]]:
    """A loopback WeChat of this test alone, on the test's clock."""
    emulator = WeChatEmulator({APPID: SECRET}, clock=clock)
    server = ServerThread(emulator.app)
    yield emulator, server.url
    server.stop()


@pytest.fixture
def app(app_factory: Callable[..., Flask], timed_wechat: tuple[WeChatEmulator, str]) -> Flask:
    return app_factory(wechat_api_base=timed_wechat[1])


@pytest.fixture
def wx(timed_wechat: tuple[WeChatEmulator, str]) -> WeChatEmulator:
    return timed_wechat[0]


@pytest.fixture
def tokens(app: Flask) -> ServerTokens:
    server_tokens: ServerTokens = app.extensions["issuer.userdata"].server_tokens
    return server_tokens


@pytest.fixture
def wechat_app(app: Flask) -> WeChatApp:
    found = app.extensions["issuer"].settings.app(APPID)
    assert found is not None
    return found


@pytest.fixture
def store(app: Flask) -> Store:
    return app.extensions["issuer"].store


def another_process(app: Flask, clock: FakeClock, **options: Any) -> ServerTokens:
    """A second ServerTokens over the same store: another worker, with its own lease owner."""
    data = app.extensions["issuer.userdata"]
    return ServerTokens(data.store, data.wechat, data.sealer, clock=clock, **options)


def fetches(emulator: WeChatEmulator) -> int:
    return emulator.token_fetches.get(APPID, 0)


# -- one process


def test_first_get_fetches_and_later_gets_reuse(tokens, wechat_app, wx, store, clock):
    first = tokens.get(wechat_app)
    assert fetches(wx) == 1
    for _ in range(5):
        clock.advance(60)
        assert tokens.get(wechat_app) == first
    assert fetches(wx) == 1
    cached = store.get_server_token(APPID)
    assert cached.token is not None
    assert first.encode() not in cached.token.blob  # sealed, not stored as given
    assert cached.lease_until is None  # the fetch ended its lease


def test_another_process_uses_the_cached_token(app, tokens, wechat_app, wx, clock):
    first = tokens.get(wechat_app)
    assert another_process(app, clock).get(wechat_app) == first
    assert fetches(wx) == 1


@pytest.mark.parametrize(
    ("advance", "expected_fetches"),
    [
        (SERVER_TOKEN_LIFETIME - REFRESH_AHEAD - 1, 1),
        (SERVER_TOKEN_LIFETIME - REFRESH_AHEAD, 2),
        (SERVER_TOKEN_LIFETIME - 1, 2),
        (SERVER_TOKEN_LIFETIME + 1, 2),
        (10 * SERVER_TOKEN_LIFETIME, 2),
    ],
    ids=["61 s before expiry", "60 s before", "1 s before", "1 s after", "long after"],
)
def test_refresh_ahead_of_expiry(tokens, wechat_app, wx, clock, advance, expected_fetches):
    tokens.get(wechat_app)
    clock.advance(advance)
    tokens.get(wechat_app)
    assert fetches(wx) == expected_fetches


def test_while_wechat_returns_the_same_token_it_is_asked_again_at_most_every_interval(
    tokens, wechat_app, wx, clock
):
    first = tokens.get(wechat_app)
    clock.advance(SERVER_TOKEN_LIFETIME - REFRESH_AHEAD)
    # WeChat's normal mode hands back the same token, with 60 s left.
    assert tokens.get(wechat_app) == first
    assert fetches(wx) == 2
    clock.advance(REFETCH_INTERVAL - 1)
    assert tokens.get(wechat_app) == first
    assert fetches(wx) == 2
    clock.advance(1)
    assert tokens.get(wechat_app) == first
    assert fetches(wx) == 3
    clock.advance(REFRESH_AHEAD - REFETCH_INTERVAL)  # WeChat's expiry: now it makes a new one
    second = tokens.get(wechat_app)
    assert second != first
    assert fetches(wx) == 4
    assert tokens.get(wechat_app) == second
    assert fetches(wx) == 4


def test_replace_fetches_and_forces_only_when_wechat_returns_the_rejected_token(
    tokens, wechat_app, wx
):
    first = tokens.get(wechat_app)
    wx.calls.clear()
    replaced = tokens.replace(wechat_app, first)
    assert replaced != first
    # Normal mode still returned ``first``; only then was a force refresh asked for.
    assert wx.calls == [STABLE_TOKEN, STABLE_TOKEN]
    assert fetches(wx) == 3
    assert tokens.get(wechat_app) == replaced


def test_replace_after_wechat_moved_on_needs_no_force(tokens, wechat_app, wx):
    first = tokens.get(wechat_app)
    wx.revoke_server_token(APPID)  # as a force refresh by someone else would
    replaced = tokens.replace(wechat_app, first)
    assert replaced != first
    assert fetches(wx) == 2


def test_replace_when_another_process_already_replaced_it_does_not_fetch(
    app, tokens, wechat_app, wx, clock
):
    rejected = tokens.get(wechat_app)
    other = another_process(app, clock)
    replacement = other.replace(wechat_app, rejected)
    assert replacement != rejected
    before = fetches(wx)

    assert tokens.replace(wechat_app, rejected) == replacement
    assert fetches(wx) == before


def test_replacing_a_token_other_than_the_cached_one_returns_the_cached_one(tokens, wechat_app, wx):
    current = tokens.get(wechat_app)
    assert tokens.replace(wechat_app, "some-older-token") == current
    assert fetches(wx) == 1


# -- the lease


def test_while_another_process_holds_the_lease_a_valid_token_is_used(
    app, tokens, wechat_app, wx, store, clock
):
    first = tokens.get(wechat_app)
    clock.advance(SERVER_TOKEN_LIFETIME - REFRESH_AHEAD + 1)  # due for a refresh ...
    seen = store.get_server_token(APPID).fetched_at
    assert store.take_server_token_lease(APPID, "other", clock(), clock() + LEASE_SECONDS, seen)
    # ... but another process is on it: the current token is still good meanwhile.
    assert tokens.get(wechat_app) == first
    assert fetches(wx) == 1


def test_a_lease_is_refused_to_whoever_missed_a_newer_token(tokens, wechat_app, store, clock):
    tokens.get(wechat_app)
    # A process that looked before the token was stored must not refetch it.
    assert not store.take_server_token_lease(APPID, "late", clock(), clock() + 15, None)


def test_a_lease_that_runs_out_is_taken_over(app, wechat_app, wx, store, clock):
    # Another process took the lease for the first token and died.
    assert store.take_server_token_lease(APPID, "dead", clock(), clock() + LEASE_SECONDS, None)
    started = clock()
    waiting = another_process(app, clock, sleep=clock.advance)  # polls move the fake clock

    token = waiting.get(wechat_app)

    assert token
    assert fetches(wx) == 1
    assert LEASE_SECONDS <= clock() - started < LEASE_SECONDS + 1


def test_a_failed_fetch_releases_the_lease(tokens, wechat_app, wx, store, clock):
    wx.inject(Fault(errcode=40125, path=STABLE_TOKEN))
    with pytest.raises(UpstreamMisconfigured):
        tokens.get(wechat_app)
    cached = store.get_server_token(APPID)
    assert cached.lease_until is None
    assert cached.token is None
    assert tokens.get(wechat_app)  # at once: no lease to wait out (the clock did not move)
    assert fetches(wx) == 1


RACE_ROUNDS = 5


def test_processes_racing_for_a_due_token_fetch_once(app, wechat_app, wx, clock):
    racers = [another_process(app, clock) for _ in range(8)]
    per_round = []
    for round_ in range(RACE_ROUNDS):
        if round_:
            clock.advance(SERVER_TOKEN_LIFETIME + 1)  # the token expired: everyone needs one
        before = fetches(wx)
        results = race_get(racers, wechat_app)
        assert all(isinstance(result, str) for result in results), results
        assert len(set(results)) == 1, "the processes came away with different tokens"
        per_round.append(fetches(wx) - before)
    assert per_round == [1] * RACE_ROUNDS  # stable_token calls in each round


def race_get(racers: list[ServerTokens], wechat_app: WeChatApp) -> list[object]:
    """Every racer calls ``get`` at once, each in its own thread."""
    barrier = threading.Barrier(len(racers))
    results: list[object] = [None] * len(racers)

    def race(index: int) -> None:
        barrier.wait(timeout=TIMEOUT)
        try:
            results[index] = racers[index].get(wechat_app)
        except BaseException as error:  # reported below, not lost in the thread
            results[index] = error

    threads = [threading.Thread(target=race, args=(index,)) for index in range(len(racers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * TIMEOUT)
    return results


# -- two real gunicorn workers


N_PHONES = 16


@pytest.mark.slow
def test_gunicorn_workers_share_one_server_token(gunicorn, gunicorn_env, wechat):
    server: Gunicorn = gunicorn(gunicorn_env, workers=2)
    users = [f"phone-racer-{index}" for index in range(N_PHONES)]
    # log_in keeps no response alive: a lingering one would hold a connection open.
    access_tokens = [log_in(server, wechat, user)["access_token"] for user in users]
    codes = [wechat.mint_phone_code(APPID, user) for user in users]
    before = fetches(wechat)
    sessions = sessions_across_workers(server, N_PHONES)  # both workers take part
    answers = all_at_once(
        [
            functools.partial(
                sessions[index].post,
                server.url + "/wechat/phone",
                json={"code": codes[index]},
                headers={"Authorization": f"Bearer {access_tokens[index]}"},
                timeout=TIMEOUT,
            )
            for index in range(N_PHONES)
        ],
        timeout=TIMEOUT,
    )
    for session in sessions:
        session.close()

    responses = [answer for answer in answers if isinstance(answer, requests.Response)]
    assert len(responses) == N_PHONES, answers
    assert [r.status_code for r in responses] == [200] * N_PHONES, [r.text for r in responses]
    assert [r.json()["phone_number"] for r in responses] == [wechat.phone_of(u) for u in users]
    assert fetches(wechat) == before + 1
