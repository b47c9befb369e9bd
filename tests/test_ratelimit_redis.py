"""Rate limits shared through a real Redis (SPEC §10 "shared across workers when a Redis URI is
set"): counted once across two hosts and across gunicorn's workers, kept apart between two
deployments on one Redis, served with per-process limits while Redis is down or hung and shared
again once it is back, checked at start-up, and never leaking the Redis password.

The limits with ``memory://`` in one process (the 429, ``Retry-After``, per-address keys) are
in ``test_http.py``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask

from issuer import StartupError, create_app
from issuer.web.ratelimit import key_prefix
from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, FakeClock, Gunicorn, ServerThread, free_port
from tests.redisserver import RedisServer
from tests.workers import connection_owners, sessions_across_workers

TIMEOUT = 10
VARIABLE = "ISSUER_RATELIMIT_STORAGE_URI"
URL = "https://issuer.test"


@pytest.fixture
def build_app(
    settings_for: Callable[..., dict[str, Any]], clock: FakeClock
) -> Callable[..., Flask]:
    """``build_app(storage_uri, **settings)``: a production app counting in that storage."""

    def build(storage_uri: str, **overrides: Any) -> Flask:
        config = settings_for(ratelimit_storage_uri=storage_uri, **overrides)
        return create_app(config, clock=clock, environ={})

    return build


@pytest.fixture
def hosts() -> Iterator[Callable[[Flask], ServerThread]]:
    """``serve(app)``: the app on a loopback port of its own, as one host; stopped after."""
    servers: list[ServerThread] = []

    def serve(app: Flask) -> ServerThread:
        servers.append(ServerThread(app))
        return servers[-1]

    yield serve
    for server in servers:
        server.stop()


def log_in(url: str, wechat: WeChatEmulator, session: Any = requests) -> requests.Response:
    """A login with a fresh code: answered 200 or 429 in JSON, never anything else."""
    response: requests.Response = session.post(
        url + "/auth/login", json={"code": wechat.mint_code(APPID)}, timeout=TIMEOUT
    )
    assert response.status_code in (200, 429), (response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/json", response.text
    return response


def assert_slow_down(response: requests.Response) -> None:
    """SPEC §2: 429 ``slow_down`` in the OAuth error shape, ``Retry-After`` whole seconds."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert set(body) >= {"error", "error_description"}, body
    assert body["error"] == "slow_down"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["Cache-Control"] == "no-store"


# -- counted once, whichever host or worker answers


def test_login_limit_is_counted_once_across_two_hosts(
    build_app: Callable[..., Flask],
    hosts: Callable[[Flask], ServerThread],
    redis_server: RedisServer,
    redis_url: str,
    wechat: WeChatEmulator,
) -> None:
    first = hosts(build_app(redis_url, ratelimit_login="5/minute"))
    second = hosts(build_app(redis_url, ratelimit_login="5/minute"))

    responses = [log_in(host.url, wechat) for host in [first, second] * 4]

    assert [r.status_code for r in responses] == [200] * 5 + [429] * 3
    for response in responses[5:]:
        assert_slow_down(response)
    assert redis_server.stored_keys() == [
        f"LIMITS:LIMITER/{key_prefix(URL)}/127.0.0.1/auth.login/5/1/minute"
    ]


def test_user_and_app_limits_are_counted_once_across_two_hosts(
    build_app: Callable[..., Flask],
    hosts: Callable[[Flask], ServerThread],
    redis_server: RedisServer,
    redis_url: str,
    wechat: WeChatEmulator,
) -> None:
    """The per-user limit and the app's budget of WeChat calls live in Redis beside the
    per-address counters, in the same key scheme: two hosts spend one allowance."""
    settings = {"ratelimit_wechat_user": "2/minute", "ratelimit_wechat_app": "4/minute"}
    first = hosts(build_app(redis_url, **settings))
    second = hosts(build_app(redis_url, **settings))
    token = log_in(first.url, wechat).json()["access_token"]
    other = log_in(second.url, wechat).json()["access_token"]

    def check(host: ServerThread, access_token: str) -> requests.Response:
        return requests.get(
            host.url + "/wechat/session",
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=TIMEOUT,
        )

    # One user: once on each host, then refused on either.
    assert [check(host, token).status_code for host in (first, second)] == [200, 200]
    assert_slow_down(check(first, token))
    # Calls to WeChat so far: a server token and two checksessions; one more is allowed.
    assert check(second, other).status_code == 200
    refused = check(first, other)
    assert_slow_down(refused)
    assert "budget" in refused.json()["error_description"]
    keys = redis_server.stored_keys()
    assert f"LIMITS:LIMITER/{key_prefix(URL)}/wechat/{APPID}/4/1/minute" in keys
    users = [key for key in keys if key.split("/")[2].startswith("user:")]
    assert len(users) == 2, keys


def test_two_deployments_on_one_redis_count_apart(
    build_app: Callable[..., Flask],
    hosts: Callable[[Flask], ServerThread],
    redis_server: RedisServer,
    redis_url: str,
    wechat: WeChatEmulator,
) -> None:
    ours = hosts(build_app(redis_url, ratelimit_login="1/minute"))
    # Same Redis, same client address, same limit: only ISSUER_URL differs.
    theirs = hosts(build_app(redis_url, ratelimit_login="1/minute", url="https://other.test"))

    assert log_in(ours.url, wechat).status_code == 200
    assert log_in(theirs.url, wechat).status_code == 200
    assert log_in(ours.url, wechat).status_code == 429
    assert log_in(theirs.url, wechat).status_code == 429
    prefixes = {key.split("/")[1] for key in redis_server.stored_keys()}
    assert prefixes == {key_prefix(URL), key_prefix("https://other.test")}
    assert len(prefixes) == 2


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["redis", "memory"])
def test_login_limit_across_gunicorn_workers(
    storage: str,
    gunicorn: Callable[..., Gunicorn],
    gunicorn_env: dict[str, str],
    redis_server: RedisServer,
    redis_url: str,
    wechat: WeChatEmulator,
) -> None:
    uri = redis_url if storage == "redis" else "memory://"
    server = gunicorn(
        {**gunicorn_env, "ISSUER_RATELIMIT_LOGIN": "5/minute", VARIABLE: uri}, workers=2
    )
    # Eight keep-alive connections held by both workers between them: each login below goes
    # to the worker holding its connection, so both workers answer some of them.
    sessions = sessions_across_workers(server, 8)
    per_worker = connection_owners(server)
    try:
        statuses = collections.Counter(
            log_in(server.url, wechat, session).status_code for session in sessions
        )
    finally:
        for session in sessions:
            session.close()

    if storage == "redis":
        assert statuses == {200: 5, 429: 3}, (statuses, per_worker)
    else:
        # Each worker counts alone, up to 5 of its own: more than 5 get through in all.
        expected = sum(min(count, 5) for count in per_worker.values())
        assert statuses[200] == expected > 5, (statuses, per_worker)
    output = server.stop()
    assert redis_server.password not in output
    if storage == "redis":
        assert f"rate limits counted in Redis at redis://127.0.0.1:{redis_server.port}/0" in output


# -- Redis away while serving: per-process limits, no 500, back to shared by itself


def stop(server: RedisServer) -> None:
    server.stop()


def start(server: RedisServer) -> None:
    server.start()  # the same port, an empty keyspace: no persistence


OUTAGES = {
    "stopped": (stop, start),  # connections refused
    "hung": (RedisServer.freeze, RedisServer.thaw),  # connections accepted, never answered
}


def refresh_count(server: RedisServer) -> int:
    """The refresh counter of 127.0.0.1 in Redis (0 when absent)."""
    keys = server.stored_keys("*/auth.refresh/*")
    if not keys:
        return 0
    with server.client() as client:
        return int(client.get(keys[0]) or 0)


def wait_until_counted_in_redis(url: str, server: RedisServer, timeout: float = 45) -> None:
    """Poll with refreshes until one made through ``url`` is counted in Redis again.

    flask-limiter pings the storage after 1, 2, 4 ... 32 s; the outages here are short, so
    recovery comes within a few seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = refresh_count(server)
        response = requests.post(url + "/auth/refresh", json={"refresh_token": "x"}, timeout=5)
        assert response.status_code == 400, response.text  # counted, then refused as unknown
        if refresh_count(server) > before:
            return
        time.sleep(0.05)
    pytest.fail(f"{url} did not count in Redis again within {timeout} s")


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_redis_outage_serves_with_per_process_limits_then_shares_again(
    outage: str,
    build_app: Callable[..., Flask],
    hosts: Callable[[Flask], ServerThread],
    redis_factory: Callable[..., RedisServer],
    wechat: WeChatEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = redis_factory()
    begin, end = OUTAGES[outage]
    # Short timeouts (the URI's query wins over issuer's 1 s) keep the hung case quick.
    uri = redis.url(query="socket_timeout=0.25&socket_connect_timeout=0.25")
    settings = {"ratelimit_login": "3/minute", "ratelimit_refresh": "10000/minute"}
    first, second = hosts(build_app(uri, **settings)), hosts(build_app(uri, **settings))

    shared = [log_in(host.url, wechat) for host in (first, second, first, second)]
    assert [r.status_code for r in shared] == [200, 200, 200, 429]

    begin(redis)
    timings: list[float] = []
    during: list[requests.Response] = []
    for host in (first, first, first, first, second):
        started = time.monotonic()
        during.append(log_in(host.url, wechat))
        timings.append(time.monotonic() - started)
    # Each host now counts in its own memory, from zero: 3 at the first, then the limit holds;
    # the second host starts from zero of its own.
    assert [r.status_code for r in during] == [200, 200, 200, 429, 200]
    assert_slow_down(during[3])
    assert max(timings) < 3, timings  # a hung Redis costs a timeout, never a stuck request
    assert "falling back to in-memory storage" in caplog.text

    end(redis)
    for host in (first, second):
        wait_until_counted_in_redis(host.url, redis)
    redis.flush()  # whatever the hung server ran late, on sockets already given up
    again = [log_in(host.url, wechat) for host in (second, first, second, first)]
    assert [r.status_code for r in again] == [200, 200, 200, 429]
    assert "Rate limit storage recovered" in caplog.text
    assert redis.password not in caplog.text


# -- start-up


@pytest.mark.parametrize(
    ("case", "uri"),
    [
        ("wrong password", lambda server: server.url(password="not-the-password-4f1c")),
        ("no password", lambda server: server.url(password="")),
        ("no such database", lambda server: server.url(db=99)),
    ],
)
def test_start_up_stops_with_one_line_when_redis_refuses(
    case: str,
    uri: Callable[[RedisServer], str],
    build_app: Callable[..., Flask],
    redis_server: RedisServer,
) -> None:
    with pytest.raises(StartupError) as caught:
        build_app(uri(redis_server))
    message = str(caught.value)
    assert message.startswith(f"{VARIABLE}: Redis at redis://127.0.0.1:{redis_server.port}/")
    assert "\n" not in message
    assert redis_server.password not in message
    assert "not-the-password-4f1c" not in message


def test_start_up_with_redis_unreachable_serves_with_per_process_limits(
    build_app: Callable[..., Flask], wechat: WeChatEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    password = "unreachable-redis-password-9d2e"
    port = free_port()  # nothing listens there
    app = build_app(f"redis://:{password}@127.0.0.1:{port}/0", ratelimit_login="1/minute")

    warnings = [r for r in caplog.records if r.name == "issuer.ratelimit"]
    assert [r.levelname for r in warnings] == ["WARNING"]
    assert VARIABLE in warnings[0].getMessage()
    assert f"redis://127.0.0.1:{port}/0 is unreachable" in warnings[0].getMessage()
    client = app.test_client()
    statuses = [
        client.post("/auth/login", json={"code": wechat.mint_code(APPID)}).status_code
        for _ in range(2)
    ]
    assert statuses == [200, 429]
    assert password not in caplog.text


@pytest.mark.slow
def test_gunicorn_refuses_to_start_on_a_wrong_redis_password(
    gunicorn: Callable[..., Gunicorn], gunicorn_env: dict[str, str], redis_server: RedisServer
) -> None:
    wrong = "wrong-redis-password-0b7a"
    env = {**gunicorn_env, VARIABLE: redis_server.url(password=wrong)}
    server = gunicorn(env, workers=2, ready=False)
    status = server.wait_exit(timeout=15)
    output = server.output()
    assert status != 0, output
    lines = [line for line in output.splitlines() if VARIABLE in line]
    assert lines == [
        f"issuer: {VARIABLE}: Redis at {redis_server.url(password='')} refused the credentials"
    ], output
    assert "Traceback" not in output
    assert wrong not in output
    assert redis_server.password not in output


def test_storage_failing_between_counting_and_answering_still_gives_a_429(
    build_app: Callable[..., Flask],
    redis_factory: Callable[..., RedisServer],
) -> None:
    """A 429 asks the storage when the window resets, after counting the request. Redis failing
    in between is played by a Redis user allowed to count (a script) but not to read a counter
    (GET, TTL): the answer is still a 429, never a 500."""
    redis = redis_factory()
    with redis.client() as client:
        client.acl_setuser(
            "counter",
            enabled=True,
            passwords=["+counter-password"],
            keys=["*"],
            commands=["+@all", "-get", "-ttl"],
        )
    uri = f"redis://counter:counter-password@127.0.0.1:{redis.port}/0"
    client = build_app(uri, ratelimit_refresh="1/minute").test_client()

    # The second request is counted over the limit in Redis; reading when the window resets
    # then fails. (Before rate-limit headers were dropped from answers that passed, the first
    # answer's headers already read, failed, and sent flask-limiter to its in-memory fallback,
    # and this loop waited for it to recover; now only a 429 reads.)
    deadline = time.monotonic() + 15
    responses = []
    while not responses or responses[-1].status_code != 429:
        assert time.monotonic() < deadline, [r.status_code for r in responses]
        responses.append(client.post("/auth/refresh", json={"refresh_token": "x"}))
        time.sleep(0.05)
    assert {r.status_code for r in responses} <= {400, 429}, [r.get_json() for r in responses]
    over = responses[-1]
    assert over.status_code == 429, over.get_json()
    assert over.get_json()["error"] == "slow_down"
    assert 1 <= int(over.headers["Retry-After"]) <= 60


def test_redis_over_a_unix_socket_counts_like_tcp(
    build_app: Callable[..., Flask],
    redis_server: RedisServer,
    redis_url: str,
    wechat: WeChatEmulator,
) -> None:
    uri = f"redis+unix://:{redis_server.password}@{redis_server.socket_path}?db=0"
    local = build_app(uri, ratelimit_login="1/minute").test_client()
    remote = build_app(redis_url, ratelimit_login="1/minute").test_client()

    assert local.post("/auth/login", json={"code": wechat.mint_code(APPID)}).status_code == 200
    # The same database through TCP: the same counter.
    assert remote.post("/auth/login", json={"code": wechat.mint_code(APPID)}).status_code == 429
    assert len(redis_server.stored_keys()) == 1
