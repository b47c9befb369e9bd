"""JWKS, discovery metadata, and the health endpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import jwt
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from issuer.keys import KeyDirectory

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


@pytest.mark.parametrize(
    "if_none_match",
    ["{etag}", "W/{etag}", '"older", {etag}', "*"],
    ids=["exact", "weak", "in-a-list", "star"],
)
def test_jwks_if_none_match_compares_weakly(client, if_none_match):
    """RFC 9110 §13.1.2: If-None-Match uses the weak comparison; ``*`` matches any set."""
    etag = client.get("/.well-known/jwks.json").headers["ETag"]
    cached = client.get(
        "/.well-known/jwks.json", headers={"If-None-Match": if_none_match.format(etag=etag)}
    )
    assert cached.status_code == 304
    assert cached.data == b""
    # RFC 9110 §15.4.5: the headers a 200 would carry for caching, and no entity headers.
    assert cached.headers["ETag"] == etag
    assert cached.headers["Cache-Control"] == "public, max-age=300"
    assert "Content-Type" not in cached.headers


def test_jwks_serves_the_rings_bytes_without_rebuilding_them(app, client, monkeypatch):
    """The body and ETag are made once per key change: a request reads no key file."""
    keys = app.extensions["issuer"].keys
    ring = keys()

    def no_loads(*args, **kwargs):
        raise AssertionError("a JWKS request rebuilt the key ring")

    monkeypatch.setattr(keys.directory, "load", no_loads)
    for _ in range(20):
        response = client.get("/.well-known/jwks.json")
        assert response.status_code == 200
        assert response.data == ring.jwks_json
        assert response.headers["ETag"] == f'"{ring.jwks_etag}"'


def test_jwks_publishes_a_key_another_process_activated_at_the_very_next_request(
    app_factory, tmp_path, clock
):
    """A key made active elsewhere (``keys rotate --now``) is published by the next request,
    not at the next periodic check: its first token may already be on its way to a verifier."""
    app = app_factory(keys_dir=str(tmp_path / "own-keys"))
    app.extensions["issuer"].keys.check_interval = 3600  # the periodic check never runs here
    client = app.test_client()
    before = client.get("/.well-known/jwks.json")

    manager = app.extensions["issuer"].keys
    new_kid = KeyDirectory(tmp_path / "own-keys").rotate(
        manager.policy, immediately=True, now=clock()
    )
    after = client.get("/.well-known/jwks.json", headers={"If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200
    assert new_kid in {key["kid"] for key in after.get_json()["keys"]}
    assert after.headers["ETag"] != before.headers["ETag"]


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
    assert meta["jwks_uri"] == "https://issuer.test/.well-known/jwks.json"
    assert meta["token_endpoint"] == "https://issuer.test/auth/token"
    assert meta["revocation_endpoint"] == "https://issuer.test/auth/logout"
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert meta["token_endpoint_auth_methods_supported"] == ["none"]
    assert meta["access_token_signing_alg_values_supported"] == ["ES256"]
    # Web login: issuer is an authorization server with PKCE (RFC 7636, S256 only).
    assert meta["response_types_supported"] == ["code"]
    assert meta["authorization_endpoint"] == "https://issuer.test/auth/authorize"
    assert meta["code_challenge_methods_supported"] == ["S256"]


def test_metadata_passes_an_rfc8414_validator(client, monkeypatch):
    """Authlib's own validation, as a stock OAuth client library runs it on discovery."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # the test issuer is http://
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        AuthorizationServerMetadata(client.get(path).get_json()).validate()


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
