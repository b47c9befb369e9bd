"""POST /auth/login: the token response, bodies of every shape, app selection, storage."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from issuer.wechat.emulator import Fault
from tests.conftest import APPID, APPID2, SECRET, SECRET2
from tests.pgserver import query, stored_bytes

# Each test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.stores

TOKEN_FIELDS = {
    "access_token",
    "token_type",
    "expires_in",
    "refresh_token",
    "refresh_token_expires_in",
    "user_id",
    "is_new_user",
}


def rows(app, table: str) -> int:
    url = app.extensions["issuer"].settings.database_url
    return query(url, f"SELECT count(*) FROM {table}")[0][0]


def on_disk(app) -> bytes:
    return stored_bytes(app.extensions["issuer"].settings.database_url)


def test_token_response_follows_rfc6749(client, wechat):
    response = client.post("/auth/login", json={"code": wechat.mint_code(APPID, "alice")})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.get_json()
    assert set(body) == TOKEN_FIELDS
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["refresh_token_expires_in"] == 2_592_000
    assert body["is_new_user"] is True
    assert body["refresh_token"].startswith("rt_")


def test_same_user_logs_in_again_as_existing_user(login):
    first, second = login("alice"), login("alice")
    assert second["user_id"] == first["user_id"]
    assert second["is_new_user"] is False
    assert second["refresh_token"] != first["refresh_token"]


def test_form_body_is_accepted(client, wechat):
    code = wechat.mint_code(APPID, "bob")
    response = client.post("/auth/login", data={"code": code})
    assert response.status_code == 200
    assert response.get_json()["is_new_user"] is True


def test_json_with_charset_is_accepted(client, wechat):
    code = wechat.mint_code(APPID, "bob")
    response = client.post(
        "/auth/login",
        data=json.dumps({"code": code}),
        content_type="application/json; charset=utf-8",
    )
    assert response.status_code == 200


BAD_BODIES = [
    pytest.param(None, None, id="no body"),
    pytest.param("text/plain", "code=abc", id="text/plain"),
    pytest.param("multipart/form-data; boundary=x", "--x--", id="multipart"),
    pytest.param("application/json", "", id="empty json"),
    pytest.param("application/json", "{", id="broken json"),
    pytest.param("application/json", "[]", id="json array"),
    pytest.param("application/json", '"code"', id="json string"),
    pytest.param("application/json", "{}", id="code missing"),
    pytest.param("application/json", '{"code": null}', id="code null"),
    pytest.param("application/json", '{"code": 123}', id="code number"),
    pytest.param("application/json", '{"code": ["a"]}', id="code list"),
    pytest.param("application/json", '{"code": {"a": 1}}', id="code object"),
    pytest.param("application/json", '{"code": ""}', id="code empty"),
    pytest.param("application/json", '{"code": "a b"}', id="code with space"),
    pytest.param("application/json", '{"code": "%s"}' % ("a" * 129), id="code too long"),
    pytest.param("application/json", '{"code": "abc\\u0000"}', id="code with NUL"),
    pytest.param("application/json", '{"code": "abc", "appid": 5}', id="appid number"),
    pytest.param("application/json", "[" * 5000 + "]" * 5000, id="deep nesting"),
    pytest.param("application/json", b"\xff\xfe{", id="not utf-8"),
    pytest.param("application/x-www-form-urlencoded", "code=a&code=b", id="code twice"),
    pytest.param("application/x-www-form-urlencoded", "", id="empty form"),
]


@pytest.mark.parametrize(("content_type", "data"), BAD_BODIES)
def test_bad_bodies_are_invalid_request_and_never_reach_wechat(
    client, wechat, app, content_type, data
):
    response = client.post("/auth/login", data=data, content_type=content_type)
    assert response.status_code == 400
    body = response.get_json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == "invalid_request"
    assert body["error_description"]
    assert response.headers["Cache-Control"] == "no-store"
    assert wechat.calls == []
    assert rows(app, "users") == 0


def test_unknown_content_type_names_the_accepted_ones(client):
    response = client.post("/auth/login", data="x", content_type="text/xml")
    description = response.get_json()["error_description"]
    assert "application/json" in description
    assert "application/x-www-form-urlencoded" in description


def test_oversized_body_is_413_json(client, wechat):
    response = client.post("/auth/login", json={"code": "a", "pad": "x" * 17_000})
    assert response.status_code == 413
    assert response.get_json()["error"] == "invalid_request"
    assert wechat.calls == []


@pytest.fixture
def two_apps(app_factory):
    return app_factory(
        apps=[
            {"appid": APPID, "secret": SECRET},
            {"appid": APPID2, "secret": int(SECRET2)},
            {"appid": "wx3333333333333333", "secret": "s", "kind": "officialaccount"},
        ]
    )


@pytest.mark.parametrize(
    ("fields", "description_part"),
    [
        ({}, "send appid"),
        ({"appid": "wx9999999999999999"}, "not configured"),
        ({"appid": "wx3333333333333333"}, "not a mini-program"),
    ],
)
def test_app_selection_errors_are_invalid_client(two_apps, wechat, fields, description_part):
    response = two_apps.test_client().post(
        "/auth/login", json={"code": wechat.mint_code(APPID, "carol"), **fields}
    )
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client"
    assert description_part in response.get_json()["error_description"]
    assert wechat.calls == []


def test_unionid_joins_a_second_app_to_the_same_user(two_apps, wechat):
    client = two_apps.test_client()
    first = client.post(
        "/auth/login", json={"code": wechat.mint_code(APPID, "dora"), "appid": APPID}
    ).get_json()
    second = client.post(
        "/auth/login", json={"code": wechat.mint_code(APPID2, "dora"), "appid": APPID2}
    ).get_json()
    assert first["is_new_user"] is True
    assert second["is_new_user"] is False
    assert second["user_id"] == first["user_id"]
    me = client.get("/me", headers={"Authorization": f"Bearer {second['access_token']}"})
    openid, unionid = wechat.identity(APPID2, "dora")
    assert me.get_json()["appid"] == APPID2
    assert me.get_json()["openid"] == openid
    assert me.get_json()["unionid"] == unionid


def test_without_unionid_each_app_has_its_own_user(two_apps, wechat):
    client = two_apps.test_client()
    users = {
        client.post(
            "/auth/login",
            json={"code": wechat.mint_code(appid, "eve", unionid=False), "appid": appid},
        ).get_json()["user_id"]
        for appid in (APPID, APPID2)
    }
    assert len(users) == 2


def test_session_key_is_stored_encrypted(app, login, wechat):
    login("frank")
    openid, _ = wechat.identity(APPID, "frank")
    session_key = wechat.session_key(APPID, openid)
    assert session_key is not None
    stored = on_disk(app)
    assert openid.encode() in stored  # the files are readable: the check below means something
    assert session_key.encode() not in stored
    assert base64.b64decode(session_key) not in stored
    identity = app.extensions["issuer"].store.get_identity(APPID, openid)
    assert identity.session_key.kid == app.extensions["issuer"].sealer.active_kid


def test_a_repeated_code_within_the_window_answers_as_the_first_login(client, wechat, clock):
    code = wechat.mint_code(APPID, "gina")
    first = client.post("/auth/login", json={"code": code}).get_json()
    clock.advance(9.9)
    again = client.post("/auth/login", json={"code": code})
    assert again.status_code == 200
    retried = again.get_json()
    assert retried["is_new_user"] is True  # as the first answer said
    assert retried["user_id"] == first["user_id"]
    assert retried["refresh_token"] == first["refresh_token"]  # the same session's current one
    assert retried["access_token"] != first["access_token"]
    assert wechat.calls == ["/sns/jscode2session"]  # WeChat was asked once
    sids = {jwt.decode(body["access_token"], options={"verify_signature": False})["sid"]
            for body in (first, retried)}  # fmt: skip
    assert len(sids) == 1


def test_a_repeated_code_after_the_window_is_invalid_grant(client, wechat, clock):
    code = wechat.mint_code(APPID, "gina")
    assert client.post("/auth/login", json={"code": code}).status_code == 200
    clock.advance(10)
    again = client.post("/auth/login", json={"code": code})
    assert again.status_code == 400
    assert again.get_json()["error"] == "invalid_grant"


def test_a_retry_after_the_session_rotated_gets_its_current_refresh_token(client, wechat):
    code = wechat.mint_code(APPID, "hugo")
    first = client.post("/auth/login", json={"code": code}).get_json()
    rotated = client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    again = client.post("/auth/login", json={"code": code}).get_json()
    assert again["refresh_token"] == rotated.get_json()["refresh_token"]
    assert again["is_new_user"] is True


def test_a_code_that_failed_is_not_remembered(client, wechat):
    wechat.inject(Fault(errcode=40029))
    code = wechat.mint_code(APPID, "ivy")
    assert client.post("/auth/login", json={"code": code}).status_code == 400
    # WeChat is asked again (the code itself was never spent) rather than answered locally.
    assert client.post("/auth/login", json={"code": code}).status_code == 200
    assert wechat.calls == ["/sns/jscode2session"] * 2


def test_a_repeated_code_is_answered_locally_even_if_a_later_login_happened(client, wechat):
    code = wechat.mint_code(APPID, "jon")
    first = client.post("/auth/login", json={"code": code}).get_json()
    client.post("/auth/login", json={"code": wechat.mint_code(APPID, "jon")})
    again = client.post("/auth/login", json={"code": code}).get_json()
    assert again["user_id"] == first["user_id"]
    assert again["is_new_user"] is True


def test_window_zero_turns_retries_off(app_factory, wechat):
    client = app_factory(login_retry_window=0).test_client()
    code = wechat.mint_code(APPID, "kim")
    assert client.post("/auth/login", json={"code": code}).status_code == 200
    again = client.post("/auth/login", json={"code": code})
    assert again.status_code == 400
    assert again.get_json()["error"] == "invalid_grant"


def test_only_a_hash_of_the_code_is_stored(app, client, wechat):
    code = wechat.mint_code(APPID, "lou")
    client.post("/auth/login", json={"code": code})
    stored = on_disk(app)
    assert code.encode() not in stored
    assert rows(app, "login_codes") == 1
