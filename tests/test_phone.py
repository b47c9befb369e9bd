"""``/wechat/phone`` for today's WeChat: the caller's openid goes with the code, so a code
issued to another user is refused; quota errors answer ``quota_exhausted``; metrics count
the calls (each is paid) by outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from issuer.wechat.emulator import Fault, WeChatEmulator
from tests.conftest import APPID
from tests.test_metrics import TOKEN, scrape

PHONE = "/wechat/phone"
GETUSERPHONENUMBER = "/wxa/business/getuserphonenumber"


def bearer(body: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {body['access_token']}"}


@pytest.fixture
def no_quota(wechat: WeChatEmulator) -> Any:
    """The emulator's phone quota for APPID, emptied; restored afterwards."""
    wechat.phone_quota[APPID] = 0
    yield wechat
    wechat.phone_quota.pop(APPID, None)


def test_a_code_issued_to_another_user_is_refused_and_nothing_kept(
    client: FlaskClient, login: Callable[..., dict[str, Any]], wechat: WeChatEmulator
) -> None:
    alice = login("alice")
    login("bob")
    bobs_code = wechat.mint_phone_code(APPID, "bob")
    response = client.post(PHONE, headers=bearer(alice), json={"code": bobs_code})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_grant"
    assert "not issued to this user" in response.get_json()["error_description"]
    assert wechat.phone_of("bob") not in response.get_data(as_text=True)
    assert client.get("/me", headers=bearer(alice)).get_json()["phone_number"] is None


def test_the_users_own_code_still_gives_the_number(
    client: FlaskClient, login: Callable[..., dict[str, Any]], wechat: WeChatEmulator
) -> None:
    alice = login("alice")
    code = wechat.mint_phone_code(APPID, "alice")
    response = client.post(PHONE, headers=bearer(alice), json={"code": code})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["phone_number"] == wechat.phone_of("alice")


@pytest.mark.parametrize(
    "fault", [None, Fault(errcode=1400001), Fault(errcode=45009)], ids=["quota", "1400001", "45009"]
)
def test_an_exhausted_quota_answers_quota_exhausted_not_retry_shortly(
    client: FlaskClient,
    login: Callable[..., dict[str, Any]],
    wechat: WeChatEmulator,
    fault: Fault | None,
    request: pytest.FixtureRequest,
) -> None:
    alice = login("alice")
    if fault is None:
        request.getfixturevalue("no_quota")  # the emulator's own quota, spent
    else:
        wechat.inject(Fault(errcode=fault.errcode, path=GETUSERPHONENUMBER))
    response = client.post(
        PHONE, headers=bearer(alice), json={"code": wechat.mint_phone_code(APPID, "alice")}
    )
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"] == "quota_exhausted"
    assert "quota" in body["error_description"]
    assert "cannot help" in body["error_description"]
    assert response.headers["Retry-After"] == "3600"
    assert wechat.calls.count(GETUSERPHONENUMBER) == 1  # no retry: it cannot help


def test_the_emulator_quota_counts_down(
    client: FlaskClient, login: Callable[..., dict[str, Any]], wechat: WeChatEmulator
) -> None:
    alice = login("alice")
    wechat.phone_quota[APPID] = 1
    try:
        first = client.post(
            PHONE, headers=bearer(alice), json={"code": wechat.mint_phone_code(APPID, "alice")}
        )
        second = client.post(
            PHONE, headers=bearer(alice), json={"code": wechat.mint_phone_code(APPID, "alice")}
        )
    finally:
        wechat.phone_quota.pop(APPID, None)
    assert first.status_code == 200
    assert second.get_json()["error"] == "quota_exhausted"


def test_metrics_count_phone_calls_by_outcome(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator
) -> None:
    client = app_factory(metrics=True, metrics_token=TOKEN).test_client()
    code = wechat.mint_code(APPID, "alice")
    alice = client.post("/auth/login", json={"code": code}).get_json()
    client.post(PHONE, headers=bearer(alice), json={"code": wechat.mint_phone_code(APPID, "alice")})
    client.post(PHONE, headers=bearer(alice), json={"code": wechat.mint_phone_code(APPID, "bob")})
    wechat.inject(Fault(errcode=1400001, path=GETUSERPHONENUMBER))
    client.post(PHONE, headers=bearer(alice), json={"code": wechat.mint_phone_code(APPID, "alice")})
    samples = scrape(client)
    assert samples("issuer_phone_numbers_total", outcome="ok") == 1
    assert samples("issuer_phone_numbers_total", outcome="invalid_grant") == 1
    assert samples("issuer_phone_numbers_total", outcome="quota_exhausted") == 1
    assert samples("issuer_wechat_requests_total", api="wxa/business/getuserphonenumber",
                   errcode="1400001") == 1  # fmt: skip


# -- legacy user info no longer overwrites what the user filled in


def test_decrypted_user_info_never_overwrites_the_filled_in_profile(
    client: FlaskClient, login: Callable[..., dict[str, Any]], wechat: WeChatEmulator
) -> None:
    alice = login("alice")
    client.patch("/me", headers=bearer(alice), json={"nickname": "Alice typed this"})
    data = wechat.user_data(APPID, "alice")
    response = client.post("/wechat/decrypt", headers=bearer(alice), json=data)
    assert response.status_code == 200
    assert response.get_json()["data"]["nickName"] == "alice"
    me = client.get("/me", headers=bearer(alice)).get_json()
    assert me["nickname"] == "Alice typed this"
    assert me["avatar_url"] == "https://example.invalid/alice"  # it had none: filled in


def test_wechats_anonymous_profile_is_never_kept(
    client: FlaskClient, login: Callable[..., dict[str, Any]], wechat: WeChatEmulator
) -> None:
    anonymous = login("微信用户")  # the emulator's user data names the user so
    data = wechat.user_data(APPID, "微信用户")
    response = client.post("/wechat/decrypt", headers=bearer(anonymous), json=data)
    assert response.status_code == 200
    me = client.get("/me", headers=bearer(anonymous)).get_json()
    assert me["nickname"] is None
    assert me["avatar_url"] is None
