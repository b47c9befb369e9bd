"""The WeChat client and how WeChat's answers map to issuer's HTTP errors (SPEC §2, §6).

WeChat is the real loopback emulator from conftest; faults are injected into it, never
patched into ``requests``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from issuer.config import WeChatApp
from issuer.errors import (
    AccessDenied,
    InvalidGrant,
    IssuerError,
    SlowDown,
    TemporarilyUnavailable,
    UpstreamMisconfigured,
    UpstreamTimeout,
)
from issuer.wechat.client import CodeSession, WeChatClient
from issuer.wechat.emulator import Fault, WeChatEmulator
from tests.conftest import APPID, SECRET

JSCODE2SESSION = "/sns/jscode2session"
APP = WeChatApp(APPID, SECRET)
TABLES = ("users", "identities", "sessions")
MakeClient = Callable[..., WeChatClient]


# -- helpers


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def database_path(app: Flask) -> Path:
    url: str = app.extensions["issuer"].settings.database_url
    assert url.startswith("sqlite:///")
    path = Path(url.removeprefix("sqlite:///"))
    assert path.is_file()
    return path


def row_counts(app: Flask) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(database_path(app))) as db:
        return {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES
        }


def assert_error(response: TestResponse, status: int, error: str) -> dict[str, str]:
    """An RFC 6749 §5.2 error: exactly error + error_description, never cached."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert body["error_description"].strip()
    assert response.headers["Cache-Control"] == "no-store"
    return body


def post_login(client: FlaskClient, code: str) -> TestResponse:
    return client.post("/auth/login", json={"code": code})


# -- the client on its own


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    """``make_client(api_base, timeout, **options)``: a WeChatClient, closed after the test."""
    made: list[WeChatClient] = []

    def make(api_base: str, timeout: float, **options: Any) -> WeChatClient:
        made.append(WeChatClient(api_base, timeout, **options))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_client_exchanges_a_code_for_a_session(
    make_client: MakeClient, wechat: WeChatEmulator, wechat_url: str
) -> None:
    openid, unionid = wechat.identity(APPID, "alice")
    code = wechat.mint_code(APPID, "alice")
    issued_key = wechat.session_key(APPID, openid)

    answer = make_client(wechat_url, 2).code_to_session(APP, code)

    assert answer == CodeSession(openid=openid, session_key=issued_key, unionid=unionid)
    assert wechat.calls == [JSCODE2SESSION]
    assert issued_key not in repr(answer)


def test_emulator_labels_json_text_plain_and_the_client_parses_it(
    make_client: MakeClient, wechat: WeChatEmulator, wechat_url: str
) -> None:
    # The precondition: the upstream really says text/plain for its JSON ...
    raw = requests.get(
        wechat_url + JSCODE2SESSION,
        params={
            "appid": APPID,
            "secret": SECRET,
            "js_code": wechat.mint_code(APPID, "carol"),
            "grant_type": "authorization_code",
        },
        timeout=5,
    )
    assert raw.headers["Content-Type"].startswith("text/plain")
    assert "openid" in json.loads(raw.text)
    # ... and the client still reads it.
    answer = make_client(wechat_url, 2).code_to_session(APP, wechat.mint_code(APPID, "carol"))
    assert answer.openid == wechat.identity(APPID, "carol")[0]


def test_client_without_unionid(
    make_client: MakeClient, wechat: WeChatEmulator, wechat_url: str
) -> None:
    code = wechat.mint_code(APPID, "dave", unionid=False)
    answer = make_client(wechat_url, 2).code_to_session(APP, code)
    assert answer.openid == wechat.identity(APPID, "dave")[0]
    assert answer.unionid is None


def test_client_accepts_an_explicit_errcode_zero(
    make_client: MakeClient, wechat: WeChatEmulator, wechat_url: str
) -> None:
    # A well-formed session_key: base64 of 16 bytes (a malformed one is refused, below).
    key = "tiihtNczf5v6AKRyjwEUhQ=="
    wechat.inject(
        Fault(body=json.dumps({"errcode": 0, "errmsg": "ok", "openid": "o1", "session_key": key}))
    )
    answer = make_client(wechat_url, 2).code_to_session(APP, "anycode")
    assert (answer.openid, answer.session_key, answer.unionid) == ("o1", key, None)


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        (Fault(errcode=40029), InvalidGrant),
        (Fault(errcode=40163), InvalidGrant),
        (Fault(errcode=40226), AccessDenied),
        (Fault(errcode=45011), SlowDown),
        (Fault(errcode=40125), UpstreamMisconfigured),
        (Fault(errcode=99999), TemporarilyUnavailable),
        (Fault(status=500), TemporarilyUnavailable),
        (Fault(body='{"errcode": "40029"}'), TemporarilyUnavailable),
    ],
    ids=["40029", "40163", "40226", "45011", "40125", "99999", "http-500", "errcode-string"],
)
def test_client_raises_issuer_errors(
    make_client: MakeClient,
    wechat: WeChatEmulator,
    wechat_url: str,
    fault: Fault,
    error_class: type[IssuerError],
) -> None:
    wechat.inject(fault)
    with pytest.raises(error_class):
        make_client(wechat_url, 2).code_to_session(APP, wechat.mint_code(APPID))
    assert wechat.calls == [JSCODE2SESSION]


def test_client_retries_busy_once_with_a_short_pause(
    make_client: MakeClient, wechat: WeChatEmulator, wechat_url: str
) -> None:
    pauses: list[float] = []
    client = make_client(wechat_url, 2, sleep=pauses.append)
    wechat.inject(Fault(errcode=-1))
    answer = client.code_to_session(APP, wechat.mint_code(APPID, "erin"))
    assert answer.openid == wechat.identity(APPID, "erin")[0]
    assert wechat.calls == [JSCODE2SESSION] * 2
    assert len(pauses) == 1
    assert 0 < pauses[0] <= 1


def test_client_timeout_and_refused(
    make_client: MakeClient,
    wechat: WeChatEmulator,
    wechat_url: str,
    closed_port: int,
) -> None:
    wechat.inject(Fault(delay=1.5))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        make_client(wechat_url, 0.3).code_to_session(APP, wechat.mint_code(APPID))
    assert time.monotonic() - started < 1.2
    with pytest.raises(TemporarilyUnavailable):
        make_client(f"http://127.0.0.1:{closed_port}", 2).code_to_session(APP, "anycode")


def test_client_takes_proxy_settings_from_the_environment_once(
    make_client: MakeClient,
    wechat: WeChatEmulator,
    wechat_url: str,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The environment is read once, when the process's session is made, not per call.
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port}")
    through_dead_proxy = make_client(wechat_url, 2)
    with pytest.raises(TemporarilyUnavailable):
        through_dead_proxy.code_to_session(APP, wechat.mint_code(APPID))
    assert wechat.calls == []

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(TemporarilyUnavailable):  # still the session made before the change
        through_dead_proxy.code_to_session(APP, wechat.mint_code(APPID))
    bypassing = make_client(wechat_url, 2)
    assert (
        bypassing.code_to_session(APP, wechat.mint_code(APPID, "alice")).openid
        == (wechat.identity(APPID, "alice")[0])
    )
    assert wechat.calls == [JSCODE2SESSION]


# -- the API: POST /auth/login


def test_login_succeeds_and_writes_the_user(
    app: Flask, client: FlaskClient, wechat: WeChatEmulator
) -> None:
    assert row_counts(app) == dict.fromkeys(TABLES, 0)
    response = post_login(client, wechat.mint_code(APPID, "frank"))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["is_new_user"] is True
    assert response.headers["Cache-Control"] == "no-store"
    assert wechat.calls == [JSCODE2SESSION]
    # The counterpart of every "writes no row" check below: a real login does write.
    assert row_counts(app) == dict.fromkeys(TABLES, 1)


ERROR_TABLE = [
    # (fault, times, status, error, calls WeChat saw)
    (Fault(errcode=40029), 1, 400, "invalid_grant", 1),
    (Fault(errcode=40163), 1, 400, "invalid_grant", 1),
    (Fault(errcode=40226), 1, 403, "access_denied", 1),
    (Fault(errcode=45011), 1, 429, "slow_down", 1),
    (Fault(errcode=40013), 1, 502, "upstream_misconfigured", 1),
    (Fault(errcode=40125), 1, 502, "upstream_misconfigured", 1),
    (Fault(errcode=41004), 1, 502, "upstream_misconfigured", 1),
    (Fault(errcode=40164), 1, 502, "upstream_misconfigured", 1),
    (Fault(errcode=99999), 1, 503, "temporarily_unavailable", 1),
    (Fault(errcode=-1), 2, 503, "temporarily_unavailable", 2),
    (Fault(status=500), 1, 503, "temporarily_unavailable", 1),
    (Fault(status=502), 1, 503, "temporarily_unavailable", 1),
    (Fault(body="<html><body>Bad Gateway</body></html>"), 1, 503, "temporarily_unavailable", 1),
    (Fault(body='{"openid": "o'), 1, 503, "temporarily_unavailable", 1),
    (Fault(body='[{"openid": "o1", "session_key": "k1"}]'), 1, 503, "temporarily_unavailable", 1),
    (Fault(body='{"openid": "o1"}'), 1, 503, "temporarily_unavailable", 1),
    (Fault(body='{"session_key": "k1"}'), 1, 503, "temporarily_unavailable", 1),
    (Fault(body=""), 1, 503, "temporarily_unavailable", 1),
]
ERROR_IDS = [
    "40029-invalid-code",
    "40163-code-used",
    "40226-high-risk",
    "45011-rate-limited",
    "40013-bad-appid",
    "40125-bad-secret",
    "41004-no-secret",
    "40164-ip-not-allowed",
    "99999-unknown",
    "busy-twice",
    "http-500",
    "http-502",
    "html-page",
    "truncated-json",
    "json-array",
    "no-session-key",
    "no-openid",
    "empty-body",
]


@pytest.mark.parametrize(("fault", "times", "status", "error", "calls"), ERROR_TABLE, ids=ERROR_IDS)
def test_login_maps_wechat_failures(
    app: Flask,
    client: FlaskClient,
    wechat: WeChatEmulator,
    fault: Fault,
    times: int,
    status: int,
    error: str,
    calls: int,
) -> None:
    wechat.inject(fault, times=times)
    response = post_login(client, wechat.mint_code(APPID))
    assert_error(response, status, error)
    assert wechat.calls == [JSCODE2SESSION] * calls
    assert row_counts(app) == dict.fromkeys(TABLES, 0)


def test_rate_limited_by_wechat_says_when_to_retry(
    client: FlaskClient, wechat: WeChatEmulator
) -> None:
    wechat.inject(Fault(errcode=45011))
    response = post_login(client, wechat.mint_code(APPID))
    assert_error(response, 429, "slow_down")
    retry_after = response.headers.get("Retry-After", "")
    assert re.fullmatch(r"[1-9][0-9]*", retry_after), retry_after


@pytest.mark.parametrize("errcode", [40013, 40125, 41004, 40164])
def test_rejected_credentials_are_logged_at_error(
    client: FlaskClient, wechat: WeChatEmulator, caplog: pytest.LogCaptureFixture, errcode: int
) -> None:
    wechat.inject(Fault(errcode=errcode))
    response = post_login(client, wechat.mint_code(APPID))
    assert_error(response, 502, "upstream_misconfigured")
    errors = [
        record
        for record in caplog.records
        if record.levelno >= logging.ERROR and record.name.startswith("issuer")
    ]
    assert errors, caplog.text
    assert any(str(errcode) in record.getMessage() for record in errors)
    assert all(SECRET not in record.getMessage() for record in errors)


def test_busy_once_then_success(app: Flask, client: FlaskClient, wechat: WeChatEmulator) -> None:
    wechat.inject(Fault(errcode=-1))
    response = post_login(client, wechat.mint_code(APPID, "gina"))
    assert response.status_code == 200, response.get_json()
    assert wechat.calls == [JSCODE2SESSION] * 2
    assert row_counts(app) == dict.fromkeys(TABLES, 1)


def test_timeout_is_504_and_bounded(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    app = app_factory(wechat_timeout=0.3)
    client = app.test_client()
    wechat.inject(Fault(delay=1.5))
    started = time.monotonic()
    response = post_login(client, wechat.mint_code(APPID))
    elapsed = time.monotonic() - started
    assert_error(response, 504, "upstream_timeout")
    # 0.3 s timeout plus generous slack; the emulator holds the answer for 1.5 s.
    assert elapsed < 1.2, elapsed
    assert wechat.calls == [JSCODE2SESSION]
    assert row_counts(app) == dict.fromkeys(TABLES, 0)


def test_an_answer_trickling_past_the_timeout_is_504(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    # Each byte arrives well inside the per-read timeout; the whole answer would not.
    app = app_factory(wechat_timeout=0.5)
    wechat.inject(Fault(trickle=0.05))
    started = time.monotonic()
    response = post_login(app.test_client(), wechat.mint_code(APPID))
    elapsed = time.monotonic() - started
    assert_error(response, 504, "upstream_timeout")
    assert elapsed < 1.5, elapsed
    assert row_counts(app) == dict.fromkeys(TABLES, 0)


def test_connection_refused_is_503(app_factory: Callable[..., Flask], closed_port: int) -> None:
    app = app_factory(wechat_api_base=f"http://127.0.0.1:{closed_port}")
    response = post_login(app.test_client(), "0a1b2c3d4e5f")
    assert_error(response, 503, "temporarily_unavailable")
    assert row_counts(app) == dict.fromkeys(TABLES, 0)


@pytest.mark.parametrize("as_form", [False, True], ids=["json", "form"])
def test_empty_code_is_refused_locally(
    app: Flask, client: FlaskClient, wechat: WeChatEmulator, as_form: bool
) -> None:
    if as_form:
        response = client.post("/auth/login", data={"code": ""})
    else:
        response = client.post("/auth/login", json={"code": ""})
    assert_error(response, 400, "invalid_request")
    assert wechat.calls == []
    assert row_counts(app) == dict.fromkeys(TABLES, 0)


# -- secrets stay out of logs and output


def test_secrets_are_never_logged(
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    app_factory: Callable[..., Flask],
    wechat: WeChatEmulator,
) -> None:
    client = app_factory().test_client()
    slow_client = app_factory(wechat_timeout=0.3).test_client()
    # After the apps exist: create_app (re)configures the issuer logger.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="issuer")

    good_code = wechat.mint_code(APPID, "hank")
    session_key = wechat.session_key(APPID, wechat.identity(APPID, "hank")[0])
    assert session_key
    assert post_login(client, good_code).status_code == 200

    # WeChat's errmsg is logged; make it echo the secret and the code back, as a hostile or
    # buggy upstream might, to see that the client redacts them.
    bad_code = wechat.mint_code(APPID)
    errmsg = f"invalid appsecret {SECRET} for code {bad_code}"
    wechat.inject(Fault(body=json.dumps({"errcode": 40125, "errmsg": errmsg})))
    assert_error(post_login(client, bad_code), 502, "upstream_misconfigured")

    slow_code = wechat.mint_code(APPID)
    wechat.inject(Fault(delay=1.5))
    assert_error(post_login(slow_client, slow_code), 504, "upstream_timeout")

    secrets_ = {
        "app secret": SECRET,
        "good code": good_code,
        "bad code": bad_code,
        "slow code": slow_code,
        "session_key": session_key,
    }
    # The emulator is WeChat's side of the wire: its Werkzeug access log prints the request
    # line with the query string. It stands in for a remote server, so it is set aside --
    # after checking that it does carry the secret, which shows the check below can see one.
    upstream = [r for r in caplog.records if r.name == "werkzeug"]
    assert any(SECRET in r.getMessage() for r in upstream)
    ours = [r for r in caplog.records if r.name != "werkzeug"]
    text = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in ours
    )
    # The three outcomes were logged at all (so there was something to leak into).
    assert "login app=" in text
    assert "40125" in text
    assert "timed out" in text
    for label, value in secrets_.items():
        assert value not in text, f"{label} appears in a log record"
    out, err = capfd.readouterr()
    assert "login app=" in err  # issuer's own handler writes to stderr
    for label, value in secrets_.items():
        assert value not in out, f"{label} appears on stdout"
        assert value not in err, f"{label} appears on stderr"


@pytest.mark.parametrize(
    "errmsg",
    [
        # The secret straddles the 200th character, where the logged errmsg is cut.
        "x" * 190 + SECRET + " tail",
        # The upstream cut its own message inside the secret it echoed.
        "invalid appsecret " + SECRET[:20],
        # ... or began it with the end of one.
        SECRET[-20:] + " is not the appsecret",
    ],
    ids=["straddling-the-cut", "ending-in-a-prefix", "starting-with-a-suffix"],
)
def test_errmsg_never_logs_a_fragment_of_the_secret(
    make_client: MakeClient,
    wechat: WeChatEmulator,
    wechat_url: str,
    caplog: pytest.LogCaptureFixture,
    errmsg: str,
) -> None:
    client = make_client(wechat_url, 2)
    caplog.set_level(logging.DEBUG, logger="issuer")
    wechat.inject(Fault(body=json.dumps({"errcode": 40125, "errmsg": errmsg})))
    with pytest.raises(UpstreamMisconfigured):
        client.code_to_session(APP, wechat.mint_code(APPID))
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("issuer")]
    assert any("40125" in line for line in logged), logged  # the errmsg line is there
    for line in logged:
        # No run of 10 characters of the secret survives anywhere in the line.
        for start in range(len(SECRET) - 9):
            assert SECRET[start : start + 10] not in line, line


@pytest.mark.parametrize(
    "session_key",
    [
        "k1",  # not base64 of 16 bytes
        "not base64 at all!!!!!!!",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # base64, but of 21 bytes
        "AAAAAAAAAAAAAAAAAAAAAA==\n",  # a stray newline after a valid key
    ],
)
def test_a_session_key_that_is_not_16_bytes_is_refused_at_the_edge(
    client: FlaskClient,
    app: Flask,
    wechat: WeChatEmulator,
    caplog: pytest.LogCaptureFixture,
    session_key: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="issuer")
    wechat.inject(
        Fault(body=json.dumps({"errcode": 0, "openid": "o-bad-key", "session_key": session_key}))
    )
    response = post_login(client, wechat.mint_code(APPID))
    assert_error(response, 503, "temporarily_unavailable")
    assert row_counts(app) == dict.fromkeys(TABLES, 0)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "session_key" in logged
    assert session_key.strip() not in logged
