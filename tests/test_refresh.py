"""POST /auth/refresh and /auth/logout: rotation, reuse grace, reuse detection, lifetime."""

from __future__ import annotations

import jwt
import pytest

from issuer.tokens import mint_refresh_token, parse_refresh_token
from tests.conftest import APPID
from tests.pgserver import stored_bytes

# Each test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.stores


def refresh(client, token, **fields):
    return client.post("/auth/refresh", json={"refresh_token": token, **fields})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_refresh_rotates_within_the_same_session(client, login, clock):
    first = login("alice")
    clock.advance(60)
    response = refresh(client, first["refresh_token"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    second = response.get_json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["user_id"] == first["user_id"]
    assert second["is_new_user"] is False
    assert second["refresh_token_expires_in"] == 2_592_000 - 60  # absolute, not extended
    old, new = (jwt.decode(t, options={"verify_signature": False}) for t in
                (first["access_token"], second["access_token"]))  # fmt: skip
    assert new["sid"] == old["sid"]
    assert new["jti"] != old["jti"]
    assert refresh(client, second["refresh_token"]).status_code == 200


def test_form_grant_type_refresh_token_is_the_oauth_token_endpoint(client, login):
    token = login("bob")["refresh_token"]
    response = client.post(
        "/auth/refresh",
        data={"grant_type": "refresh_token", "refresh_token": token, "client_id": APPID},
    )
    assert response.status_code == 200


@pytest.mark.parametrize("grant_type", ["password", "authorization_code", "client_credentials", ""])
def test_other_grant_types_are_unsupported(client, login, grant_type):
    token = login("bob")["refresh_token"]
    response = client.post("/auth/refresh", data={"grant_type": grant_type, "refresh_token": token})
    assert response.status_code == 400
    assert response.get_json()["error"] == "unsupported_grant_type"


def test_refresh_token_is_bound_to_its_client(client, login):
    token = login("bob")["refresh_token"]
    response = refresh(client, token, client_id="wx9999999999999999")
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_grant"
    assert refresh(client, token).status_code == 200  # the failed attempt spent nothing


def test_retry_within_grace_returns_the_same_successor(client, login, clock):
    first = login("carol")["refresh_token"]
    successor = refresh(client, first).get_json()
    clock.advance(9.999)
    replay = refresh(client, first)
    assert replay.status_code == 200
    assert replay.get_json()["refresh_token"] == successor["refresh_token"]
    assert replay.get_json()["access_token"] != successor["access_token"]
    # The chain did not fork: the successor still rotates, once.
    assert refresh(client, successor["refresh_token"]).status_code == 200


def test_reuse_after_grace_revokes_the_whole_session(client, login, clock):
    first = login("dora")
    successor = refresh(client, first["refresh_token"]).get_json()
    clock.advance(10.0)  # exactly the grace: no longer within it
    reuse = refresh(client, first["refresh_token"])
    assert reuse.status_code == 400
    assert reuse.get_json()["error"] == "invalid_grant"
    assert refresh(client, successor["refresh_token"]).status_code == 400
    me = client.get("/me", headers=bearer(successor["access_token"]))
    assert me.status_code == 401


def test_older_token_inside_the_grace_is_still_theft(client, login):
    first = login("erin")["refresh_token"]
    second = refresh(client, first).get_json()["refresh_token"]
    third = refresh(client, second).get_json()["refresh_token"]
    assert refresh(client, first).status_code == 400  # two steps back
    assert refresh(client, third).status_code == 400  # session revoked


def test_grace_zero_disables_replay(app_factory, wechat):
    client = app_factory(refresh_reuse_grace=0).test_client()
    code = wechat.mint_code(APPID, "fred")
    first = client.post("/auth/login", json={"code": code}).get_json()["refresh_token"]
    second = refresh(client, first).get_json()["refresh_token"]
    assert refresh(client, first).status_code == 400
    assert refresh(client, second).status_code == 400


def test_session_lifetime_is_absolute(app_factory, wechat, clock):
    client = app_factory(refresh_token_ttl=3600).test_client()
    code = wechat.mint_code(APPID, "gus")
    token = client.post("/auth/login", json={"code": code}).get_json()["refresh_token"]
    clock.advance(3599)
    response = refresh(client, token)
    assert response.status_code == 200
    assert response.get_json()["refresh_token_expires_in"] == 1
    clock.advance(1)
    expired = refresh(client, response.get_json()["refresh_token"])
    assert expired.status_code == 400
    assert expired.get_json()["error"] == "invalid_grant"


def forged_tokens(real: str) -> list[str]:
    parsed = parse_refresh_token(real)
    assert parsed is not None
    flipped = bytearray(parsed.mac)
    flipped[0] ^= 1
    return [
        "",
        "rt_",
        "rt_!!!!",
        "x" * 80,
        real[:-2],
        real + "A",
        real.replace("rt_", "RT_"),
        mint_refresh_token(parsed.sid, b"\x00" * 32, parsed.counter),  # wrong secret
        mint_refresh_token(parsed.sid, b"\x00" * 32, parsed.counter + 1),
        mint_refresh_token("A" * 22, b"\x00" * 32, 0),  # unknown session
    ]


def test_forged_and_malformed_refresh_tokens_are_invalid_grant(client, login):
    real = login("hana")["refresh_token"]
    for token in forged_tokens(real):
        response = refresh(client, token)
        assert response.status_code == 400, token
        assert response.get_json()["error"] == "invalid_grant", token
    # Forgeries revoke nothing: the real token still works.
    assert refresh(client, real).status_code == 200


def test_access_token_is_not_a_refresh_token_and_the_reverse(client, login):
    body = login("ivan")
    response = refresh(client, body["access_token"])
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_grant"
    me = client.get("/me", headers=bearer(body["refresh_token"]))
    assert me.status_code == 401
    assert me.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_refresh_token_field_is_required(client):
    response = client.post("/auth/refresh", json={})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_database_holds_no_refresh_token(app, client, login):
    body = login("jane")
    rotated = refresh(client, body["refresh_token"]).get_json()["refresh_token"]
    stored = stored_bytes(app.extensions["issuer"].settings.database_url)
    # The session's row is readable there: the checks below mean something.
    assert parse_refresh_token(rotated).sid.encode() in stored
    for token in (body["refresh_token"], rotated):
        parsed = parse_refresh_token(token)
        assert token.encode() not in stored
        assert parsed.mac not in stored


# -- logout


def test_logout_with_refresh_token_ends_the_session(client, login):
    body = login("kate")
    response = client.post("/auth/logout", json={"refresh_token": body["refresh_token"]})
    assert response.status_code == 204
    assert response.data == b""
    assert refresh(client, body["refresh_token"]).status_code == 400
    assert client.get("/me", headers=bearer(body["access_token"])).status_code == 401
    again = client.post("/auth/logout", json={"refresh_token": body["refresh_token"]})
    assert again.status_code == 204


def test_logout_with_an_older_token_of_the_chain_ends_the_session(client, login):
    body = login("lars")
    current = refresh(client, body["refresh_token"]).get_json()["refresh_token"]
    form = client.post("/auth/logout", data={"refresh_token": body["refresh_token"]})
    assert form.status_code == 204
    assert refresh(client, current).status_code == 400


def test_logout_with_bearer_ends_the_session(client, login):
    body = login("mia")
    response = client.post("/auth/logout", headers=bearer(body["access_token"]))
    assert response.status_code == 204
    assert refresh(client, body["refresh_token"]).status_code == 400
    # Idempotent: the token still verifies, its session is already over.
    again = client.post("/auth/logout", headers=bearer(body["access_token"]))
    assert again.status_code == 204


def test_logout_of_unknown_token_is_204(client):
    response = client.post("/auth/logout", json={"refresh_token": "rt_unknown"})
    assert response.status_code == 204


def test_logout_only_ends_its_own_session(client, login):
    one, two = login("nina"), login("nina")
    assert (
        client.post("/auth/logout", json={"refresh_token": one["refresh_token"]}).status_code == 204
    )
    assert refresh(client, two["refresh_token"]).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({}, 400, "invalid_request"),
        ({"json": {}}, 400, "invalid_request"),
        ({"headers": {"Authorization": "Bearer not-a-jwt"}}, 401, "invalid_token"),
    ],
)
def test_logout_needs_a_token(client, kwargs, status, error):
    response = client.post("/auth/logout", **kwargs)
    assert response.status_code == status
    assert response.get_json()["error"] == error


def test_logout_with_a_bad_bearer_revokes_nothing(client, login):
    body = login("otto")
    response = client.post(
        "/auth/logout",
        json={"refresh_token": body["refresh_token"]},
        headers={"Authorization": "Bearer not-a-jwt"},
    )
    assert response.status_code == 401
    assert refresh(client, body["refresh_token"]).status_code == 200
