"""WeChat user data for logged-in callers (SPEC §2): ``POST /wechat/decrypt``,
``POST /wechat/phone`` and ``GET /wechat/session``.

WeChat is the real loopback emulator from conftest: it mints ``encryptedData`` with the user's
current ``session_key`` (``user_data``), phone-button codes (``mint_phone_code``) and server
access tokens, and faults are injected into it, never patched into ``requests``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from issuer.wechat.crypto import check_session_signature
from issuer.wechat.emulator import Fault, WeChatEmulator
from tests.conftest import APPID, APPID2, SECRET, SECRET2
from tests.pgserver import query as database_query
from tests.pgserver import stored_bytes

# Each test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.stores

DECRYPT = "/wechat/decrypt"
PHONE = "/wechat/phone"
SESSION = "/wechat/session"
GETUSERPHONENUMBER = "/wxa/business/getuserphonenumber"
CHECKSESSION = "/wxa/checksession"
STABLE_TOKEN = "/cgi-bin/stable_token"


# -- helpers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: TestResponse, status: int, error: str) -> dict[str, str]:
    """An RFC 6749 §5.2 error: exactly error + error_description, never cached."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == error, body
    assert body["error_description"].strip()
    assert response.headers["Cache-Control"] == "no-store"
    return body


def database_bytes(app: Flask) -> bytes:
    """What the database holds on disk (files, WAL), whichever the backend."""
    return stored_bytes(app.extensions["issuer"].settings.database_url)


def query(app: Flask, sql: str, *params: object) -> list[tuple[Any, ...]]:
    return database_query(app.extensions["issuer"].settings.database_url, sql, *params)


def claims(access_token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(access_token, options={"verify_signature": False})
    return decoded


def encrypt_for(session_key: str, plaintext: bytes, iv: bytes = b"\x42" * 16) -> dict[str, str]:
    """``encryptedData`` + ``iv`` made with ``session_key`` the way WeChat makes them."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    cipher = Cipher(algorithms.AES(base64.b64decode(session_key)), modes.CBC(iv))
    encryptor = cipher.encryptor()
    return {
        "encrypted_data": base64.b64encode(
            encryptor.update(padded) + encryptor.finalize()
        ).decode(),
        "iv": base64.b64encode(iv).decode(),
    }


def me(client: FlaskClient, access_token: str) -> dict[str, Any]:
    response = client.get("/me", headers=bearer(access_token))
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def current_key(wechat: WeChatEmulator, appid: str, user: str) -> str:
    key = wechat.session_key(appid, wechat.identity(appid, user)[0])
    assert key is not None
    return key


@pytest.fixture
def two_apps(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory(
        apps=[{"appid": APPID, "secret": SECRET}, {"appid": APPID2, "secret": SECRET2}]
    )


def login_to(client: FlaskClient, wechat: WeChatEmulator, appid: str, user: str, **mint: Any):
    response = client.post(
        "/auth/login", json={"code": wechat.mint_code(appid, user, **mint), "appid": appid}
    )
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


# -- POST /wechat/decrypt: the round trip


def snake(data: dict[str, str]) -> dict[str, str]:
    return {"encrypted_data": data["encryptedData"], "iv": data["iv"]}


def camel(data: dict[str, str]) -> dict[str, str]:
    return {"encryptedData": data["encryptedData"], "iv": data["iv"]}


FIELD_STYLES = [
    pytest.param(snake, id="snake_case"),
    pytest.param(camel, id="camelCase"),
    pytest.param(
        lambda d: {**snake(d), "raw_data": d["rawData"], "signature": d["signature"]},
        id="snake_case with raw_data",
    ),
    pytest.param(
        lambda d: {**camel(d), "rawData": d["rawData"], "signature": d["signature"]},
        id="camelCase with rawData",
    ),
    pytest.param(
        lambda d: {**snake(d), "signature": d["signature"].upper(), "raw_data": d["rawData"]},
        id="signature in upper-case hex",
    ),
]


@pytest.mark.parametrize("shape", FIELD_STYLES)
def test_decrypt_round_trip(client, login, wechat, shape):
    pair = login("alice")
    openid, unionid = wechat.identity(APPID, "alice")
    data = wechat.user_data(APPID, "alice")
    wechat.calls.clear()

    response = client.post(DECRYPT, json=shape(data), headers=bearer(pair["access_token"]))

    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"data"}
    decrypted = body["data"]
    assert decrypted["openId"] == openid
    assert decrypted["unionId"] == unionid
    assert decrypted["nickName"] == "alice"
    assert decrypted["watermark"]["appid"] == APPID
    assert wechat.calls == []  # decryption is local: WeChat is never asked
    profile = me(client, pair["access_token"])
    assert profile["nickname"] == "alice"
    assert profile["avatar_url"] == "https://example.invalid/alice"


def test_decrypt_repairs_plus_turned_into_space(client, login, wechat):
    pair = login("bert")
    # Data whose encryptedData and iv both carry "+" inside the text (the emulator's iv is
    # random; the leading-"+" case has its own test below).
    attempts = (wechat.user_data(APPID, "bert") for _ in range(2000))
    data = next(
        item
        for item in attempts
        if "+" in item["encryptedData"][1:-1]
        and "+" in item["iv"][1:-1]
        and "+" not in item["encryptedData"][0] + item["encryptedData"][-1] + item["iv"][0]
    )
    body = {
        "encrypted_data": data["encryptedData"].replace("+", " "),
        "iv": data["iv"].replace("+", " "),
    }
    response = client.post(DECRYPT, json=body, headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["data"]["openId"] == wechat.identity(APPID, "bert")[0]


def test_decrypt_repairs_an_iv_that_begins_with_plus(client, login, wechat):
    # One iv in 64 begins with "+" in base64; a form-encoding accident makes it a space.
    pair = login("bea")
    openid, _ = wechat.identity(APPID, "bea")
    plain = {"openId": openid, "watermark": {"timestamp": 1, "appid": APPID}}
    sent = encrypt_for(current_key(wechat, APPID, "bea"), json.dumps(plain).encode(), b"\xfb" * 16)
    assert sent["iv"].startswith("+")
    body = {**sent, "iv": sent["iv"].replace("+", " ")}
    response = client.post(DECRYPT, json=body, headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["data"] == plain


# -- POST /wechat/decrypt: every error row


@dataclass(frozen=True)
class Ctx:
    """What a bad body is made from: alice's good data, her key and openid, bob's data."""

    good: dict[str, str]
    key: str
    openid: str
    other: dict[str, str]

    def sealed(self, value: Any) -> dict[str, str]:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return encrypt_for(self.key, raw)

    def plain(self, **changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "openId": self.openid,
            "nickName": "mallory",
            "watermark": {"timestamp": 1, "appid": APPID},
        }
        return {**base, **changes}


def flipped_last_byte(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[-1] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


DECRYPT_ERRORS = [
    # malformed requests: 400 invalid_request
    pytest.param(lambda c: {"iv": c.good["iv"]}, 400, "invalid_request", id="no encrypted_data"),
    pytest.param(
        lambda c: {"encrypted_data": c.good["encryptedData"]}, 400, "invalid_request", id="no iv"
    ),
    pytest.param(lambda c: {**snake(c.good), "iv": 16}, 400, "invalid_request", id="iv number"),
    pytest.param(
        lambda c: {**snake(c.good), "encrypted_data": ["x"]}, 400, "invalid_request", id="data list"
    ),
    pytest.param(
        lambda c: {**snake(c.good), "encrypted_data": "%%%not base64%%%"},
        400,
        "invalid_request",
        id="data not base64",
    ),
    pytest.param(
        lambda c: {**snake(c.good), "iv": "r7BXXKkLb8qr$Nn05n0qiA=="},
        400,
        "invalid_request",
        id="iv not base64",
    ),
    pytest.param(
        lambda c: {**snake(c.good), "iv": b64(bytes(15))}, 400, "invalid_request", id="iv 15 bytes"
    ),
    pytest.param(
        lambda c: {**snake(c.good), "iv": b64(bytes(17))}, 400, "invalid_request", id="iv 17 bytes"
    ),
    pytest.param(
        lambda c: {
            **snake(c.good),
            "encrypted_data": b64(base64.b64decode(c.good["encryptedData"])[:-1]),
        },
        400,
        "invalid_request",
        id="data not whole blocks",
    ),
    pytest.param(
        lambda c: {**snake(c.good), "encrypted_data": ""}, 400, "invalid_request", id="data empty"
    ),
    pytest.param(
        lambda c: {**snake(c.good), "raw_data": c.good["rawData"]},
        400,
        "invalid_request",
        id="raw_data without signature",
    ),
    pytest.param(
        lambda c: {**snake(c.good), "signature": c.good["signature"]},
        400,
        "invalid_request",
        id="signature without raw_data",
    ),
    # data or signature not made with the stored session_key: 409 session_key_mismatch
    pytest.param(
        lambda c: {**snake(c.good), "encrypted_data": flipped_last_byte(c.good["encryptedData"])},
        409,
        "session_key_mismatch",
        id="bad padding",
    ),
    pytest.param(lambda c: snake(c.other), 409, "session_key_mismatch", id="another user's key"),
    pytest.param(lambda c: c.sealed(b"not json"), 409, "session_key_mismatch", id="not json"),
    pytest.param(lambda c: c.sealed([c.plain()]), 409, "session_key_mismatch", id="json array"),
    pytest.param(
        lambda c: c.sealed(c.plain(watermark={"timestamp": 1, "appid": APPID2})),
        409,
        "session_key_mismatch",
        id="watermark of another app",
    ),
    pytest.param(
        lambda c: c.sealed({"openId": c.openid}), 409, "session_key_mismatch", id="no watermark"
    ),
    pytest.param(
        lambda c: c.sealed(c.plain(openId="oSomeoneElse")),
        409,
        "session_key_mismatch",
        id="foreign openId",
    ),
    pytest.param(
        lambda c: {**snake(c.good), "raw_data": c.good["rawData"], "signature": "0" * 40},
        409,
        "session_key_mismatch",
        id="bad signature",
    ),
    pytest.param(
        lambda c: {
            **snake(c.good),
            "raw_data": c.other["rawData"],
            "signature": c.other["signature"],
        },
        409,
        "session_key_mismatch",
        id="signature made with another key",
    ),
]


@pytest.mark.parametrize(("make_body", "status", "error"), DECRYPT_ERRORS)
def test_decrypt_errors(client, login, wechat, make_body, status, error):
    pair = login("alice")
    login("bob")
    openid, _ = wechat.identity(APPID, "alice")
    ctx = Ctx(
        good=wechat.user_data(APPID, "alice"),
        key=current_key(wechat, APPID, "alice"),
        openid=openid,
        other=wechat.user_data(APPID, "bob"),
    )
    wechat.calls.clear()

    response = client.post(DECRYPT, json=make_body(ctx), headers=bearer(pair["access_token"]))

    assert_error(response, status, error)
    assert wechat.calls == []
    profile = me(client, pair["access_token"])
    assert profile["nickname"] is None  # nothing was kept from a refused request
    # The good data still decrypts: the refusal was about the request, not the user.
    again = client.post(DECRYPT, json=snake(ctx.good), headers=bearer(pair["access_token"]))
    assert again.status_code == 200, again.get_json()


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (None, None),
        ("encrypted_data=a&iv=b", "application/x-www-form-urlencoded"),
        ("{", "application/json"),
        ("[]", "application/json"),
    ],
    ids=["no body", "form", "broken json", "json array"],
)
def test_decrypt_bad_bodies_are_invalid_request(client, login, data, content_type):
    pair = login("alice")
    response = client.post(
        DECRYPT, data=data, content_type=content_type, headers=bearer(pair["access_token"])
    )
    assert_error(response, 400, "invalid_request")


def test_decrypt_after_a_new_login_needs_data_made_with_the_new_session_key(client, login, wechat):
    first = login("carl")
    old = wechat.user_data(APPID, "carl")
    second = login("carl")  # wx.login again: WeChat issued a new session_key
    new = wechat.user_data(APPID, "carl")

    for pair in (first, second):  # the stored key belongs to the identity, not the session
        stale = client.post(DECRYPT, json=snake(old), headers=bearer(pair["access_token"]))
        assert_error(stale, 409, "session_key_mismatch")
        fresh = client.post(DECRYPT, json=snake(new), headers=bearer(pair["access_token"]))
        assert fresh.status_code == 200, fresh.get_json()


# -- unionId revealed by decrypt


def test_decrypt_gives_the_user_a_unionid_nobody_holds(client, login, wechat):
    pair = login_to(client, wechat, APPID, "dina", unionid=False)
    _, unionid = wechat.identity(APPID, "dina")
    assert me(client, pair["access_token"])["unionid"] is None

    response = client.post(
        DECRYPT, json=snake(wechat.user_data(APPID, "dina")), headers=bearer(pair["access_token"])
    )

    assert response.status_code == 200, response.get_json()
    profile = me(client, pair["access_token"])
    assert profile["unionid"] == unionid
    assert profile["user_id"] == pair["user_id"]
    rotated = client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert claims(rotated.get_json()["access_token"])["unionid"] == unionid


def test_decrypt_merges_two_apps_users_into_the_unionid_holder(two_apps, wechat):
    client = two_apps.test_client()
    _, unionid = wechat.identity(APPID, "mia")
    openid2, _ = wechat.identity(APPID2, "mia")
    # Without unionid from jscode2session, each app makes its own user.
    first = login_to(client, wechat, APPID, "mia", unionid=False)
    reveal = client.post(
        DECRYPT, json=snake(wechat.user_data(APPID, "mia")), headers=bearer(first["access_token"])
    )
    assert reveal.status_code == 200, reveal.get_json()
    assert me(client, first["access_token"])["unionid"] == unionid  # app 1's user holds it
    second = login_to(client, wechat, APPID2, "mia", unionid=False)
    assert second["is_new_user"] is True
    survivor, absorbed = first["user_id"], second["user_id"]
    assert absorbed != survivor

    merge = client.post(
        DECRYPT, json=snake(wechat.user_data(APPID2, "mia")), headers=bearer(second["access_token"])
    )

    assert merge.status_code == 200, merge.get_json()
    assert merge.get_json()["data"]["unionId"] == unionid
    # The absorbed user's old access token names a sub its session no longer has.
    stale = client.get("/me", headers=bearer(second["access_token"]))
    assert_error(stale, 401, "invalid_token")
    assert stale.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    # Its refresh token keeps working and now mints tokens for the survivor.
    rotated = client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert rotated.status_code == 200, rotated.get_json()
    assert rotated.get_json()["user_id"] == survivor
    token = claims(rotated.get_json()["access_token"])
    assert token["sub"] == survivor
    assert token["client_id"] == APPID2
    assert token["unionid"] == unionid
    profile = me(client, rotated.get_json()["access_token"])
    assert (profile["user_id"], profile["appid"], profile["openid"], profile["unionid"]) == (
        survivor,
        APPID2,
        openid2,
        unionid,
    )
    # The survivor's own tokens are untouched.
    assert me(client, first["access_token"])["user_id"] == survivor
    # The absorbed row stays as a tombstone; identities and sessions moved.
    assert query(two_apps, "SELECT merged_into FROM users WHERE id = ?", absorbed) == [(survivor,)]
    assert query(two_apps, "SELECT merged_into FROM users WHERE id = ?", survivor) == [(None,)]
    assert query(two_apps, "SELECT DISTINCT user_id FROM identities") == [(survivor,)]
    assert query(two_apps, "SELECT DISTINCT user_id FROM sessions") == [(survivor,)]
    # A later login of the app-2 identity lands on the survivor, as an existing user.
    again = login_to(client, wechat, APPID2, "mia", unionid=False)
    assert (again["user_id"], again["is_new_user"]) == (survivor, False)


def test_decrypt_does_not_replace_a_different_unionid(client, login, wechat):
    pair = login("nora")  # jscode2session gave the user its unionid
    openid, unionid = wechat.identity(APPID, "nora")
    forged = {"openId": openid, "unionId": "uSomeoneElse", "watermark": {"appid": APPID}}
    sent = encrypt_for(current_key(wechat, APPID, "nora"), json.dumps(forged).encode())
    response = client.post(DECRYPT, json=sent, headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.get_json()
    assert me(client, pair["access_token"])["unionid"] == unionid


# -- POST /wechat/phone


def test_phone_number_is_returned_shown_and_stored_sealed(app, client, login, wechat):
    pair = login("pia")
    number = wechat.phone_of("pia")
    openid, _ = wechat.identity(APPID, "pia")

    response = client.post(
        PHONE,
        json={"code": wechat.mint_phone_code(APPID, "pia")},
        headers=bearer(pair["access_token"]),
    )

    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json() == {
        "phone_number": number,
        "pure_phone_number": number,
        "country_code": "86",
    }
    profile = me(client, pair["access_token"])
    assert profile["phone_number"] == number
    assert profile["country_code"] == "86"
    stored = database_bytes(app)
    assert openid.encode() in stored  # the file is readable: the check below means something
    assert number.encode() not in stored
    assert query(app, "SELECT count(*) FROM identities WHERE phone IS NOT NULL") == [(1,)]


def test_a_used_phone_code_is_invalid_grant(client, login, wechat):
    pair = login("quin")
    code = wechat.mint_phone_code(APPID, "quin")
    assert (
        client.post(PHONE, json={"code": code}, headers=bearer(pair["access_token"])).status_code
        == 200
    )
    again = client.post(PHONE, json={"code": code}, headers=bearer(pair["access_token"]))
    assert_error(again, 400, "invalid_grant")


def test_phone_by_decrypt_is_kept_too(client, login, wechat):
    pair = login("rosa")
    data = wechat.user_data(APPID, "rosa", phone=True)
    response = client.post(DECRYPT, json=snake(data), headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["data"]["phoneNumber"] == wechat.phone_of("rosa")
    profile = me(client, pair["access_token"])
    assert profile["phone_number"] == wechat.phone_of("rosa")
    assert profile["country_code"] == "86"


@pytest.mark.parametrize(
    "body",
    [{}, {"code": ""}, {"code": 123}, {"code": "a" * 129}, {"code": "abc\u0000"}, {"code": "日本"}],
    ids=["missing", "empty", "number", "too long", "NUL", "not ascii"],
)
def test_phone_code_malformed_is_refused_locally(client, login, wechat, body):
    pair = login("sam")
    wechat.calls.clear()
    response = client.post(PHONE, json=body, headers=bearer(pair["access_token"]))
    assert_error(response, 400, "invalid_request")
    assert wechat.calls == []


@pytest.mark.parametrize("errcode", [40001, 40014, 42001])
def test_a_rejected_server_token_is_replaced_and_the_call_retried_once(
    client, login, wechat, errcode
):
    pair = login("tao")
    wechat.inject(Fault(errcode=errcode, path=GETUSERPHONENUMBER))
    response = client.post(
        PHONE,
        json={"code": wechat.mint_phone_code(APPID, "tao")},
        headers=bearer(pair["access_token"]),
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["phone_number"] == wechat.phone_of("tao")
    assert wechat.calls.count(GETUSERPHONENUMBER) == 2


def test_a_fresh_server_token_rejected_again_is_503(client, login, wechat):
    pair = login("tao")
    wechat.inject(Fault(errcode=40001, path=GETUSERPHONENUMBER), times=2)
    response = client.post(
        PHONE,
        json={"code": wechat.mint_phone_code(APPID, "tao")},
        headers=bearer(pair["access_token"]),
    )
    assert_error(response, 503, "temporarily_unavailable")
    assert wechat.calls.count(GETUSERPHONENUMBER) == 2


def test_a_server_token_revoked_elsewhere_costs_one_fetch(app, client, login, wechat):
    pair = login("uma")
    warm = client.post(
        PHONE,
        json={"code": wechat.mint_phone_code(APPID, "uma")},
        headers=bearer(pair["access_token"]),
    )
    assert warm.status_code == 200, warm.get_json()
    wechat.revoke_server_token(APPID)  # as another server's force refresh would
    fetches = wechat.token_fetches.get(APPID, 0)
    wechat.calls.clear()

    response = client.post(
        PHONE,
        json={"code": wechat.mint_phone_code(APPID, "uma")},
        headers=bearer(pair["access_token"]),
    )

    assert response.status_code == 200, response.get_json()
    assert wechat.token_fetches[APPID] == fetches + 1
    assert wechat.calls == [GETUSERPHONENUMBER, STABLE_TOKEN, GETUSERPHONENUMBER]


@pytest.mark.parametrize(
    ("faults", "status", "error", "phone_calls"),
    [
        ([Fault(errcode=-1, path=GETUSERPHONENUMBER)], 200, None, 2),
        ([Fault(errcode=-1, path=GETUSERPHONENUMBER)] * 2, 503, "temporarily_unavailable", 2),
        ([Fault(errcode=40029, path=GETUSERPHONENUMBER)], 400, "invalid_grant", 1),
        ([Fault(errcode=45011, path=GETUSERPHONENUMBER)], 429, "slow_down", 1),
        ([Fault(errcode=40013, path=GETUSERPHONENUMBER)], 502, "upstream_misconfigured", 1),
        ([Fault(errcode=99999, path=GETUSERPHONENUMBER)], 503, "temporarily_unavailable", 1),
        ([Fault(status=502, path=GETUSERPHONENUMBER)], 503, "temporarily_unavailable", 1),
        ([Fault(body="{", path=GETUSERPHONENUMBER)], 503, "temporarily_unavailable", 1),
        ([Fault(errcode=40125, path=STABLE_TOKEN)], 502, "upstream_misconfigured", 0),
        ([Fault(errcode=-1, path=STABLE_TOKEN)], 200, None, 1),
    ],
    ids=[
        "busy once",
        "busy twice",
        "40029",
        "45011",
        "40013",
        "99999",
        "http 502",
        "garbage",
        "stable_token 40125",
        "stable_token busy once",
    ],
)
def test_phone_upstream_answers(client, login, wechat, faults, status, error, phone_calls):
    pair = login("vic")
    for fault in faults:
        wechat.inject(fault)
    wechat.calls.clear()
    response = client.post(
        PHONE,
        json={"code": wechat.mint_phone_code(APPID, "vic")},
        headers=bearer(pair["access_token"]),
    )
    if error is None:
        assert response.status_code == status, response.get_json()
        assert response.get_json()["phone_number"] == wechat.phone_of("vic")
    else:
        assert_error(response, status, error)
    assert wechat.calls.count(GETUSERPHONENUMBER) == phone_calls


# -- GET /wechat/session


def test_session_is_valid_until_wechat_rotates_the_session_key(client, login, wechat):
    pair = login("wes")
    response = client.get(SESSION, headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"valid": True}
    assert response.headers["Cache-Control"] == "no-store"

    wechat.mint_code(APPID, "wes")  # wx.login on the phone: WeChat has a new session_key

    response = client.get(SESSION, headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"valid": False}


def test_session_check_retries_with_a_fresh_server_token(client, login, wechat):
    pair = login("xia")
    wechat.inject(Fault(errcode=42001, path=CHECKSESSION))
    response = client.get(SESSION, headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"valid": True}
    assert wechat.calls.count(CHECKSESSION) == 2


# -- Bearer required


ENDPOINTS = [
    pytest.param("POST", DECRYPT, {"encrypted_data": "AAAA", "iv": "AAAA"}, id="decrypt"),
    pytest.param("POST", PHONE, {"code": "abc"}, id="phone"),
    pytest.param("GET", SESSION, None, id="session"),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_no_bearer_is_401(client, wechat, method, path, body):
    response = client.open(path, method=method, json=body)
    assert_error(response, 401, "invalid_token")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert wechat.calls == []


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_bad_or_ended_bearer_is_401(client, login, wechat, method, path, body):
    pair = login("yan")
    for headers in (
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {pair['refresh_token']}"},
    ):
        response = client.open(path, method=method, json=body, headers=headers)
        assert_error(response, 401, "invalid_token")
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert client.post("/auth/logout", headers=bearer(pair["access_token"])).status_code == 204
    wechat.calls.clear()
    response = client.open(path, method=method, json=body, headers=bearer(pair["access_token"]))
    assert_error(response, 401, "invalid_token")
    assert wechat.calls == []


# -- secrets stay secret


def test_secrets_reach_neither_logs_nor_other_responses(app, client, wechat, caplog):
    caplog.set_level(logging.DEBUG, logger="issuer")
    responses: list[tuple[str, bytes]] = []

    statuses: dict[str, int] = {}

    def keep(name: str, response: TestResponse) -> TestResponse:
        responses.append((name, response.get_data()))
        statuses[name] = response.status_code
        return response

    login_code = wechat.mint_code(APPID, "zoe")
    pair = keep("login", client.post("/auth/login", json={"code": login_code})).get_json()
    auth = bearer(pair["access_token"])
    session_key = current_key(wechat, APPID, "zoe")
    data = wechat.user_data(APPID, "zoe")
    keep(
        "decrypt",
        client.post(
            DECRYPT,
            json={**snake(data), "raw_data": data["rawData"], "signature": data["signature"]},
            headers=auth,
        ),
    )
    keep(
        "bad signature",
        client.post(
            DECRYPT,
            json={**snake(data), "raw_data": "{}", "signature": data["signature"]},
            headers=auth,
        ),
    )
    keep(
        "bad padding",
        client.post(
            DECRYPT,
            json={**snake(data), "encrypted_data": flipped_last_byte(data["encryptedData"])},
            headers=auth,
        ),
    )
    phone_code = wechat.mint_phone_code(APPID, "zoe")
    wechat.inject(Fault(errcode=40001, path=GETUSERPHONENUMBER))
    keep("phone", client.post(PHONE, json={"code": phone_code}, headers=auth))
    keep("phone reused", client.post(PHONE, json={"code": phone_code}, headers=auth))
    wechat.inject(Fault(errcode=40013, path=GETUSERPHONENUMBER))
    other_code = wechat.mint_phone_code(APPID, "zoe")
    keep("phone misconfigured", client.post(PHONE, json={"code": other_code}, headers=auth))
    keep("session", client.get(SESSION, headers=auth))
    wechat.mint_code(APPID, "zoe")
    keep("session stale", client.get(SESSION, headers=auth))
    keep("me", client.get("/me", headers=auth))
    assert statuses == {  # every path above was taken
        "login": 200,
        "decrypt": 200,
        "bad signature": 409,
        "bad padding": 409,
        "phone": 200,
        "phone reused": 400,
        "phone misconfigured": 502,
        "session": 200,
        "session stale": 200,
        "me": 200,
    }
    settings = app.extensions["issuer"].settings
    server_token = app.extensions["issuer.userdata"].server_tokens.get(settings.app(APPID))

    secrets = {
        "session_key": (session_key, set()),
        "session_key bytes as hex": (base64.b64decode(session_key).hex(), set()),
        "server access token": (server_token, set()),
        "app secret": (SECRET, set()),
        "login code": (login_code, set()),
        "phone code": (phone_code, set()),
        "second phone code": (other_code, set()),
        "access token": (pair["access_token"], {"login"}),
        "refresh token": (pair["refresh_token"], {"login"}),
        "phone number": (wechat.phone_of("zoe"), {"phone", "me"}),
        "checksession signature": (check_session_signature(session_key), set()),
    }
    issuer_log = "\n".join(
        logging.Formatter("%(name)s %(message)s").format(record)
        for record in caplog.records
        if record.name.startswith("issuer")
    )
    assert "issuer.access" in issuer_log  # the log was captured: the checks below mean something
    for name, (value, allowed) in secrets.items():
        assert value, name
        assert value not in issuer_log, f"the {name} is in the log"
        for response_name, body in responses:
            if response_name not in allowed:
                assert value.encode() not in body, f"the {name} is in the {response_name} response"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("post", "/wechat/phone", {"code": "abc"}), ("get", "/wechat/session", None)],
)
def test_a_token_of_an_app_no_longer_configured_is_invalid_client(
    app_factory, wechat, method, path, body
):
    both = [{"appid": APPID, "secret": SECRET}, {"appid": APPID2, "secret": SECRET2}]
    before = app_factory(apps=both).test_client()
    code = wechat.mint_code(APPID2, "gone")
    token = before.post("/auth/login", json={"code": code, "appid": APPID2}).get_json()
    after = app_factory(apps=both[:1]).test_client()  # same database and keys, one app fewer
    response = getattr(after, method)(
        path, json=body, headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client"
    assert wechat.calls == ["/sns/jscode2session"]  # WeChat was not asked on its behalf
