"""Prometheus metrics (``ISSUER_METRICS``, issuer/metrics.py): off means no ``/metrics`` at
all; on, every count matches what the test drove through the app and the loopback WeChat
emulator, no secret or per-user value reaches the body, and under real gunicorn the counts of
all workers add up whichever worker answers the scrape, a killed one included.

The body is read back with ``prometheus_client``'s own parser of the text format.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

# Imported before any test can set PROMETHEUS_MULTIPROC_DIR: prometheus_client picks its
# value storage when it is first imported, and this process must stay in-memory.
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from issuer import StartupError
from issuer.web.http import REQUEST_OBSERVER
from issuer.web.metrics import (
    CONTENT_TYPE,
    CREATED_DIR,
    MULTIPROC_DIR,
    PREPARED_BY,
    cleanup_multiprocess_dir,
    prepare_multiprocess_dir,
    worker_exited,
)
from issuer.wechat.emulator import Fault, WeChatEmulator
from tests.conftest import APPID, APPID2, SECRET, SECRET2, FakeClock, Gunicorn, free_port
from tests.test_openapi import DOC, documented_response
from tests.workers import connections_to_two_workers, worker_of, worker_pids

JSCODE2SESSION = "sns/jscode2session"
# The label names issuer's own metrics may carry: nothing that names a user, app or token.
ALLOWED_LABELS = {"outcome", "api", "errcode", "endpoint", "le"}
# The scraper's ISSUER_METRICS_TOKEN, sent as a Bearer token.
TOKEN = "scrape-token-" + "0123456789abcdef" * 2
SCRAPER = {"Authorization": f"Bearer {TOKEN}"}


class Scrape:
    """One parsed ``/metrics`` body: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def __call__(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a labelled series never touched (Prometheus's reading)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def issuer_samples(self) -> list[tuple[str, dict[str, str]]]:
        return [(name, dict(labels)) for name, labels in self.samples if name.startswith("issuer_")]


def scrape(client: FlaskClient) -> Scrape:
    response = client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == CONTENT_TYPE
    return Scrape(response.get_data(as_text=True))


@pytest.fixture
def metrics_app(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory(metrics=True, metrics_token=TOKEN)


@pytest.fixture
def metrics_client(metrics_app: Flask) -> FlaskClient:
    return metrics_app.test_client()


def log_in(client: FlaskClient, code: str) -> Any:
    return client.post("/auth/login", json={"code": code})


def refresh(client: FlaskClient, refresh_token: str) -> Any:
    return client.post("/auth/refresh", json={"refresh_token": refresh_token})


# -- off


def test_off_by_default_there_is_no_metrics_route(app: Flask, client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    assert response.headers["Cache-Control"] == "no-store"
    # Nothing observes requests when off: the request path pays one dictionary lookup.
    assert REQUEST_OBSERVER not in app.extensions
    assert "issuer.metrics" not in app.extensions


# -- on: read only with the token


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN.upper()}",
        "Bearer \u00e9t\u00e9",
    ],
)
def test_without_the_token_metrics_answer_as_a_missing_path(
    metrics_client: FlaskClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = metrics_client.get("/metrics", headers=headers)
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    assert b"issuer_" not in response.get_data()


def test_the_token_is_taken_with_any_case_of_the_scheme(metrics_client: FlaskClient) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = metrics_client.get("/metrics", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert response.status_code == 200, scheme


# -- on, in one process


def test_on_serves_the_text_format_as_documented(metrics_client: FlaskClient) -> None:
    response = metrics_client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    documented = documented_response("/metrics", "get", 200)
    assert response.mimetype in documented["content"]
    for name in documented["headers"]:
        assert name in response.headers, name
    assert response.headers["Cache-Control"] == "no-store"
    assert "404" in DOC["paths"]["/metrics"]["get"]["responses"]  # what it answers when off
    samples = Scrape(response.get_data(as_text=True))
    # Known series exist from the start, at zero.
    assert samples.has("issuer_logins_total", outcome="ok")
    assert samples.has("issuer_refreshes_total", outcome="ok")
    assert samples.has("issuer_refresh_token_reuse_total")
    assert samples("issuer_logins_total", outcome="ok") == 0
    assert samples("issuer_refresh_token_reuse_total") == 0
    # One process: the process collector of prometheus_client is there too.
    assert samples.has("process_cpu_seconds_total")


def test_logins_and_refreshes_are_counted_by_outcome(
    metrics_client: FlaskClient, wechat: WeChatEmulator
) -> None:
    pairs = []
    for user in ("ann", "bob", "cat"):
        response = log_in(metrics_client, wechat.mint_code(APPID, user))
        assert response.status_code == 200
        pairs.append(response.get_json())
    assert log_in(metrics_client, "").status_code == 400  # invalid_request, never sent
    assert metrics_client.post("/auth/login", json={}).status_code == 400
    wechat.inject(Fault(errcode=40029))
    assert log_in(metrics_client, wechat.mint_code(APPID)).status_code == 400  # invalid_grant
    not_here = metrics_client.post("/auth/login", json={"code": "c0de", "appid": APPID2})
    assert not_here.get_json()["error"] == "invalid_client"

    assert refresh(metrics_client, pairs[0]["refresh_token"]).status_code == 200
    assert refresh(metrics_client, pairs[1]["refresh_token"]).status_code == 200
    assert refresh(metrics_client, "rt_nothing").status_code == 400
    unsupported = metrics_client.post(
        "/auth/refresh", data={"grant_type": "password", "refresh_token": "x"}
    )
    assert unsupported.status_code == 400
    # Other endpoints are not logins or refreshes.
    assert metrics_client.get("/healthz").status_code == 200
    assert metrics_client.get("/me").status_code == 401

    samples = scrape(metrics_client)
    assert samples("issuer_logins_total", outcome="ok") == 3
    assert samples("issuer_logins_total", outcome="invalid_request") == 2
    assert samples("issuer_logins_total", outcome="invalid_grant") == 1
    assert samples("issuer_logins_total", outcome="invalid_client") == 1
    assert samples("issuer_refreshes_total", outcome="ok") == 2
    assert samples("issuer_refreshes_total", outcome="invalid_grant") == 1
    assert samples("issuer_refreshes_total", outcome="unsupported_grant_type") == 1
    logins = sum(v for (n, _), v in samples.samples.items() if n == "issuer_logins_total")
    refreshes = sum(v for (n, _), v in samples.samples.items() if n == "issuer_refreshes_total")
    assert (logins, refreshes) == (7, 4)
    assert samples("issuer_rate_limited_total", endpoint="/auth/login") == 0


def test_refresh_token_reuse_is_counted_once_per_detection(
    metrics_client: FlaskClient, wechat: WeChatEmulator, clock: FakeClock
) -> None:
    first = log_in(metrics_client, wechat.mint_code(APPID, "dan")).get_json()["refresh_token"]
    second = refresh(metrics_client, first).get_json()["refresh_token"]
    # The previous token again within the grace: a replay, not theft.
    assert refresh(metrics_client, first).status_code == 200
    assert scrape(metrics_client)("issuer_refresh_token_reuse_total") == 0

    clock.advance(11)  # past the 10 s grace
    reused = refresh(metrics_client, first)
    assert reused.status_code == 400
    assert reused.get_json()["error"] == "invalid_grant"
    # The session is revoked now: its current token is refused, but that is no new reuse.
    assert refresh(metrics_client, second).status_code == 400

    samples = scrape(metrics_client)
    assert samples("issuer_refresh_token_reuse_total") == 1
    assert samples("issuer_refreshes_total", outcome="ok") == 2
    assert samples("issuer_refreshes_total", outcome="invalid_grant") == 2


def test_wechat_calls_are_counted_by_api_and_errcode(
    metrics_client: FlaskClient, wechat: WeChatEmulator
) -> None:
    drive = [
        # (fault, times, login status)
        (None, 0, 200),
        (Fault(errcode=40029), 1, 400),
        (Fault(errcode=40163), 1, 400),
        (Fault(errcode=-1), 1, 200),  # busy once, then answered: two calls
        (Fault(errcode=45011), 1, 429),
        (Fault(errcode=40125), 1, 502),
        (Fault(errcode=99999), 1, 503),  # not a code this client knows
        (Fault(status=502), 1, 503),
        (Fault(body="<html><body>Bad Gateway</body></html>"), 1, 503),
    ]
    for fault, times, status in drive:
        if fault is not None:
            wechat.inject(fault, times=times)
        assert log_in(metrics_client, wechat.mint_code(APPID)).status_code == status
    token = log_in(metrics_client, wechat.mint_code(APPID, "eve")).get_json()["access_token"]
    phone = metrics_client.post(
        "/wechat/phone",
        json={"code": wechat.mint_phone_code(APPID, "eve")},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert phone.status_code == 200

    samples = scrape(metrics_client)
    by_errcode = {
        dict(labels)["errcode"]: value
        for (name, labels), value in samples.samples.items()
        if name == "issuer_wechat_requests_total" and dict(labels)["api"] == JSCODE2SESSION
    }
    assert by_errcode == {
        "0": 3,  # the first login, the busy one's retry, eve
        "40029": 1,
        "40163": 1,
        "-1": 1,
        "45011": 1,
        "40125": 1,
        "other": 1,
        "bad_status": 1,
        "bad_response": 1,
    }
    # Exactly what WeChat saw, counted independently by the emulator.
    assert sum(by_errcode.values()) == wechat.calls.count("/" + JSCODE2SESSION) == 11
    assert samples("issuer_wechat_requests_total", api="cgi-bin/stable_token", errcode="0") == 1
    assert (
        samples("issuer_wechat_requests_total", api="wxa/business/getuserphonenumber", errcode="0")
        == 1
    )
    # Every exchange has its time observed; WeChat's 45011 is not issuer's rate limit.
    assert samples("issuer_wechat_request_duration_seconds_count", api=JSCODE2SESSION) == 11
    assert samples("issuer_rate_limited_total", endpoint="/auth/login") == 0
    assert samples("issuer_logins_total", outcome="slow_down") == 1


def test_timeouts_and_unreachable_wechat_are_counted_with_their_latency(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    client = app_factory(metrics=True, metrics_token=TOKEN, wechat_timeout=0.3).test_client()
    wechat.inject(Fault(delay=0.6))
    assert log_in(client, wechat.mint_code(APPID)).status_code == 504
    assert log_in(client, wechat.mint_code(APPID, "fay")).status_code == 200
    samples = scrape(client)
    assert samples("issuer_wechat_requests_total", api=JSCODE2SESSION, errcode="timeout") == 1
    assert samples("issuer_wechat_requests_total", api=JSCODE2SESSION, errcode="0") == 1
    assert samples("issuer_logins_total", outcome="upstream_timeout") == 1
    # The timed-out exchange lasted at least the 0.3 s timeout: outside the 0.25 s bucket,
    # inside the 60 s one.
    count = "issuer_wechat_request_duration_seconds_count"
    bucket = "issuer_wechat_request_duration_seconds_bucket"
    assert samples(count, api=JSCODE2SESSION) == 2
    assert samples(bucket, api=JSCODE2SESSION, le="+Inf") == 2
    assert samples(bucket, api=JSCODE2SESSION, le="60.0") == 2
    assert samples(bucket, api=JSCODE2SESSION, le="0.25") <= 1
    assert samples("issuer_wechat_request_duration_seconds_sum", api=JSCODE2SESSION) >= 0.3
    edges = [float(labels["le"]) for name, labels in samples.issuer_samples() if name == bucket]
    assert sorted(edges) == [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf")]

    unreachable = app_factory(
        metrics=True, metrics_token=TOKEN, wechat_api_base=f"http://127.0.0.1:{free_port()}"
    ).test_client()
    assert log_in(unreachable, "any-code").status_code == 503
    samples = scrape(unreachable)
    assert samples("issuer_wechat_requests_total", api=JSCODE2SESSION, errcode="transport") == 1
    assert samples("issuer_logins_total", outcome="temporarily_unavailable") == 1


def test_rate_limit_hits_are_counted_by_endpoint(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    client = app_factory(
        metrics=True, metrics_token=TOKEN, ratelimit_login="2/minute", ratelimit_refresh="1/minute"
    ).test_client()
    wechat.inject(Fault(errcode=45011))
    assert log_in(client, wechat.mint_code(APPID)).status_code == 429  # WeChat's limit
    pair = log_in(client, wechat.mint_code(APPID, "gus")).get_json()
    limited = log_in(client, wechat.mint_code(APPID, "gus"))
    assert limited.status_code == 429  # issuer's own limit
    assert refresh(client, pair["refresh_token"]).status_code == 200
    assert refresh(client, pair["refresh_token"]).status_code == 429
    assert refresh(client, pair["refresh_token"]).status_code == 429

    samples = scrape(client)
    assert samples("issuer_rate_limited_total", endpoint="/auth/login") == 1
    assert samples("issuer_rate_limited_total", endpoint="/auth/refresh") == 2
    assert samples("issuer_logins_total", outcome="slow_down") == 2
    assert samples("issuer_logins_total", outcome="ok") == 1
    assert samples("issuer_refreshes_total", outcome="slow_down") == 2
    assert samples("issuer_refreshes_total", outcome="ok") == 1
    # The limited login never reached WeChat.
    assert (
        sum(
            value
            for (name, labels), value in samples.samples.items()
            if name == "issuer_wechat_requests_total"
        )
        == wechat.calls.count("/" + JSCODE2SESSION)
        == 2
    )


def test_nothing_secret_or_personal_reaches_the_body(
    metrics_app: Flask, metrics_client: FlaskClient, wechat: WeChatEmulator
) -> None:
    secrets: set[str] = {SECRET, SECRET2, APPID}
    for user in ("hal", "ivy"):
        code = wechat.mint_code(APPID, user)
        pair = log_in(metrics_client, code).get_json()
        claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
        openid, unionid = wechat.identity(APPID, user)
        session_key = wechat.session_key(APPID, openid)
        assert session_key is not None
        secrets |= {code, pair["access_token"], pair["refresh_token"], pair["user_id"]}
        secrets |= {openid, unionid, session_key, claims["sid"], claims["jti"]}
        rotated = refresh(metrics_client, pair["refresh_token"]).get_json()
        secrets |= {rotated["access_token"], rotated["refresh_token"]}
        bearer = {"Authorization": f"Bearer {rotated['access_token']}"}
        phone_code = wechat.mint_phone_code(APPID, user)
        secrets.add(phone_code)
        number = metrics_client.post("/wechat/phone", json={"code": phone_code}, headers=bearer)
        secrets.add(number.get_json()["pure_phone_number"])
    wechat.inject(Fault(errcode=40125))  # a credentials failure: the secret is in its URL
    failed_code = wechat.mint_code(APPID)
    secrets.add(failed_code)
    assert log_in(metrics_client, failed_code).status_code == 502

    samples = scrape(metrics_client)
    for secret in secrets:
        assert secret not in samples.text
    for name, labels in samples.issuer_samples():
        assert set(labels) <= ALLOWED_LABELS, (name, labels)


def test_each_app_counts_on_its_own(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    """Many apps in one process (as the tests build them): no duplicate registration, and
    each app's registry holds only its own counts."""
    first = app_factory(metrics=True, metrics_token=TOKEN).test_client()
    second = app_factory(metrics=True, metrics_token=TOKEN).test_client()
    assert log_in(first, wechat.mint_code(APPID, "jo")).status_code == 200
    assert scrape(first)("issuer_logins_total", outcome="ok") == 1
    assert scrape(second)("issuer_logins_total", outcome="ok") == 0


def test_a_multiprocess_dir_set_after_loading_stops_start_up(
    app_factory: Callable[..., Flask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting in memory while files were asked for would split the counts per worker."""
    monkeypatch.setenv(MULTIPROC_DIR, str(tmp_path))
    with pytest.raises(StartupError) as caught:
        app_factory(metrics=True, metrics_token=TOKEN)
    message = str(caught.value)
    assert message.startswith(f"{MULTIPROC_DIR}:")
    assert "\n" not in message


# -- the gunicorn master's part (gunicorn.conf.py), on a given environment


def master_environ(**more: str) -> dict[str, str]:
    return {
        "ISSUER_URL": "https://issuer.test",
        "ISSUER_WECHAT_APPID": APPID,
        "ISSUER_WECHAT_SECRET": SECRET,
        "ISSUER_METRICS_TOKEN": TOKEN,
        **more,
    }


def test_the_master_prepares_nothing_when_metrics_are_off(tmp_path: Path) -> None:
    environ = master_environ(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    (tmp_path / "counter_1.db").write_bytes(b"kept")
    assert prepare_multiprocess_dir(environ) is None
    assert environ == master_environ(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    assert (tmp_path / "counter_1.db").exists()
    # A malformed setting: nothing prepared; the app's own start-up names it.
    assert prepare_multiprocess_dir(master_environ(ISSUER_METRICS="maybe")) is None


def test_the_master_makes_a_fresh_directory_and_removes_it_at_exit() -> None:
    environ = master_environ(ISSUER_METRICS="1")
    path = prepare_multiprocess_dir(environ)
    assert path is not None
    try:
        assert environ[MULTIPROC_DIR] == path == environ[CREATED_DIR]
        assert environ[PREPARED_BY] == str(os.getpid())
        assert Path(path).is_dir()
        assert list(Path(path).iterdir()) == []
        # gunicorn reads its configuration again on HUP: same master, same directory.
        assert prepare_multiprocess_dir(environ) == path
    finally:
        cleanup_multiprocess_dir(environ)
    assert not Path(path).exists()


def test_the_master_empties_a_given_directory_of_stale_files(tmp_path: Path) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    for name in ("counter_41.db", "histogram_41.db", "gauge_livesum_41.db"):
        (given / name).write_bytes(b"stale")
    (given / "README").write_text("not ours")
    environ = master_environ(ISSUER_METRICS="true", PROMETHEUS_MULTIPROC_DIR=str(given))
    assert prepare_multiprocess_dir(environ) == str(given)
    assert sorted(item.name for item in given.iterdir()) == ["README"]
    assert CREATED_DIR not in environ

    (given / "counter_42.db").write_bytes(b"live")  # a worker's, after a HUP: kept
    assert prepare_multiprocess_dir(environ) == str(given)
    assert (given / "counter_42.db").exists()

    (given / "gauge_livesum_42.db").write_bytes(b"live gauge")
    worker_exited(42, environ)  # gunicorn's child_exit
    assert not (given / "gauge_livesum_42.db").exists()
    assert (given / "counter_42.db").exists()  # its counts stay in the sums

    cleanup_multiprocess_dir(environ)  # the operator's directory is not ours to remove
    assert given.is_dir()


# -- real gunicorn, two workers


def request(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    headers = dict(headers or {})
    if body is not None:
        headers["Content-Type"] = "application/json"
    payload = json.dumps(body) if body is not None else None
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def scraped_logins(connection: http.client.HTTPConnection) -> float:
    status, body = request(connection, "GET", "/metrics", headers=SCRAPER)
    assert status == 200, body
    return Scrape(body.decode())("issuer_logins_total", outcome="ok")


@pytest.mark.slow
def test_gunicorn_workers_add_up_and_a_dead_worker_still_counts(
    gunicorn: Callable[..., Gunicorn],
    gunicorn_env: dict[str, str],
    wechat: WeChatEmulator,
    tmp_path: Path,
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A previous run's file, counting 1000 logins: the master must clear it before start.
    stale = MmapedDict(str(metrics_dir / "counter_1.db"))
    key = mmap_key("issuer_logins", "issuer_logins_total", ["outcome"], ["ok"], "stale")
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    server = gunicorn(
        {
            **gunicorn_env,
            "ISSUER_METRICS": "1",
            "ISSUER_METRICS_TOKEN": TOKEN,
            MULTIPROC_DIR: str(metrics_dir),
        },
        workers=2,
    )

    def log_in_on(connection: http.client.HTTPConnection, user: str) -> None:
        code = wechat.mint_code(APPID, user)
        status, body = request(connection, "POST", "/auth/login", {"code": code})
        assert status == 200, body

    with connections_to_two_workers(server) as (first, second):
        for index in range(5):
            log_in_on(first, f"first-{index}")
        for index in range(3):
            log_in_on(second, f"second-{index}")
        # Each worker answers with the sum of both.
        assert scraped_logins(first) == scraped_logins(second) == 8

        killed = worker_of(server, first)
        survivor = worker_of(server, second)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while killed in worker_pids(server) or len(worker_pids(server)) < 2:
            assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
            time.sleep(0.05)
        # The dead worker's logins still count; the survivor answers the scrape.
        assert worker_of(server, second) == survivor
        assert scraped_logins(second) == 8
        log_in_on(second, "after")

    with connections_to_two_workers(server) as (first, second):
        assert {worker_of(server, first), worker_of(server, second)} == worker_pids(server)
        log_in_on(first, "replacement")
        assert scraped_logins(first) == scraped_logins(second) == 10
    assert (metrics_dir / f"counter_{killed}.db").exists()
    assert not (metrics_dir / "counter_1.db").exists()
