"""H5 login inside WeChat, end to end over HTTP: issuer's authorization endpoint, the
emulator's authorize page (a real loopback server), the callback, and the code exchange."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from issuer import create_app
from issuer.oauth.pkce import s256
from issuer.wechat.emulator import Fault, WeChatEmulator
from tests.conftest import FakeClock, ServerThread

MP = "wx1111111111111111"
OA = "wx3333333333333333"
MP_SECRET, OA_SECRET = secrets.token_hex(16), secrets.token_hex(16)
DONE = "https://shop.example.com/auth/done"
H5 = {"id": "shop-h5", "kind": "h5", "app": OA, "redirect_uris": [DONE, DONE + "?v=2"]}
PC = {"id": "shop-pc", "kind": "web", "app": MP, "page": "pages/scan/index"}
OTHER = {"id": "blog-h5", "kind": "h5", "app": OA, "redirect_uris": ["https://blog.example/d"]}
EXCHANGE = "/sns/oauth2/access_token"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="module")
def web_wechat() -> Iterator[tuple[WeChatEmulator, str]]:
    emulator = WeChatEmulator({MP: MP_SECRET, OA: OA_SECRET}, official_accounts=[OA])
    server = ServerThread(emulator.app)
    yield emulator, server.url
    server.stop()


@pytest.fixture
def emulator(web_wechat: tuple[WeChatEmulator, str]) -> Iterator[WeChatEmulator]:
    web_wechat[0].clear_faults()
    yield web_wechat[0]
    web_wechat[0].clear_faults()


@pytest.fixture
def web_app(
    settings_for: Callable[..., dict[str, Any]],
    clock: FakeClock,
    web_wechat: tuple[WeChatEmulator, str],
) -> Flask:
    url = web_wechat[1]
    config = settings_for(
        wechat_api_base=url,
        wechat_open_base=url,
        apps=[
            {"appid": MP, "secret": MP_SECRET},
            {"appid": OA, "secret": OA_SECRET, "kind": "officialaccount"},
        ],
        clients=[H5, OTHER, PC],
    )
    app = create_app(config, clock=clock, environ={})
    app.config["TESTING"] = True
    return app


@pytest.fixture
def http(web_app: Flask) -> FlaskClient:
    return web_app.test_client()


def query_of(location: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


class Browser:
    """What a phone's WeChat browser does between the H5 page, issuer and WeChat."""

    def __init__(self, http: FlaskClient, wechat_url: str) -> None:
        self.http = http
        self.wechat_url = wechat_url
        self.verifier = secrets.token_urlsafe(48)

    def authorize(self, headers: dict[str, str] | None = None, **change: str | None) -> Any:
        params = {
            "response_type": "code",
            "client_id": "shop-h5",
            "redirect_uri": DONE,
            "state": "page-state-1",
            "code_challenge": s256(self.verifier),
            "code_challenge_method": "S256",
        }
        params.update(change)  # type: ignore[arg-type]
        return self.http.get(
            "/auth/authorize",
            query_string={key: value for key, value in params.items() if value is not None},
            headers=headers,
        )

    def wechat_page(self, location: str, user: str = "alice", action: str = "consent") -> str:
        """Play the person on WeChat's authorize page; where WeChat sends the browser."""
        assert location.startswith(self.wechat_url + "/connect/oauth2/authorize?")
        assert location.endswith("#wechat_redirect")
        page = location.split("#", 1)[0]
        shown = requests.get(page, timeout=5)
        assert shown.status_code == 200
        assert 'name="action"' in shown.text
        answer = requests.post(
            page,
            data={**query_of(page), "user": user, "action": action},
            allow_redirects=False,
            timeout=5,
        )
        assert answer.status_code == 302
        return str(answer.headers["Location"])

    def back_to_issuer(self, location: str) -> Any:
        parts = urlsplit(location)
        assert f"{parts.scheme}://{parts.netloc}" == "https://issuer.test"
        return self.http.get(parts.path, query_string=parts.query)

    def login(self, user: str = "alice", action: str = "consent", **change: str | None) -> Any:
        """Authorize, play WeChat, come back: issuer's redirect to the client."""
        started = self.authorize(**change)
        assert started.status_code == 302, started.get_data(as_text=True)
        return self.back_to_issuer(self.wechat_page(started.headers["Location"], user, action))

    def code(self, user: str = "alice", **change: str | None) -> str:
        finished = self.login(user, **change)
        assert finished.status_code == 302, finished.get_data(as_text=True)
        query = query_of(finished.headers["Location"])
        assert "error" not in query, query
        return query["code"]

    def exchange(self, issued: str, /, **change: str | None) -> Any:
        form = {
            "grant_type": "authorization_code",
            "code": issued,
            "redirect_uri": DONE,
            "client_id": "shop-h5",
            "code_verifier": self.verifier,
        }
        form.update(change)  # type: ignore[arg-type]
        return self.http.post(
            "/auth/token", data={key: value for key, value in form.items() if value is not None}
        )


@pytest.fixture
def browser(http: FlaskClient, web_wechat: tuple[WeChatEmulator, str]) -> Browser:
    return Browser(http, web_wechat[1])


def mini_program_login(http: FlaskClient, emulator: WeChatEmulator, user: str) -> dict[str, Any]:
    answer = http.post("/auth/login", json={"code": emulator.mint_code(MP, user), "appid": MP})
    assert answer.status_code == 200, answer.get_json()
    body: dict[str, Any] = answer.get_json()
    return body


def claims_of(http: FlaskClient, pair: dict[str, Any]) -> dict[str, Any]:
    me = http.get("/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.status_code == 200, me.get_json()
    body: dict[str, Any] = me.get_json()
    return body


@pytest.mark.stores
def test_userinfo_login_gives_the_mini_program_users_sub(
    http: FlaskClient, browser: Browser, emulator: WeChatEmulator
) -> None:
    user = "h5-" + secrets.token_hex(4)
    mini = mini_program_login(http, emulator, user)
    started = browser.authorize(scope="snsapi_userinfo")
    query = query_of(started.headers["Location"].split("#")[0])
    assert query["appid"] == OA
    assert query["scope"] == "snsapi_userinfo"
    assert query["redirect_uri"] == "https://issuer.test/auth/wechat/callback"
    assert query["state"].isalnum()
    assert query["state"] != "page-state-1"  # issuer's own state goes to WeChat
    finished = browser.back_to_issuer(browser.wechat_page(started.headers["Location"], user))
    assert finished.status_code == 302
    location = finished.headers["Location"]
    assert location.startswith(DONE + "?")
    back = query_of(location)
    assert set(back) == {"code", "state"}  # never a token in a URL
    assert back["state"] == "page-state-1"
    answer = browser.exchange(back["code"])
    assert answer.status_code == 200, answer.get_json()
    assert answer.headers["Cache-Control"] == "no-store"
    pair = answer.get_json()
    assert pair["user_id"] == mini["user_id"]
    assert pair["is_new_user"] is False  # joined the mini-program's user
    me = claims_of(http, pair)
    assert me["appid"] == OA  # the identity of the app the user came through
    assert me["openid"] == emulator.identity(OA, user)[0]
    assert me["unionid"] == emulator.identity(OA, user)[1]
    assert me["nickname"] == user  # WeChat's profile, as the user had none
    assert jwt.decode(pair["access_token"], options={"verify_signature": False})["client_id"] == (
        "shop-h5"
    )


def test_base_login_joins_the_mini_program_user_once_a_unionid_appears(
    http: FlaskClient, browser: Browser, emulator: WeChatEmulator
) -> None:
    user = "base-" + secrets.token_hex(4)
    first = browser.exchange(browser.code(user, scope="snsapi_base")).get_json()
    assert first["is_new_user"] is True
    assert claims_of(http, first)["unionid"] is None  # snsapi_base gives no unionid
    mini = mini_program_login(http, emulator, user)
    assert mini["user_id"] != first["user_id"]
    later = browser.exchange(browser.code(user, scope="snsapi_userinfo")).get_json()
    assert later["user_id"] == mini["user_id"]


def test_refresh_through_the_token_endpoint_keeps_the_client(
    http: FlaskClient, browser: Browser
) -> None:
    pair = browser.exchange(browser.code()).get_json()
    refreshed = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": pair["refresh_token"],
            "client_id": "shop-h5",
        },
    )
    assert refreshed.status_code == 200, refreshed.get_json()
    claims = jwt.decode(refreshed.get_json()["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "shop-h5"
    wrong = http.post(
        "/auth/token",
        json={
            "grant_type": "refresh_token",
            "refresh_token": refreshed.get_json()["refresh_token"],
            "client_id": MP,
        },
    )
    assert wrong.status_code == 400
    assert wrong.get_json()["error"] == "invalid_grant"


@pytest.mark.stores
def test_a_code_used_twice_revokes_what_it_issued(http: FlaskClient, browser: Browser) -> None:
    code = browser.code()
    first = browser.exchange(code)
    assert first.status_code == 200
    again = browser.exchange(code)
    assert again.status_code == 400
    assert again.get_json()["error"] == "invalid_grant"
    refresh = http.post("/auth/refresh", json={"refresh_token": first.get_json()["refresh_token"]})
    assert refresh.get_json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_verifier": secrets.token_urlsafe(48)}, "invalid_grant"),
        ({"code_verifier": "short"}, "invalid_grant"),
        ({"redirect_uri": DONE + "?v=2"}, "invalid_grant"),
        ({"redirect_uri": None}, "invalid_grant"),
        ({"client_id": "blog-h5"}, "invalid_grant"),
        ({"client_id": "nobody"}, "invalid_client"),
        ({"code_verifier": None}, "invalid_request"),
        ({"code": "ac_" + "x" * 43}, "invalid_grant"),
        ({"code": "not a code"}, "invalid_grant"),
    ],
)
def test_code_exchange_errors(browser: Browser, change: dict[str, str | None], error: str) -> None:
    answer = browser.exchange(browser.code(), **change)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == error


def test_code_expires_after_60_seconds(browser: Browser, clock: FakeClock) -> None:
    code = browser.code()
    clock.advance(60)
    answer = browser.exchange(code)
    assert answer.get_json()["error"] == "invalid_grant"


@pytest.mark.parametrize("grant", ["password", "client_credentials", ""])
def test_other_grants_are_unsupported(http: FlaskClient, grant: str) -> None:
    answer = http.post("/auth/token", data={"grant_type": grant, "code": "x"})
    assert answer.status_code == 400
    assert answer.get_json()["error"] in ("unsupported_grant_type", "invalid_request")


def test_token_endpoint_without_grant_type(http: FlaskClient) -> None:
    answer = http.post("/auth/token", json={"code": "x"})
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "change",
    [
        {"client_id": "nobody"},
        {"client_id": None},
        {"redirect_uri": "https://evil.example/steal"},
        {"redirect_uri": DONE + "/"},
    ],
)
def test_bad_client_or_redirect_uri_gets_a_page_never_a_redirect(
    browser: Browser, change: dict[str, str | None]
) -> None:
    # What a browser's Accept header says: a page.
    answer = browser.authorize(headers={"Accept": BROWSER_ACCEPT}, **change)
    assert answer.status_code == 400
    assert "Location" not in answer.headers
    assert answer.mimetype == "text/html"
    assert "Login failed" in answer.get_data(as_text=True)
    assert answer.headers["Content-Security-Policy"] == "default-src 'none'"
    # Anything else: the JSON error.
    answer = browser.authorize(**change)
    assert answer.status_code == 400
    assert "Location" not in answer.headers
    assert answer.get_json()["error"] in ("invalid_client", "invalid_request")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "snsapi_login"}, "invalid_scope"),
    ],
)
def test_other_authorize_errors_redirect_back(
    browser: Browser, change: dict[str, str | None], error: str
) -> None:
    answer = browser.authorize(**change)
    assert answer.status_code == 302
    back = query_of(answer.headers["Location"])
    assert answer.headers["Location"].startswith(DONE + "?")
    assert back["error"] == error
    assert back["error_description"]
    assert back["state"] == "page-state-1"


def test_snapshot_page_visitor_gets_no_account(
    browser: Browser, web_app: Flask, emulator: WeChatEmulator
) -> None:
    user = "snap-" + secrets.token_hex(4)
    finished = browser.login(user, action="snapshot", scope="snsapi_base")
    back = query_of(finished.headers["Location"])
    assert back["error"] == "access_denied"
    assert "snapshot" in back["error_description"]
    assert back["state"] == "page-state-1"
    assert "code" not in back
    store = web_app.extensions["issuer"].store
    assert store.get_identity(OA, emulator.identity(OA, user)[0]) is None


def test_user_refusing_in_wechat_is_access_denied(browser: Browser) -> None:
    finished = browser.login(action="refuse", scope="snsapi_userinfo")
    back = query_of(finished.headers["Location"])
    assert back["error"] == "access_denied"
    assert back["state"] == "page-state-1"


@pytest.mark.stores
def test_state_is_single_use(browser: Browser) -> None:
    started = browser.authorize()
    location = browser.wechat_page(started.headers["Location"])
    assert browser.back_to_issuer(location).status_code == 302
    again = browser.back_to_issuer(location)
    assert again.status_code == 400
    assert "Location" not in again.headers
    assert again.get_json()["error"] == "invalid_request"


def test_state_expires(browser: Browser, clock: FakeClock) -> None:
    started = browser.authorize()
    location = browser.wechat_page(started.headers["Location"])
    clock.advance(601)
    assert browser.back_to_issuer(location).status_code == 400


@pytest.mark.parametrize("state", ["", "0" * 64, "forged", "a" * 200])
def test_forged_state_gets_a_page(http: FlaskClient, state: str) -> None:
    answer = http.get("/auth/wechat/callback", query_string={"code": "c", "state": state})
    assert answer.status_code == 400
    assert "Location" not in answer.headers


@pytest.mark.parametrize(
    ("errcode", "error"),
    [
        (40029, "invalid_request"),
        (40163, "invalid_request"),
        (41008, "invalid_request"),
        (40125, "server_error"),
        (40013, "server_error"),
        (45011, "temporarily_unavailable"),
        (99999, "temporarily_unavailable"),
    ],
)
def test_wechat_errcodes_at_the_callback_redirect_back(
    browser: Browser, emulator: WeChatEmulator, errcode: int, error: str
) -> None:
    started = browser.authorize()
    location = browser.wechat_page(started.headers["Location"])
    emulator.inject(Fault(errcode=errcode, path=EXCHANGE))
    finished = browser.back_to_issuer(location)
    assert finished.status_code == 302
    back = query_of(finished.headers["Location"])
    assert back["error"] == error
    assert back["state"] == "page-state-1"
    assert str(errcode) not in back["error_description"]


def test_wechat_busy_once_is_retried(browser: Browser, emulator: WeChatEmulator) -> None:
    started = browser.authorize()
    location = browser.wechat_page(started.headers["Location"])
    emulator.inject(Fault(errcode=-1, path=EXCHANGE))
    finished = browser.back_to_issuer(location)
    assert "code" in query_of(finished.headers["Location"])


def test_wechat_busy_twice_is_temporarily_unavailable(
    browser: Browser, emulator: WeChatEmulator
) -> None:
    started = browser.authorize()
    location = browser.wechat_page(started.headers["Location"])
    emulator.inject(Fault(errcode=-1, path=EXCHANGE), times=2)
    back = query_of(browser.back_to_issuer(location).headers["Location"])
    assert back["error"] == "temporarily_unavailable"


def test_userinfo_failure_redirects_back(browser: Browser, emulator: WeChatEmulator) -> None:
    started = browser.authorize(scope="snsapi_userinfo")
    location = browser.wechat_page(started.headers["Location"])
    emulator.inject(Fault(errcode=40003, path="/sns/userinfo"))
    back = query_of(browser.back_to_issuer(location).headers["Location"])
    assert back["error"] == "temporarily_unavailable"


def test_an_h5_session_is_refused_by_the_mini_program_only_endpoints(
    http: FlaskClient, browser: Browser, emulator: WeChatEmulator
) -> None:
    pair = browser.exchange(browser.code()).get_json()
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    calls_before = len(emulator.calls)
    answers = [
        http.post(
            "/wechat/decrypt",
            json={
                "encrypted_data": base64.b64encode(secrets.token_bytes(32)).decode(),
                "iv": base64.b64encode(secrets.token_bytes(16)).decode(),
            },
            headers=bearer,
        ),
        http.post("/wechat/phone", json={"code": "phone-code"}, headers=bearer),
        http.get("/wechat/session", headers=bearer),
    ]
    for answer in answers:
        assert answer.status_code == 400, answer.get_json()
        assert answer.get_json()["error"] == "invalid_request"
        assert "mini-program" in answer.get_json()["error_description"]
    # Nothing was asked of WeChat with the official account's credentials.
    assert len(emulator.calls) == calls_before
