"""JWKS, discovery metadata, and the health endpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import jwt
import pytest

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def test_jwks_publishes_public_members_only(client):
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.mimetype == "application/jwk-set+json"
    keys = response.get_json()["keys"]
    assert len(keys) == 1
    for key in keys:
        assert not PRIVATE_MEMBERS & set(key)
        assert {"kid", "kty", "alg", "use"} <= set(key)
        assert key["use"] == "sig"
        assert key["alg"] == "ES256"
        assert jwt.PyJWK(key).key_id == key["kid"]


def test_jwks_is_cacheable_and_answers_if_none_match(client):
    first = client.get("/.well-known/jwks.json")
    assert first.headers["Cache-Control"] == "public, max-age=300"
    etag = first.headers["ETag"]
    assert etag
    cached = client.get("/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.data == b""
    stale = client.get("/.well-known/jwks.json", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200


def test_jwks_max_age_is_a_setting(app_factory):
    client = app_factory(jwks_max_age=60).test_client()
    assert client.get("/.well-known/jwks.json").headers["Cache-Control"] == "public, max-age=60"


def test_jwks_kid_is_stable_across_restarts(app_factory):
    first = app_factory().test_client().get("/.well-known/jwks.json").get_json()
    second = app_factory().test_client().get("/.well-known/jwks.json").get_json()
    assert first == second


@pytest.mark.parametrize(
    "path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
)
def test_metadata(client, login, path):
    meta = client.get(path).get_json()
    token = login("alice")["access_token"]
    assert meta["issuer"] == jwt.decode(token, options={"verify_signature": False})["iss"]
    assert meta["jwks_uri"] == "http://issuer.test/.well-known/jwks.json"
    assert meta["token_endpoint"] == "http://issuer.test/auth/refresh"
    assert meta["revocation_endpoint"] == "http://issuer.test/auth/logout"
    assert meta["grant_types_supported"] == ["refresh_token"]
    assert meta["token_endpoint_auth_methods_supported"] == ["none"]
    assert meta["access_token_signing_alg_values_supported"] == ["ES256"]


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_follows_the_database_and_recovers_without_restart(app, client):
    assert client.get("/readyz").status_code == 200
    folder = Path(app.extensions["issuer"].settings.database_url.removeprefix("sqlite:///")).parent
    app.extensions["issuer"].store.close()  # as after a failed query: the next one reconnects
    shutil.move(folder, folder.with_name("elsewhere"))
    try:
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.get_json()
        assert body["error"] == "temporarily_unavailable"
        assert body["checks"]["database"] == "unavailable"
        assert not folder.exists()  # nothing re-created an empty database in its place
    finally:
        shutil.move(folder.with_name("elsewhere"), folder)
    assert client.get("/readyz").status_code == 200
