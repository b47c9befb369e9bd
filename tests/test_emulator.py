"""The WeChat emulator speaks WeChat's login semantics over real HTTP (SPEC §6).

Everything goes through ``requests`` against the loopback server, as issuer's client does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from issuer.wechat.emulator import CODE_LIFETIME, Fault, WeChatEmulator
from tests.conftest import APPID, APPID2, SECRET, SECRET2, FakeClock, ServerThread

JSCODE2SESSION = "/sns/jscode2session"


def exchange(
    base: str,
    code: str,
    *,
    appid: str | None = APPID,
    secret: str | None = SECRET,
    grant_type: str | None = "authorization_code",
) -> requests.Response:
    """``GET /sns/jscode2session``; a parameter passed as None is left out."""
    params = {"appid": appid, "secret": secret, "js_code": code, "grant_type": grant_type}
    return requests.get(
        base + JSCODE2SESSION,
        params={name: value for name, value in params.items() if value is not None},
        timeout=5,
    )


def answer(response: requests.Response) -> dict[str, object]:
    """The JSON body, whatever the content type claims."""
    assert response.status_code == 200, response.text
    body = json.loads(response.text)
    assert isinstance(body, dict)
    return body


def wx_login(base: str, *, form: bool = False, **fields: object) -> requests.Response:
    if form:
        return requests.post(base + "/dev/wx.login", data=fields, timeout=5)
    return requests.post(base + "/dev/wx.login", json=fields, timeout=5)


@dataclass
class Clocked:
    emulator: WeChatEmulator
    url: str
    clock: FakeClock
    pauses: list[float]


@pytest.fixture(scope="module")
def clocked_server() -> Iterator[Clocked]:
    clock = FakeClock()
    pauses: list[float] = []
    emulator = WeChatEmulator({APPID: SECRET, APPID2: SECRET2}, clock=clock, sleep=pauses.append)
    server = ServerThread(emulator.app)
    yield Clocked(emulator, server.url, clock, pauses)
    server.stop()


@pytest.fixture
def clocked(clocked_server: Clocked) -> Clocked:
    """An emulator of its own whose clock and sleep the test controls (reset per test)."""
    clocked_server.clock.now = time.time()
    clocked_server.pauses.clear()
    clocked_server.emulator.calls.clear()
    clocked_server.emulator.clear_faults()
    return clocked_server


# -- jscode2session


def test_a_code_is_exchanged_once(wechat: WeChatEmulator, wechat_url: str) -> None:
    code = wechat.mint_code(APPID, "alice")
    openid, unionid = wechat.identity(APPID, "alice")

    first = answer(exchange(wechat_url, code))
    assert first == {
        "openid": openid,
        "session_key": wechat.session_key(APPID, openid),
        "unionid": unionid,
    }
    assert "errcode" not in first

    second = answer(exchange(wechat_url, code))
    assert second["errcode"] == 40163
    assert "openid" not in second
    assert wechat.calls == [JSCODE2SESSION] * 2


def test_unknown_code_is_40029(wechat: WeChatEmulator, wechat_url: str) -> None:
    body = answer(exchange(wechat_url, "0123456789abcdef0123456789abcdef"))
    assert body["errcode"] == 40029
    assert "openid" not in body


def test_a_code_belongs_to_its_app(wechat: WeChatEmulator, wechat_url: str) -> None:
    code = wechat.mint_code(APPID, "alice")
    body = answer(exchange(wechat_url, code, appid=APPID2, secret=SECRET2))
    assert body["errcode"] == 40029
    # The failed attempt from the other app did not spend it.
    assert "openid" in answer(exchange(wechat_url, code))


@pytest.mark.parametrize(
    ("elapsed", "valid"),
    [(0.0, True), (CODE_LIFETIME - 1, True), (CODE_LIFETIME, False), (CODE_LIFETIME + 3600, False)],
    ids=["fresh", "just-before-300s", "at-300s", "an-hour-later"],
)
def test_codes_expire_after_300_seconds(clocked: Clocked, elapsed: float, valid: bool) -> None:
    assert CODE_LIFETIME == 300
    code = clocked.emulator.mint_code(APPID, "alice")
    clocked.clock.advance(elapsed)
    body = answer(exchange(clocked.url, code))
    if valid:
        assert body["openid"] == clocked.emulator.identity(APPID, "alice")[0]
    else:
        assert body["errcode"] == 40029
        assert "openid" not in body


ERRCODE_TABLE = [
    # (request parameters, errcode)
    ({"secret": "0" * 32}, 40125),
    ({"secret": SECRET2}, 40125),  # another app's secret
    ({"secret": SECRET[:-1]}, 40125),
    ({"appid": "wx0000000000000000"}, 40013),
    ({"appid": None}, 41002),
    ({"secret": None}, 41004),
    ({"secret": ""}, 41004),
    ({"grant_type": "client_credential"}, 40002),
    ({"grant_type": None}, 40002),
]


@pytest.mark.parametrize(
    ("params", "errcode"),
    ERRCODE_TABLE,
    ids=[
        "wrong-secret",
        "other-apps-secret",
        "secret-prefix",
        "unknown-appid",
        "missing-appid",
        "missing-secret",
        "empty-secret",
        "bad-grant-type",
        "missing-grant-type",
    ],
)
def test_request_errcodes(
    wechat: WeChatEmulator, wechat_url: str, params: dict[str, str | None], errcode: int
) -> None:
    code = wechat.mint_code(APPID, "alice")
    body = answer(exchange(wechat_url, code, **params))
    assert body["errcode"] == errcode
    assert isinstance(body["errmsg"], str)
    assert "openid" not in body
    assert "session_key" not in body
    # A refused request does not spend the code.
    assert "openid" in answer(exchange(wechat_url, code))


def test_missing_code_is_41008(wechat: WeChatEmulator, wechat_url: str) -> None:
    assert answer(exchange(wechat_url, ""))["errcode"] == 41008


def test_answers_are_json_labelled_text_plain(wechat: WeChatEmulator, wechat_url: str) -> None:
    ok = exchange(wechat_url, wechat.mint_code(APPID))
    refused = exchange(wechat_url, "nosuchcode")
    for response in (ok, refused):
        assert response.status_code == 200
        assert response.headers["Content-Type"].split(";")[0] == "text/plain"
        assert isinstance(json.loads(response.text), dict)


# -- test users


def test_identities_are_stable_per_app_and_united_across_apps(
    wechat: WeChatEmulator, wechat_url: str
) -> None:
    def login(appid: str, secret: str, user: str) -> dict[str, object]:
        return answer(
            exchange(wechat_url, wechat.mint_code(appid, user), appid=appid, secret=secret)
        )

    alice_1 = login(APPID, SECRET, "alice")
    alice_1_again = login(APPID, SECRET, "alice")
    alice_2 = login(APPID2, SECRET2, "alice")
    bob_1 = login(APPID, SECRET, "bob")

    assert alice_1["openid"] == alice_1_again["openid"]
    assert alice_1["openid"] != alice_2["openid"]
    assert alice_1["unionid"] == alice_1_again["unionid"] == alice_2["unionid"]
    assert bob_1["openid"] != alice_1["openid"]
    assert bob_1["unionid"] != alice_1["unionid"]
    assert (alice_1["openid"], alice_1["unionid"]) == wechat.identity(APPID, "alice")


def test_random_users_differ(wechat: WeChatEmulator, wechat_url: str) -> None:
    first = answer(exchange(wechat_url, wechat.mint_code(APPID)))
    second = answer(exchange(wechat_url, wechat.mint_code(APPID)))
    assert first["openid"] != second["openid"]


def test_each_mint_rotates_the_session_key(wechat: WeChatEmulator, wechat_url: str) -> None:
    openid, _ = wechat.identity(APPID, "carol")
    keys = []
    for _ in range(3):
        code = wechat.mint_code(APPID, "carol")
        current = wechat.session_key(APPID, openid)
        assert current
        assert answer(exchange(wechat_url, code))["session_key"] == current
        keys.append(current)
    assert len(set(keys)) == 3


# -- POST /dev/wx.login (the phone's side)


@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
def test_dev_wx_login_mints_a_code(wechat: WeChatEmulator, wechat_url: str, form: bool) -> None:
    response = wx_login(wechat_url, form=form, appid=APPID2, user="dora")
    assert response.status_code == 200
    minted = json.loads(response.text)
    openid, unionid = wechat.identity(APPID2, "dora")
    assert minted["appid"] == APPID2
    assert minted["openid"] == openid
    assert minted["expires_in"] == 300
    assert isinstance(minted["code"], str)
    assert minted["code"]

    body = answer(exchange(wechat_url, minted["code"], appid=APPID2, secret=SECRET2))
    assert body == {
        "openid": openid,
        "session_key": wechat.session_key(APPID2, openid),
        "unionid": unionid,
    }


@pytest.mark.parametrize(
    ("unionid", "has_unionid"),
    [(None, True), ("1", True), ("0", False), ("false", False), ("no", False), ("FALSE", False)],
)
@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
def test_dev_wx_login_unionid_switch(
    wechat: WeChatEmulator, wechat_url: str, form: bool, unionid: str | None, has_unionid: bool
) -> None:
    fields = {"appid": APPID, "user": "erin"}
    if unionid is not None:
        fields["unionid"] = unionid
    minted = json.loads(wx_login(wechat_url, form=form, **fields).text)
    body = answer(exchange(wechat_url, minted["code"]))
    assert body["openid"] == wechat.identity(APPID, "erin")[0]
    if has_unionid:
        assert body["unionid"] == wechat.identity(APPID, "erin")[1]
    else:
        assert "unionid" not in body


def test_dev_wx_login_json_false_omits_unionid(wechat: WeChatEmulator, wechat_url: str) -> None:
    minted = wx_login(wechat_url, appid=APPID, user="erin", unionid=False).json()
    assert "unionid" not in answer(exchange(wechat_url, minted["code"]))


def test_dev_wx_login_without_user_makes_a_new_one(wechat: WeChatEmulator, wechat_url: str) -> None:
    first = wx_login(wechat_url, appid=APPID).json()
    second = wx_login(wechat_url, appid=APPID).json()
    assert first["openid"] is None  # not known to the caller; WeChat tells the server
    one = answer(exchange(wechat_url, first["code"]))["openid"]
    two = answer(exchange(wechat_url, second["code"]))["openid"]
    assert one != two


@pytest.mark.parametrize(
    "fields", [{"appid": "wx0000000000000000"}, {}], ids=["unknown", "ambiguous"]
)
def test_dev_wx_login_refuses_unknown_or_ambiguous_appid(
    wechat: WeChatEmulator, wechat_url: str, fields: dict[str, str]
) -> None:
    response = wx_login(wechat_url, **fields)
    assert response.status_code == 400
    assert json.loads(response.text)["errcode"] == 40013
    assert wechat.calls == []


@pytest.mark.parametrize(
    "body",
    [{"appid": [APPID]}, {"appid": APPID, "user": 123}, {"appid": APPID, "user": ["a"]}, [APPID]],
    ids=["appid-list", "user-number", "user-list", "array-body"],
)
def test_dev_wx_login_refuses_malformed_json_as_json(
    wechat: WeChatEmulator, wechat_url: str, body: object
) -> None:
    """A body that is not an object of strings is a 400 with an errcode, not a 500 page.

    In development the emulator is mounted inside issuer (``/_wechat``), whose errors are
    never HTML pages (SPEC §2).
    """
    response = requests.post(wechat_url + "/dev/wx.login", json=body, timeout=5)
    assert response.status_code == 400, response.status_code
    assert isinstance(json.loads(response.text)["errcode"], int)


def test_dev_wx_login_defaults_to_the_only_app() -> None:
    emulator = WeChatEmulator({APPID: SECRET})
    server = ServerThread(emulator.app)
    try:
        minted = wx_login(server.url, user="fay").json()
        assert minted["appid"] == APPID
        assert answer(exchange(server.url, minted["code"]))["openid"] == minted["openid"]
    finally:
        server.stop()


# -- fault injection (what the other tests rely on)


@pytest.mark.parametrize(
    ("fault", "status", "text"),
    [
        (Fault(errcode=45011), 200, '"errcode": 45011'),
        (Fault(status=502), 502, "<html>"),
        (Fault(body='{"openid": "o'), 200, '{"openid": "o'),
    ],
    ids=["errcode", "status", "body"],
)
def test_faults_apply_to_the_next_calls_only(
    clocked: Clocked, fault: Fault, status: int, text: str
) -> None:
    emulator = clocked.emulator
    emulator.inject(fault, times=2)
    for _ in range(2):
        response = exchange(clocked.url, emulator.mint_code(APPID))
        assert response.status_code == status
        assert text in response.text
    assert "openid" in answer(exchange(clocked.url, emulator.mint_code(APPID)))
    assert emulator.calls == [JSCODE2SESSION] * 3


def test_a_delay_alone_then_answers_normally(clocked: Clocked) -> None:
    emulator = clocked.emulator
    emulator.inject(Fault(delay=1.5))
    body = answer(exchange(clocked.url, emulator.mint_code(APPID, "gus")))
    assert body["openid"] == emulator.identity(APPID, "gus")[0]
    assert clocked.pauses == [1.5]


def test_a_fault_for_another_path_waits(clocked: Clocked) -> None:
    emulator = clocked.emulator
    emulator.inject(Fault(errcode=45011, path="/wxa/other"))
    assert "openid" in answer(exchange(clocked.url, emulator.mint_code(APPID)))
