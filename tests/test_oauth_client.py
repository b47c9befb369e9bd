"""Standard OAuth 2.0 clients work with issuer unchanged.

A maintained client library (Authlib's ``OAuth2Session``) discovers issuer, runs the
authorization code flow with PKCE (web login), refreshes at the ``token_endpoint`` and
revokes at the ``revocation_endpoint`` exactly as it would anywhere else (RFC 6749 §4.1 and
§6, RFC 7636, RFC 7009, RFC 8414); and the revocation endpoint follows RFC 7009 for the
requests such libraries send: ``token`` + ``token_type_hint``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, SECRET, ServerThread
from tests.processes import free_port

TIMEOUT = 10  # seconds, for every request to the live server


def refresh(client: FlaskClient, refresh_token: str) -> int:
    return client.post("/auth/refresh", json={"refresh_token": refresh_token}).status_code


def revoke(client: FlaskClient, **form: str) -> int:
    """An RFC 7009 revocation request, form-encoded as §2.1 has it."""
    return client.post("/auth/logout", data=form).status_code


# -- RFC 7009 at the revocation endpoint


@pytest.mark.parametrize("hint", [None, "refresh_token", "access_token", "id_token"])
def test_revoking_a_refresh_token_ends_its_session_whatever_the_hint(client, login, hint):
    """§2.1: the hint only orders the search; a wrong or unknown hint still finds the token."""
    body = login("ada")
    form = {"token": body["refresh_token"], "client_id": APPID}
    if hint is not None:
        form["token_type_hint"] = hint
    assert revoke(client, **form) == 204
    assert refresh(client, body["refresh_token"]) == 400
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/me", headers=headers).status_code == 401


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token", "bogus"])
def test_revoking_an_access_token_ends_its_session_whatever_the_hint(client, login, hint):
    body = login("bob")
    form = {"token": body["access_token"]}
    if hint is not None:
        form["token_type_hint"] = hint
    assert revoke(client, **form) == 204
    assert refresh(client, body["refresh_token"]) == 400


def test_revoking_a_token_also_takes_json(client, login):
    body = login("cy")
    response = client.post("/auth/logout", json={"token": body["refresh_token"]})
    assert response.status_code == 204
    assert refresh(client, body["refresh_token"]) == 400


@pytest.mark.parametrize(
    "token",
    ["rt_unknown", "a.b.c", "x" * 4000, "", "eyJhbGciOiJub25lIn0.e30."],
    ids=["unknown", "not-a-jwt", "long", "empty", "alg-none"],
)
@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
def test_revoking_an_invalid_token_is_204_and_ends_nothing(client, login, token, hint):
    """§2.2: invalid tokens do not cause an error response; nothing else is touched."""
    body = login("dee")
    form = {"token": token}
    if hint is not None:
        form["token_type_hint"] = hint
    response = client.post("/auth/logout", data=form)
    assert response.status_code == 204
    assert response.data == b""
    assert response.headers["Cache-Control"] == "no-store"
    assert refresh(client, body["refresh_token"]) == 200


def test_revoking_an_expired_access_token_ends_nothing(app_factory, clock, wechat):
    """An access token past ``exp`` has no power left, not even to end its session."""
    app = app_factory(access_token_ttl=60)
    client = app.test_client()
    code = wechat.mint_code(APPID, "eve")
    body = client.post("/auth/login", json={"code": code}).get_json()
    expired = _expire(app, body["access_token"])
    assert revoke(client, token=expired, token_type_hint="access_token") == 204
    assert refresh(client, body["refresh_token"]) == 200


def _expire(app: Any, access_token: str) -> str:
    """The same claims re-signed by the app's own key with an ``exp`` in the past."""
    ring = app.extensions["issuer"].keys()
    claims = jwt.decode(access_token, options={"verify_signature": False})
    header = jwt.get_unverified_header(access_token)
    claims["iat"] -= 3600
    claims["exp"] -= 3600
    return jwt.encode(claims, ring.active.private_key, algorithm=header["alg"], headers=header)


def test_the_refresh_token_field_and_token_together_end_both_sessions(client, login):
    one, two = login("fay"), login("gus")
    form = {"token": one["refresh_token"], "refresh_token": two["refresh_token"]}
    assert revoke(client, **form) == 204
    assert refresh(client, one["refresh_token"]) == 400
    assert refresh(client, two["refresh_token"]) == 400


@pytest.mark.parametrize(
    "form",
    [{"token_type_hint": "refresh_token"}, {"client_id": APPID}],
    ids=["hint-only", "client-only"],
)
def test_a_revocation_without_a_token_is_invalid_request(client, form):
    response = client.post("/auth/logout", data=form)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


# -- a maintained OAuth client library against a live issuer


@pytest.fixture
def issuer_url(self_named_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A live issuer whose discovery document advertises the endpoints a client reaches."""
    # Authlib insists on https; its documented switch for a loopback test server.
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    return self_named_server


def discover(url: str) -> dict[str, Any]:
    response = requests.get(f"{url}/.well-known/oauth-authorization-server", timeout=TIMEOUT)
    assert response.status_code == 200
    meta: dict[str, Any] = response.json()
    return meta


def log_in(url: str, wechat: WeChatEmulator, user: str) -> dict[str, Any]:
    """The mini-program half: a wx.login code exchanged at issuer for a token pair."""
    code = wechat.mint_code(APPID, user)
    response = requests.post(f"{url}/auth/login", json={"code": code}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_authlib_validates_the_metadata(issuer_url):
    """RFC 8414 §2 as Authlib checks it (``response_types_supported`` must not be empty)."""
    meta = AuthorizationServerMetadata(discover(issuer_url))
    meta.validate()
    assert meta["issuer"] == issuer_url


def test_authlib_refreshes_and_revokes_through_the_advertised_endpoints(issuer_url, wechat):
    meta = discover(issuer_url)
    pair = log_in(issuer_url, wechat, "hal")
    session = OAuth2Session(
        client_id=APPID,
        token=pair,
        token_endpoint=meta["token_endpoint"],
        token_endpoint_auth_method="none",
        revocation_endpoint_auth_method="none",
    )
    session.default_timeout = TIMEOUT

    fresh = session.refresh_token(meta["token_endpoint"])
    assert fresh["access_token"] != pair["access_token"]
    assert fresh["refresh_token"] != pair["refresh_token"]
    me = session.get(f"{issuer_url}/me")  # Authlib sends the new Bearer itself
    assert me.status_code == 200
    assert me.json()["user_id"] == pair["user_id"]

    revoked = session.revoke_token(
        meta["revocation_endpoint"], token=fresh["refresh_token"], token_type_hint="refresh_token"
    )
    assert revoked.status_code == 204
    assert session.get(f"{issuer_url}/me").status_code == 401
    again = requests.post(
        meta["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": fresh["refresh_token"]},
        timeout=TIMEOUT,
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_authlib_revokes_an_access_token(issuer_url, wechat):
    meta = discover(issuer_url)
    pair = log_in(issuer_url, wechat, "ivy")
    session = OAuth2Session(client_id=APPID, token=pair, revocation_endpoint_auth_method="none")
    session.default_timeout = TIMEOUT
    revoked = session.revoke_token(
        meta["revocation_endpoint"], token=pair["access_token"], token_type_hint="access_token"
    )
    assert revoked.status_code == 204
    refreshed = requests.post(
        meta["token_endpoint"], json={"refresh_token": pair["refresh_token"]}, timeout=TIMEOUT
    )
    assert refreshed.status_code == 400


# -- the authorization code grant with PKCE (web login), as Authlib runs it

OA_APPID = "wx3333333333333333"
DONE = "http://127.0.0.1:9/done"  # the client's page: never fetched, only parsed


@pytest.fixture
def web_issuer_url(app_factory, monkeypatch) -> Iterator[tuple[str, str]]:
    """A live issuer with an H5 client, and a loopback WeChat that knows its official
    account: (issuer URL, WeChat URL)."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    oa_secret = "s" * 32
    emulator = WeChatEmulator({APPID: SECRET, OA_APPID: oa_secret}, official_accounts=[OA_APPID])
    wechat = ServerThread(emulator.app)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = app_factory(
        url=url,
        wechat_api_base=wechat.url,
        wechat_open_base=wechat.url,
        apps=[
            {"appid": APPID, "secret": SECRET},
            {"appid": OA_APPID, "secret": oa_secret, "kind": "officialaccount"},
        ],
        clients=[{"id": "shop-h5", "kind": "h5", "app": OA_APPID, "redirect_uris": [DONE]}],
    )
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield url, wechat.url
    server.shutdown()
    server.server_close()
    thread.join()
    wechat.stop()


def test_authlib_runs_the_authorization_code_flow_with_pkce(web_issuer_url):
    url, _ = web_issuer_url
    meta = discover(url)
    AuthorizationServerMetadata(meta).validate()
    session = OAuth2Session(
        client_id="shop-h5",
        redirect_uri=DONE,
        scope="snsapi_userinfo",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    session.default_timeout = TIMEOUT
    verifier = generate_token(48)
    authorize_url, state = session.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=verifier
    )
    # The browser: to WeChat's page, the person allows, back through issuer's callback.
    wechat_page = requests.get(authorize_url, allow_redirects=False, timeout=TIMEOUT)
    page = wechat_page.headers["Location"].split("#")[0]
    fields = {key: values[0] for key, values in parse_qs(urlsplit(page).query).items()}
    allowed = requests.post(
        page, data={**fields, "user": "authlib", "action": "consent"},
        allow_redirects=False, timeout=TIMEOUT,
    )  # fmt: skip
    back = requests.get(allowed.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
    assert back.headers["Location"].startswith(DONE + "?")

    token = session.fetch_token(
        meta["token_endpoint"],
        authorization_response=back.headers["Location"],
        state=state,
        code_verifier=verifier,
    )
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "shop-h5"
    assert session.get(f"{url}/me").json()["appid"] == OA_APPID
    fresh = session.refresh_token(meta["token_endpoint"])
    assert fresh["refresh_token"] != token["refresh_token"]
