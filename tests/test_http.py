"""The HTTP edge: error shape for every status, request ids, 500s, rate limits."""

from __future__ import annotations

import json
import logging

import pytest
import requests

from tests.conftest import APPID


def test_unknown_path_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.get_json() == {
        "error": "not_found",
        "error_description": "There is no such endpoint.",
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/auth/login"), ("POST", "/me"), ("DELETE", "/.well-known/jwks.json")],
)
def test_wrong_method_is_json_405_with_allow(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"
    assert response.headers["Allow"]


def test_unexpected_exception_is_a_generic_500_with_the_request_id(app, caplog):
    @app.get("/explode")
    def explode():
        raise RuntimeError("internal detail that must stay in the log")

    response = app.test_client().get("/explode", headers={"X-Request-ID": "trace-123"})
    assert response.status_code == 500
    body = response.get_json()
    assert body["error"] == "server_error"
    assert body["request_id"] == "trace-123"
    assert "trace-123" in body["error_description"]
    assert "internal detail" not in response.get_data(as_text=True)
    assert response.headers["X-Request-ID"] == "trace-123"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert errors[0].request_id == "trace-123"
    assert "internal detail" in caplog.text


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("abc-DEF_1.2", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("has space", False),
        ("<script>", False),
        ("", False),
    ],
)
def test_request_id_is_echoed_only_when_safe(client, sent, echoed):
    response = client.get("/healthz", headers={"X-Request-ID": sent})
    returned = response.headers["X-Request-ID"]
    assert (returned == sent) is echoed
    assert returned


def test_every_log_line_of_a_request_carries_its_id(client, wechat, caplog):
    caplog.set_level(logging.INFO, logger="issuer")
    client.post(
        "/auth/login",
        json={"code": wechat.mint_code(APPID, "al")},
        headers={"X-Request-ID": "login-1"},
    )
    lines = [r for r in caplog.records if r.name.startswith("issuer")]
    assert len(lines) >= 2
    assert {r.request_id for r in lines} == {"login-1"}


def test_login_rate_limit_is_slow_down_with_retry_after(app_factory, wechat):
    client = app_factory(ratelimit_login="2/minute").test_client()
    statuses = [
        client.post("/auth/login", json={"code": wechat.mint_code(APPID, "rl")}).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    response = client.post("/auth/login", json={"code": "whatever"})
    assert response.status_code == 429
    assert response.get_json()["error"] == "slow_down"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["Cache-Control"] == "no-store"
    # Other endpoints are not limited by the login limit.
    assert client.get("/healthz").status_code == 200


def test_refresh_rate_limit(app_factory):
    client = app_factory(ratelimit_refresh="1/minute").test_client()
    assert client.post("/auth/refresh", json={"refresh_token": "x"}).status_code == 400
    response = client.post("/auth/refresh", json={"refresh_token": "x"})
    assert response.status_code == 429
    assert response.get_json()["error"] == "slow_down"


@pytest.mark.parametrize(
    ("proxy_hops", "expected"),
    [(1, [400, 400, 429]), (0, [400, 429, 429])],
    ids=["behind a trusted proxy", "X-Forwarded-For ignored without one"],
)
def test_rate_limit_counts_per_client_address(app_factory, proxy_hops, expected):
    client = app_factory(ratelimit_refresh="1/minute", proxy_hops=proxy_hops).test_client()
    statuses = [
        client.post(
            "/auth/refresh", json={"refresh_token": "x"}, headers={"X-Forwarded-For": address}
        ).status_code
        for address in ("203.0.113.1", "203.0.113.2", "203.0.113.1")
    ]
    assert statuses == expected


def test_one_access_line_per_request_with_route_outcome_and_sub(client, login, caplog):
    body = login("ada")
    caplog.clear()
    caplog.set_level(logging.INFO, logger="issuer.access")
    client.get(
        "/me",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    client.post("/auth/refresh", json={"refresh_token": "rt_nope"})
    lines = [r for r in caplog.records if r.name == "issuer.access"]
    assert len(lines) == 2
    me, refresh = lines
    assert (me.route, me.status, me.outcome, me.sub) == ("/me", 200, "ok", body["user_id"])
    assert me.client == "198.51.100.7"
    assert (refresh.route, refresh.status, refresh.outcome) == (
        "/auth/refresh",
        400,
        "invalid_grant",
    )
    assert not hasattr(refresh, "sub")


# -- request bodies


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('{"code": "a", "code": "b"}', '"code"'),
        (
            '{"refresh_token": "x", "grant_type": "refresh_token", "grant_type": "password"}',
            '"grant_type"',
        ),
        ('{"code": "a", "nested": {"k": 1, "k": 2}}', '"k"'),
    ],
    ids=["top level", "after other members", "nested"],
)
def test_a_json_member_sent_twice_is_refused_naming_it(client, wechat, body, named):
    """As a repeated form field is (RFC 6749 §3.2): parsers disagree on which copy wins."""
    path = "/auth/refresh" if "refresh_token" in body else "/auth/login"
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"] == "invalid_request"
    assert named in response.get_json()["error_description"]
    assert wechat.calls == []  # refused before WeChat is asked anything


def chunked(body: bytes, size: int = 4096):
    """The body as a generator: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_body_over_16_kib_is_413_not_cut(live_server, wechat):
    """A body sent without a length is held to the same 16 KiB as one that declares it."""
    # Valid JSON whose first 16 KiB are not: a cut body would be "not valid JSON" (400).
    body = json.dumps({"code": wechat.mint_code(APPID), "padding": "x" * (20 * 1024)}).encode()
    response = requests.post(
        live_server + "/auth/login",
        data=chunked(body),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "invalid_request"
    assert wechat.calls == []


@pytest.mark.parametrize("size", [12 * 1024, 16 * 1024], ids=["12 KiB", "exactly 16 KiB"])
def test_a_chunked_body_up_to_16_kib_is_read_whole(live_server, wechat, size):
    head = b'{"code": "%s", "padding": "' % wechat.mint_code(APPID).encode()
    body = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(body) == size
    response = requests.post(
        live_server + "/auth/login",
        data=chunked(body),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200, response.text


@pytest.mark.slow
def test_a_chunked_body_over_16_kib_is_413_under_gunicorn(gunicorn, gunicorn_env, wechat):
    """The same under the production server, whose chunked reader is its own."""
    server = gunicorn(gunicorn_env, workers=1)
    body = json.dumps({"code": wechat.mint_code(APPID), "padding": "x" * (20 * 1024)}).encode()
    response = requests.post(
        server.url + "/auth/login",
        data=chunked(body),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "invalid_request"
    assert wechat.calls == []
