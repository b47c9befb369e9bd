"""HTTP endpoints of SPEC §2: parse the request, call the service, shape the JSON.

Blueprints: ``auth`` (login, refresh, logout), ``api`` (``/me``), ``wechat_data``,
``discovery`` (JWKS, metadata and the OpenAPI document ``openapi.json`` of this package) and
``health``. The service, key ring getter and store come from
``current_app.extensions["issuer"]``, put there by the factory.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from ..errors import InvalidRequest, UnsupportedGrantType
from ..service import AuthService, Caller
from ..store import StoreUnavailable
from ..userdata import UserData
from .http import NO_STORE, json_response, read_params
from .http import bearer_token as read_bearer_token

auth = Blueprint("auth", __name__)
api = Blueprint("api", __name__)
wechat_data = Blueprint("wechat_data", __name__)
discovery = Blueprint("discovery", __name__)
health = Blueprint("health", __name__)


def service() -> AuthService:
    svc: AuthService = current_app.extensions["issuer"]
    return svc


def user_data() -> UserData:
    data: UserData = current_app.extensions["issuer.userdata"]
    return data


def caller() -> Caller:
    """The authenticated Bearer of this request, its session live."""
    token = read_bearer_token()
    assert token is not None
    who = service().authenticate(token)
    g.sub = who.claims["sub"]  # for the access log line
    return who


# -- auth (token responses carry Cache-Control: no-store, RFC 6749 §5.1)


@auth.post("/auth/login")
def login() -> Response:
    params = read_params(form=True)
    code = params.text("code")
    assert code is not None
    pair = service().login(params.text("appid", required=False), code)
    g.sub = pair.user_id
    return json_response(pair.body(), no_store=True)


@auth.post("/auth/refresh")
def refresh() -> Response:
    """Also the RFC 6749 §6 token endpoint: ``grant_type=refresh_token`` is accepted."""
    params = read_params(form=True)
    grant_type = params.text("grant_type", required=False)
    if grant_type is not None and grant_type != "refresh_token":
        raise UnsupportedGrantType()
    refresh_token = params.text("refresh_token")
    assert refresh_token is not None
    pair = service().refresh(refresh_token, params.text("client_id", required=False))
    g.sub = pair.user_id
    return json_response(pair.body(), no_store=True)


@auth.post("/auth/logout")
def logout() -> Response:
    """End a login session by refresh token or Bearer token; always 204 (RFC 7009 §2.2)."""
    svc = service()
    access_token = read_bearer_token(required=False)
    refresh_token = None
    if access_token is None or request.get_data(cache=True):
        refresh_token = read_params(form=True).text("refresh_token", required=access_token is None)
    # A bad Bearer is refused before anything is revoked. It must verify; its session may
    # already have ended (logout is idempotent).
    who = svc.authenticate(access_token, require_live_session=False) if access_token else None
    if refresh_token is not None:
        svc.logout_refresh_token(refresh_token)
    if who is not None:
        svc.logout_caller(who)
    response = current_app.response_class(status=204)
    response.headers.update(NO_STORE)
    return response


# -- api


@api.get("/me")
def me() -> Response:
    token = read_bearer_token()
    assert token is not None
    who, shown = service().me(token)  # one read of the store: session, user, phone
    g.sub = who.claims["sub"]  # for the access log line
    return json_response(shown, no_store=True)


# -- WeChat user data


@wechat_data.post("/wechat/decrypt")
def decrypt() -> Response:
    """``encrypted_data`` + ``iv`` (camelCase also taken), optionally ``raw_data`` +
    ``signature``: decrypted with the caller's stored session_key."""
    who = caller()
    params = read_params(form=False)

    def field(snake: str, camel: str, *, required: bool = True) -> str | None:
        value = params.text(snake, required=False)
        if value is None:
            value = params.text(camel, required=False)
        if value is None and required:
            raise InvalidRequest(f"{snake} is required.")
        return value

    data = user_data().decrypt(
        who,
        encrypted_data=str(field("encrypted_data", "encryptedData")),
        iv=str(field("iv", "iv")),
        raw_data=field("raw_data", "rawData", required=False),
        signature=field("signature", "signature", required=False),
    )
    return json_response({"data": data}, no_store=True)


@wechat_data.post("/wechat/phone")
def phone() -> Response:
    """``{"code"}`` from the phone-number button (not a wx.login code)."""
    who = caller()
    code = read_params(form=False).text("code")
    assert code is not None
    number = user_data().phone(who, code)
    return json_response(
        {
            "phone_number": number.phone_number,
            "pure_phone_number": number.pure_phone_number,
            "country_code": number.country_code,
        },
        no_store=True,
    )


@wechat_data.get("/wechat/session")
def session_check() -> Response:
    """``{"valid": bool}``: is the stored session_key still the user's current one?"""
    return json_response({"valid": user_data().session_is_current(caller())}, no_store=True)


# -- discovery (RFC 7517 JWKS, RFC 8414 metadata)


@discovery.get("/.well-known/jwks.json")
def jwks() -> Response:
    """The public keys: bytes and ETag the key ring made once, when its keys last changed.

    ``fresh()`` costs one ``stat`` of the manifest, and it is what lets a key another process
    just made active (``keys rotate --now``) be published here before its first token reaches
    a verifier. Nothing else is computed per request: no JSON, no hash, and no
    ``make_conditional`` (which also parses ranges and dates this document never uses).
    """
    svc = service()
    ring = svc.keys.fresh()
    headers = {
        "ETag": f'"{ring.jwks_etag}"',
        "Cache-Control": f"public, max-age={svc.settings.jwks_max_age}",
    }
    # RFC 9110 §13.1.2: If-None-Match compares weakly; "*" matches any current set.
    if request.if_none_match.contains_weak(ring.jwks_etag):
        return current_app.response_class(status=304, headers=headers)
    return current_app.response_class(
        ring.jwks_json, headers=headers, content_type="application/jwk-set+json"
    )


@functools.cache
def openapi_document() -> tuple[bytes, str]:
    """The bytes of ``issuer/openapi.json`` and their ETag, read once per process."""
    body = resources.files(__package__).joinpath("openapi.json").read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:32]


@discovery.get("/openapi.json")
def openapi() -> Response:
    body, etag = openapi_document()
    response = current_app.response_class(body, mimetype="application/json")
    response.set_etag(etag)
    response.headers["Cache-Control"] = "public, max-age=3600"
    response.make_conditional(request)
    return response


@discovery.get("/.well-known/openid-configuration")
@discovery.get("/.well-known/oauth-authorization-server")
def metadata() -> Response:
    svc = service()
    base = svc.settings.url.rstrip("/")
    body: dict[str, Any] = {
        "issuer": svc.settings.url,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "token_endpoint": f"{base}/auth/refresh",
        "revocation_endpoint": f"{base}/auth/logout",
        "grant_types_supported": ["refresh_token"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "access_token_signing_alg_values_supported": list(svc.keys().algorithms),
    }
    response = json_response(body)
    response.headers["Cache-Control"] = f"public, max-age={svc.settings.jwks_max_age}"
    return response


# -- health


@health.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@health.get("/readyz")
def readyz() -> Response:
    svc = service()
    checks = {"database": "ok", "signing_key": "ok"}
    try:
        svc.store.ping()
    except StoreUnavailable:
        checks["database"] = "unavailable"
    try:
        svc.keys().active  # noqa: B018 -- loading the active key is the check
    except Exception:  # a broken key ring must read as "not ready", never as a 500
        checks["signing_key"] = "unavailable"
    if all(value == "ok" for value in checks.values()):
        return json_response({"status": "ready", "checks": checks})
    body = {
        "error": "temporarily_unavailable",
        "error_description": "issuer is not ready: "
        + ", ".join(name for name, value in checks.items() if value != "ok")
        + " unavailable.",
        "checks": checks,
    }
    return json_response(body, 503, no_store=True)
