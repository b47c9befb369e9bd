"""HTTP endpoints of SPEC §2: parse the request, call the service, shape the JSON.

Blueprints: ``auth`` (login, refresh, logout), ``api`` (``/me``), ``wechat_data``,
``discovery`` (JWKS, metadata and the OpenAPI document ``openapi.json`` of this package) and
``health``. The service, key ring getter and store come from
``current_app.extensions["issuer"]``, put there by the factory.
"""

from __future__ import annotations

import functools
import hashlib
import io
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from ..account import Accounts
from ..errors import InvalidRequest, RequestTooLarge, UnsupportedGrantType
from ..errors import NotFound as NotFoundError
from ..keys.manager import KeyRingUnavailable
from ..keys.matching import mismatch
from ..profile import MAX_AVATAR_BYTES
from ..service import AuthService, Caller
from ..store import StoreUnavailable
from ..userdata import UserData
from .http import NO_STORE, json_response, read_params, request_body
from .http import bearer_token as read_bearer_token
from .ratelimit import limits_of

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


def accounts() -> Accounts:
    svc = service()
    return Accounts(svc.store, svc.settings.url, svc.clock)


def caller() -> Caller:
    """The authenticated Bearer of this request, its session live."""
    token = read_bearer_token()
    assert token is not None
    who = service().authenticate(token)
    g.sub = who.claims["sub"]  # for the access log line
    return who


def limited_caller() -> Caller:
    """:func:`caller`, counted against the user's allowance on this endpoint (it calls WeChat
    or decrypts with the user's session_key). Counted once the token is verified, so only
    the user can spend it.

    :raises SlowDown: the user's allowance is spent.
    """
    who = caller()
    assert request.endpoint is not None
    limits_of().hit_user(who.claims["sub"], request.endpoint)
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
    """End a login session; the ``revocation_endpoint`` of the metadata (RFC 7009).

    ``{"scope": "global"}`` with a Bearer ends every session of the Bearer's user (sign out
    everywhere); an ended session's Bearer may still ask it, as logout stays idempotent.

    The session is named by RFC 7009's ``token`` (with an optional ``token_type_hint``), by
    the ``refresh_token`` field, or by a Bearer access token; any of them, or several. Always
    204 once the request is well formed, whether or not a session was found (RFC 7009 §2.2:
    an invalid token is not an error the client could act on).
    """
    svc = service()
    access_token = read_bearer_token(required=False)
    token = hint = refresh_token = scope = None
    if access_token is None or request.get_data(cache=True):
        params = read_params(form=True)
        token = params.text("token", required=False)
        hint = params.text("token_type_hint", required=False)
        refresh_token = params.text("refresh_token", required=False)
        scope = params.text("scope", required=False)
        if scope not in (None, "session", "global"):
            raise InvalidRequest('scope must be "session" or "global".')
        if scope == "global" and access_token is None:
            raise InvalidRequest('scope "global" needs the user\'s Bearer access token.')
        if access_token is None and token is None and refresh_token is None:
            raise InvalidRequest(
                "Send the token to revoke (token, or refresh_token), or a Bearer access token."
            )
    # A bad Bearer is refused before anything is revoked. It must verify; its session may
    # already have ended (logout is idempotent). A bad ``token`` is not refused (RFC 7009).
    who = svc.authenticate(access_token, require_live_session=False) if access_token else None
    if token is not None:
        svc.logout_token(token, hint)
    if refresh_token is not None:
        svc.logout_refresh_token(refresh_token)
    if who is not None:
        svc.logout_caller(who)
        if scope == "global":  # sign out everywhere: every session of the user
            accounts().sign_out_everywhere(who.session.user_id)
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


@api.patch("/me")
def edit_me() -> Response:
    """``{"nickname"?, "avatar_url"?}`` as the user filled them in; answers the new ``/me``."""
    who = caller()
    params = read_params(form=False)
    accounts().edit(
        who.session.user_id,
        nickname=params.text("nickname", required=False),
        avatar_url=params.text("avatar_url", required=False),
    )
    return json_response(service().profile(who), no_store=True)


@api.delete("/me")
def delete_me() -> Response:
    """Delete the caller's account and everything personal of it; ``204``."""
    who = caller()
    accounts().delete(who.session.user_id)
    response = current_app.response_class(status=204)
    response.headers.update(NO_STORE)
    return response


# The image (2 MiB) and what multipart/form-data wraps around it (boundaries, part headers).
AVATAR_BODY_BYTES = MAX_AVATAR_BYTES + 16 * 1024
AVATAR_TOO_LARGE = "The image is larger than 2 MiB."


@api.put("/me/avatar")
@api.post("/me/avatar")
def upload_avatar() -> Response:
    """The image as ``wx.uploadFile`` sends it (multipart/form-data, field ``file``) or as a
    raw ``image/*`` body; re-encoded, stored, and made the user's avatar. Answers ``/me``.

    POST as well as PUT: ``wx.uploadFile`` has no method option, it always POSTs.

    Only this view reads more than 16 KiB, and only once the Bearer has verified.
    """
    who = limited_caller()  # decoding an image costs: counted per user, like /wechat/*
    request.max_content_length = AVATAR_BODY_BYTES
    try:
        data = request_body(AVATAR_BODY_BYTES)
        if request.mimetype == "multipart/form-data":
            data = _multipart_file(data)
        elif not request.mimetype.startswith("image/"):
            raise InvalidRequest("Content-Type must be multipart/form-data or image/*.")
    except (RequestEntityTooLarge, RequestTooLarge):
        raise RequestTooLarge(AVATAR_TOO_LARGE) from None
    if len(data) > MAX_AVATAR_BYTES:
        raise RequestTooLarge(AVATAR_TOO_LARGE)
    accounts().upload_avatar(who.session.user_id, data)
    return json_response(service().profile(who), no_store=True)


def _multipart_file(body: bytes) -> bytes:
    """The ``file`` part of a multipart/form-data ``body`` (RFC 7578), parsed by Werkzeug in
    memory: the body is already read and bounded, so no part spills into a temporary file.

    :raises InvalidRequest: no ``file`` part, or a malformed body.
    """
    parser = FormDataParser(
        stream_factory=lambda *_args, **_kwargs: io.BytesIO(),
        max_content_length=AVATAR_BODY_BYTES,
        max_form_memory_size=256 * 1024,  # per read, not per field: above its 64 KiB buffer
        max_form_parts=16,
    )
    try:
        _, _, files = parser.parse(
            io.BytesIO(body), request.mimetype, len(body), request.mimetype_params
        )
    except ValueError:
        raise InvalidRequest("The multipart/form-data body is malformed.") from None
    upload = files.get("file")
    if upload is None:
        raise InvalidRequest("Send the image in the multipart field named file.")
    try:
        return upload.stream.read()
    finally:
        upload.close()


@api.get("/avatars/<avatar_id>")
def avatar(avatar_id: str) -> Response:
    """A stored avatar. Its id is a hash of its bytes: they never change, so caches may keep
    it for a year (RFC 8246 ``immutable``), and ``If-None-Match`` is answered with 304."""
    found = accounts().avatar(avatar_id)
    if found is None:
        raise NotFoundError("There is no such avatar.")
    headers = {
        "ETag": f'"{found.id}"',
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
        # Served as an image, never rendered as a document of this origin.
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if request.if_none_match.contains_weak(found.id):
        return current_app.response_class(status=304, headers=headers)
    return current_app.response_class(found.image, headers=headers, mimetype=found.content_type)


# -- WeChat user data


@wechat_data.post("/wechat/decrypt")
def decrypt() -> Response:
    """``encrypted_data`` + ``iv`` (camelCase also taken), optionally ``raw_data`` +
    ``signature``: decrypted with the caller's stored session_key."""
    who = limited_caller()
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
    who = limited_caller()
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
    return json_response({"valid": user_data().session_is_current(limited_caller())}, no_store=True)


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
    """RFC 8414 authorization server metadata (also served as OpenID discovery).

    The token endpoint is ``/auth/token``, for the authorization code grant of web login
    (PKCE ``S256`` only, RFC 9700 §2.1.1) and for refresh; ``/auth/refresh`` stays as the
    mini-program's. Clients are public: no client authentication (``none``).
    """
    svc = service()
    base = svc.settings.url.rstrip("/")
    body: dict[str, Any] = {
        "issuer": svc.settings.url,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "authorization_endpoint": f"{base}/auth/authorize",
        "token_endpoint": f"{base}/auth/token",
        "revocation_endpoint": f"{base}/auth/logout",
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
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
    """200 when the database answers and the key ring is readable, with keys that open the
    data the database holds; else 503 naming what is wrong (details go to the log)."""
    svc = service()
    checks = {"database": "ok", "signing_key": "ok", "keys_match_data": "ok"}
    reasons: list[str] = []
    data_key_checks = None
    try:
        svc.store.ping()
        data_key_checks = svc.store.data_key_checks()
    except StoreUnavailable:
        checks["database"] = "unavailable"
        reasons.append("the database is unavailable")
    try:
        ring = svc.keys()
        ring.active  # noqa: B018 -- loading the active key is the check
        if data_key_checks is not None and mismatch(ring.data_keys, data_key_checks, set()):
            checks["keys_match_data"] = "no"
            reasons.append("the data keys do not match the data in the database")
    except KeyRingUnavailable:
        checks["signing_key"] = "unavailable"
        reasons.append("the key directory cannot be read, so no key is served")
    except Exception:  # a broken key ring must read as "not ready", never as a 500
        checks["signing_key"] = "unavailable"
        reasons.append("no signing key is loaded")
    if not reasons:
        return json_response({"status": "ready", "checks": checks})
    body = {
        "error": "temporarily_unavailable",
        "error_description": "issuer is not ready: " + "; ".join(reasons) + ".",
        "checks": checks,
    }
    return json_response(body, 503, no_store=True)
