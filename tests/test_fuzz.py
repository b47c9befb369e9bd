"""Property-based fuzzing of a live issuer from its OpenAPI document (issuer/web/openapi.json).

schemathesis reads the document and, with hypothesis, generates requests for every
operation: schema-valid ones, invalid ones, and a deterministic "coverage" set (boundary
values, each field missing or of the wrong type, undeclared methods and content types). Each
request goes over a real loopback socket to the test app (served by ``ServerThread``, talking
to the loopback WeChat emulator), and each response is checked against the document and SPEC
§2 and §10: a documented status code, content type, body schema and headers
(``WWW-Authenticate`` on 401, ``Retry-After`` where documented); ``405`` with ``Allow`` for an
undeclared method; a protected operation refusing the request without its token; every 4xx
an OAuth error object (RFC 6749 §5.2, :func:`oauth_error_shape`); no secret echoed
(:meth:`FuzzTarget.secrets_kept`); and no 5xx, except the upstream errors of SPEC §2 when
WeChat was made to fail.

Random input alone stops at the front door: a random string is never a live ``wx.login``
code, refresh token or access token. So the fuzzing phase offers, beside each generated body
and header set, variants with a :class:`Real` placeholder where a credential goes, and the
test swaps each placeholder for a fresh real value just before sending (codes minted by the
emulator, refresh tokens of real logins, a live Bearer token, ``encryptedData`` made with the
user's current ``session_key``) while everything else in the request stays as generated.
Operations that call WeChat also draw a WeChat misbehaviour (:data:`WECHAT_FAULTS`) or none.
The coverage phase gets a live Bearer token on protected operations, except in the cases
that probe the ``Authorization`` header itself, so that its body probes reach the body.

Reproducible and bounded: generation is derandomized (every run and CI send the same
requests), no example database is kept, hypothesis keeps its caches out of the checkout, and
``MAX_EXAMPLES`` per operation keeps the module near a minute on two cores. The fuzzer's
findings are also pinned as plain requests at the end of the module.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from flask import Flask
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image
from schemathesis.checks import not_a_server_error

from issuer.wechat.emulator import Fault, WeChatEmulator
from tests.conftest import APPID, SECRET, ServerThread

# Hypothesis caches Unicode tables and source constants under its home directory, by default
# .hypothesis in the working directory, that is the checkout. Schemathesis builds its coverage
# cases while pytest collects this module, so the directory is chosen here, at import.
if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "issuer-tests-hypothesis")

DOC: dict[str, Any] = json.loads(
    resources.files("issuer.web").joinpath("openapi.json").read_bytes()
)

# Random examples per operation (the fuzzing phase); the coverage phase adds its own
# deterministic cases, some 10 to 60 per operation.
MAX_EXAMPLES = 100

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all"},  # schema-valid and invalid input alike
        # What SPEC §2 and the document promise, and nothing more: the document cannot say
        # which appid is configured or which code is live, so "schema-valid input is
        # accepted" (positive_data_acceptance) is not a promise it makes.
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_headers_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            "unsupported_method": {"enabled": True},
            "allow_header_conformance": {"enabled": True},
            "ignored_auth": {"enabled": True},
            "missing_required_header": {"enabled": True},
        },
        # The document has no examples, and pytest tests run no stateful phase.
        "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_dict(DOC, config=CONFIG)


# -- real values past the front door


class Real(enum.StrEnum):
    """Placeholders the hooks put where a credential goes; :meth:`FuzzTarget.fill` swaps
    each for a fresh real value before the request is sent."""

    LOGIN_CODE = "<real wx.login code>"
    REFRESH_TOKEN = "<real refresh token>"
    ROTATED_REFRESH_TOKEN = "<real refresh token, rotated once>"
    ACCESS_TOKEN = "<real access token>"
    SESSION_ACCESS_TOKEN = "<real access token of a fresh session>"
    ENCRYPTED_DATA = "<real encryptedData>"
    IV = "<real iv>"
    RAW_DATA = "<real rawData>"
    SIGNATURE = "<real signature>"
    PHONE_ENCRYPTED_DATA = "<real encryptedData of a phone number>"
    PHONE_IV = "<real iv of a phone number>"
    PHONE_CODE = "<real phone-number button code>"


PLACEHOLDERS = frozenset(Real)
# The placeholders for values no response may echo.
CREDENTIALS = frozenset(
    {
        Real.LOGIN_CODE,
        Real.REFRESH_TOKEN,
        Real.ROTATED_REFRESH_TOKEN,
        Real.ACCESS_TOKEN,
        Real.SESSION_ACCESS_TOKEN,
        Real.PHONE_CODE,
    }
)

# The web client the fuzzed app has (web login), and a well-formed PKCE challenge.
FUZZ_WEB_CLIENT = "fuzz-pc"
FUZZ_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
# A field that takes any body past the 16 KiB limit (413).
OVERSIZED = {"padding": "x" * 16 * 1024}
# Per operation, the variants of a generated body: each is laid over the body, whose other
# fields stay as generated.
BODY_VARIANTS: dict[str, list[dict[str, str]]] = {
    "POST /auth/login": [
        {"code": Real.LOGIN_CODE},
        {"code": Real.LOGIN_CODE, "appid": APPID},
        {"code": Real.LOGIN_CODE, **OVERSIZED},
    ],
    "POST /auth/refresh": [
        {"refresh_token": Real.REFRESH_TOKEN},
        {"refresh_token": Real.REFRESH_TOKEN, "grant_type": "refresh_token", "client_id": APPID},
        # The previous token again, within the reuse grace: answered with the successor.
        {"refresh_token": Real.ROTATED_REFRESH_TOKEN},
        {"refresh_token": Real.REFRESH_TOKEN, **OVERSIZED},
    ],
    "POST /auth/logout": [
        {"refresh_token": Real.REFRESH_TOKEN},
        {"refresh_token": Real.REFRESH_TOKEN, **OVERSIZED},
    ],
    "POST /wechat/decrypt": [
        {"encryptedData": Real.ENCRYPTED_DATA, "iv": Real.IV},
        {
            "encrypted_data": Real.ENCRYPTED_DATA,
            "iv": Real.IV,
            "raw_data": Real.RAW_DATA,
            "signature": Real.SIGNATURE,
        },
        {"encryptedData": Real.PHONE_ENCRYPTED_DATA, "iv": Real.PHONE_IV},
        {"encryptedData": Real.ENCRYPTED_DATA, "iv": Real.IV, **OVERSIZED},
    ],
    "PATCH /me": [
        {"nickname": "小明 👨\u200d👩\u200d👧"},
        {"avatar_url": "https://thirdwx.qlogo.cn/mmopen/vi_32/x/132"},
        {"nickname": "x", **OVERSIZED},
    ],
    "POST /wechat/phone": [
        {"code": Real.PHONE_CODE},
        {"code": Real.PHONE_CODE, **OVERSIZED},
    ],
    # Web login: a configured web client, and refresh through the token endpoint.
    "POST /auth/scan": [
        {"client_id": FUZZ_WEB_CLIENT, "code_challenge": FUZZ_CHALLENGE},
        {"client_id": FUZZ_WEB_CLIENT, "code_challenge": FUZZ_CHALLENGE, **OVERSIZED},
    ],
    "POST /auth/token": [
        {"grant_type": "refresh_token", "refresh_token": Real.REFRESH_TOKEN},
        {"grant_type": "authorization_code", "client_id": FUZZ_WEB_CLIENT},
        {"grant_type": "refresh_token", "refresh_token": Real.REFRESH_TOKEN, **OVERSIZED},
    ],
}

# Operations a live Bearer token opens, and the placeholder for it.
BEARER: dict[str, Real] = {
    "GET /me": Real.ACCESS_TOKEN,
    "PATCH /me": Real.ACCESS_TOKEN,
    "PUT /me/avatar": Real.ACCESS_TOKEN,
    "POST /me/avatar": Real.ACCESS_TOKEN,
    # Deleting the account ends every session of the user: a fresh user each time.
    "DELETE /me": Real.SESSION_ACCESS_TOKEN,
    "GET /wechat/session": Real.ACCESS_TOKEN,
    "POST /wechat/decrypt": Real.ACCESS_TOKEN,
    "POST /wechat/phone": Real.ACCESS_TOKEN,
    # Logout ends the token's session, so each use gets a session of its own.
    "POST /auth/logout": Real.SESSION_ACCESS_TOKEN,
    # The phone's half of a PC scan login.
    "POST /auth/scan/{ticket}/scanned": Real.ACCESS_TOKEN,
    "POST /auth/scan/{ticket}/confirm": Real.ACCESS_TOKEN,
}


# Operations that call WeChat, and the API each calls.
WECHAT_API: dict[str, str] = {
    "POST /auth/login": "/sns/jscode2session",
    "POST /wechat/phone": "/wxa/business/getuserphonenumber",
    "GET /wechat/session": "/wxa/checksession",
}
# What WeChat may do instead of answering normally (SPEC §2, §6), by name: the emulator's
# fault and how many calls in a row it hits.
WECHAT_FAULTS: dict[str, tuple[Fault, int]] = {
    "invalid code": (Fault(errcode=40029), 1),
    "code used": (Fault(errcode=40163), 1),
    "high-risk user": (Fault(errcode=40226), 1),
    "rate limited": (Fault(errcode=45011), 1),
    "credentials rejected": (Fault(errcode=40013), 1),
    "server token rejected": (Fault(errcode=40001), 1),
    "signature invalid": (Fault(errcode=87009), 1),
    "unknown errcode": (Fault(errcode=99999), 1),
    "phone quota exhausted": (Fault(errcode=1400001), 1),
    "daily quota exhausted": (Fault(errcode=45009), 1),
    "code of another user": (Fault(errcode=40003), 1),
    "busy once": (Fault(errcode=-1), 1),
    "busy twice": (Fault(errcode=-1), 2),
    "HTTP 502": (Fault(status=502), 1),
    "not JSON": (Fault(body='{"errcode": '), 1),
}
# A pseudo-header the hooks add to choose a WeChat fault for the request, and that
# FuzzTarget.fill removes before the request is sent.
WECHAT_FAULT = "wechat-fault"


def label_of(context: schemathesis.HookContext) -> str:
    return context.operation.label if context.operation is not None else ""


def avatar_images() -> list[bytes]:
    """Real images for ``PUT /me/avatar``: random bytes are never one."""
    images = []
    for image_format, mode in (("PNG", "RGBA"), ("JPEG", "RGB"), ("GIF", "P"), ("WEBP", "RGB")):
        out = io.BytesIO()
        Image.new(mode, (900, 300)).save(out, image_format)
        images.append(out.getvalue())
    return images


AVATARS = avatar_images()


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """The generated body, or (an object) the body with one variant's real fields; for the
    avatar upload, also a real image (raw, or as the multipart ``file``)."""
    if label_of(context) in ("PUT /me/avatar", "POST /me/avatar"):
        real = [{**body, "file": image} for image in AVATARS] if isinstance(body, dict) else AVATARS
        return st.one_of(st.just(body), st.sampled_from(real))
    variants = BODY_VARIANTS.get(label_of(context), [])
    if not variants or not isinstance(body, dict):
        return st.just(body)
    # Half the time as generated, half the time with real values.
    return st.one_of(st.just(body), st.sampled_from([{**body, **item} for item in variants]))


@schema.hook
def flatmap_headers(
    context: schemathesis.HookContext, headers: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """The generated headers, or them with a real Bearer token; and, for an operation that
    calls WeChat, a WeChat fault for the request, or none."""
    label = label_of(context)
    strategy: st.SearchStrategy[dict[str, Any] | None] = st.just(headers)
    token = BEARER.get(label)
    if token is not None:
        real = {**(headers or {}), "Authorization": f"Bearer {token}"}
        strategy = st.one_of(strategy, st.just(real))
    if label in WECHAT_API:
        strategy = strategy.flatmap(
            lambda drawn: st.one_of(
                st.just(drawn),
                st.sampled_from([{**(drawn or {}), WECHAT_FAULT: name} for name in WECHAT_FAULTS]),
            )
        )
    return strategy


class FuzzTarget:
    """The live server, and the real credentials the placeholders stand for.

    One user stays logged in for the whole operation (its session is never ended here), so
    its access token and the ``encryptedData`` made with its ``session_key`` stay good.
    """

    user = "fuzz"

    def __init__(self, url: str, wechat: WeChatEmulator) -> None:
        self.url = url
        self.wechat = wechat
        self.http = requests.Session()
        self.access_token = self.login(self.user)["access_token"]
        self.secrets: list[str] = []
        self.fault: str | None = None  # the WeChat fault arranged for the current request

    def login(self, user: str | None = None) -> dict[str, Any]:
        """A fresh login of ``user`` (a new random user when None): the token pair."""
        code = self.wechat.mint_code(APPID, user)
        response = self.http.post(f"{self.url}/auth/login", json={"code": code}, timeout=10)
        assert response.status_code == 200, response.text
        pair: dict[str, Any] = response.json()
        return pair

    def rotated_refresh_token(self) -> str:
        """A refresh token that has just been rotated: its successor is current."""
        token: str = self.login()["refresh_token"]
        response = self.http.post(
            f"{self.url}/auth/refresh", json={"refresh_token": token}, timeout=10
        )
        assert response.status_code == 200, response.text
        return token

    def user_data(self, *, phone: bool, values: dict[Real, str]) -> None:
        data = self.wechat.user_data(APPID, self.user, phone=phone)
        if phone:
            values[Real.PHONE_ENCRYPTED_DATA] = data["encryptedData"]
            values[Real.PHONE_IV] = data["iv"]
        else:
            values[Real.ENCRYPTED_DATA] = data["encryptedData"]
            values[Real.IV] = data["iv"]
            values[Real.RAW_DATA] = data["rawData"]
            values[Real.SIGNATURE] = data["signature"]

    def real(self, placeholder: Real, values: dict[Real, str]) -> str:
        """A fresh value for ``placeholder``; ``values`` holds those of the request so far,
        so that the fields of one request agree (an ``iv`` with its ``encryptedData``)."""
        makers: dict[Real, Callable[[], str]] = {
            Real.LOGIN_CODE: lambda: self.wechat.mint_code(APPID),
            Real.REFRESH_TOKEN: lambda: str(self.login()["refresh_token"]),
            Real.ROTATED_REFRESH_TOKEN: self.rotated_refresh_token,
            Real.ACCESS_TOKEN: lambda: self.access_token,
            Real.SESSION_ACCESS_TOKEN: lambda: str(self.login()["access_token"]),
            Real.PHONE_CODE: lambda: self.wechat.mint_phone_code(APPID, self.user),
        }
        if placeholder not in values:
            if placeholder in makers:
                values[placeholder] = makers[placeholder]()
            else:
                phone = placeholder in (Real.PHONE_ENCRYPTED_DATA, Real.PHONE_IV)
                self.user_data(phone=phone, values=values)
        return values[placeholder]

    def fill(self, case: schemathesis.Case) -> dict[str, str]:
        """Swap the placeholders in ``case`` for real values, and arrange the WeChat fault
        it names (until :meth:`settle`).

        :returns: headers to send with the case. A real Bearer token travels as an explicit
            header, so that schemathesis knows it for a credential: ``ignored_auth`` then
            checks that the operation refuses the same request without it.
        """
        values: dict[Real, str] = {}
        if isinstance(case.body, dict):
            for name, value in case.body.items():
                if isinstance(value, str) and value in PLACEHOLDERS:
                    case.body[name] = self.real(Real(value), values)
        headers = case.headers if case.headers is not None else {}
        fault = self.fault = headers.pop(WECHAT_FAULT, None)
        if fault is not None:
            misbehaviour, times = WECHAT_FAULTS[fault]
            path = WECHAT_API[case.operation.label]
            self.wechat.inject(dataclasses.replace(misbehaviour, path=path), times)
        explicit: dict[str, str] = {}
        token = BEARER.get(case.operation.label)
        scheme, _, credential = str(headers.get("Authorization", "")).partition(" ")
        if credential in PLACEHOLDERS:
            del headers["Authorization"]
            explicit["Authorization"] = f"{scheme} {self.real(Real(credential), values)}"
        elif token is not None and probes_past_the_token(case):
            explicit["Authorization"] = f"Bearer {self.real(token, values)}"
        self.secrets = [SECRET, self.session_key()] + [
            value for placeholder, value in values.items() if placeholder in CREDENTIALS
        ]
        return explicit

    def settle(self) -> None:
        """Forget a WeChat fault the request did not reach, so that it cannot hit the next."""
        self.wechat.clear_faults()

    def session_key(self) -> str:
        openid, _ = self.wechat.identity(APPID, self.user)
        key = self.wechat.session_key(APPID, openid)
        assert key is not None
        return key

    def upstream_errors(
        self, ctx: Any, response: schemathesis.Response, case: schemathesis.Case
    ) -> None:
        """With WeChat made to misbehave, a 5xx may only be one of SPEC §2's upstream
        errors: 502 ``upstream_misconfigured``, 503 ``temporarily_unavailable`` or 504
        ``upstream_timeout``; never a 500."""
        status = response.status_code
        assert status < 500 or status in (502, 503, 504), f"{status} when WeChat: {self.fault}"

    def secrets_kept(
        self, ctx: Any, response: schemathesis.Response, case: schemathesis.Case
    ) -> None:
        """SPEC §10: no response carries the app secret, the user's ``session_key``, or a
        code or token the request sent."""
        headers = [value for values in response.headers.values() for value in values]
        for secret in self.secrets:
            assert secret.encode() not in response.content, "a secret in the response body"
            assert not any(secret in value for value in headers), "a secret in a header"


def probes_past_the_token(case: schemathesis.Case) -> bool:
    """Whether ``case`` is a coverage-phase probe of something other than the Authorization
    header: with a live token it gets past the front door to what it probes."""
    meta = case.meta
    return (
        meta is not None
        and meta.phase.name == "coverage"
        and getattr(meta.phase.data, "parameter", None) != "Authorization"
    )


@pytest.fixture
def fuzz_target(app_factory: Callable[..., Flask], wechat: WeChatEmulator) -> Iterator[FuzzTarget]:
    """The test app with every optional route on, on a loopback port; a fresh database for
    each operation."""
    # A generous WeChat timeout: no fault here delays WeChat, but a loaded machine may, and
    # a timeout is not what this test is about.
    web_client = {"id": FUZZ_WEB_CLIENT, "kind": "web", "app": APPID, "page": "pages/scan/index"}
    server = ServerThread(app_factory(metrics=True, wechat_timeout=10, clients=[web_client]))
    target = FuzzTarget(server.url, wechat)
    yield target
    target.http.close()
    server.stop()


# -- checks


def oauth_error_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """SPEC §2 / RFC 6749 §5.2: every 4xx is a JSON object with a string ``error`` and, when
    present, a string ``error_description``."""
    status = response.status_code
    if not 400 <= status < 500:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{status}: the body is not JSON") from None
    assert isinstance(body, dict), f"{status}: the body is not a JSON object"
    assert isinstance(body.get("error"), str), f"{status}: no string `error`"
    description = body.get("error_description", "")
    assert isinstance(description, str), f"{status}: `error_description` is not a string"


# -- the fuzz test


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    # The same examples on every run: a failure reproduces, CI cannot flake.
    derandomize=True,
    database=None,
    # A live server answers in its own time; slowness is not what is under test.
    deadline=None,
    suppress_health_check=[
        # The server fixture is deliberately shared by every example of an operation: it
        # keeps its state between requests, as a real server does.
        HealthCheck.function_scoped_fixture,
        # Generating requests may be slow on a loaded machine; its speed is not under test.
        HealthCheck.too_slow,
    ],
)
def test_live_server_keeps_its_document(case: schemathesis.Case, fuzz_target: FuzzTarget) -> None:
    headers = fuzz_target.fill(case)
    checks: list[Callable[..., None]] = [oauth_error_shape, fuzz_target.secrets_kept]
    if fuzz_target.fault is not None:
        # WeChat misbehaves on purpose: the upstream 5xx of SPEC §2 are the right answers.
        checks.append(fuzz_target.upstream_errors)
    try:
        case.call_and_validate(
            base_url=fuzz_target.url,
            session=fuzz_target.http,
            headers=headers,
            additional_checks=checks,
            excluded_checks=[not_a_server_error] if fuzz_target.fault is not None else None,
        )
    finally:
        fuzz_target.settle()


# -- what the fuzzer found, pinned
#
# Each of these was once a failing example. What the fuzzer draws changes whenever the
# document or the source it takes constants from changes, so they are kept as plain requests.


def test_a_signature_that_is_not_ascii_is_a_mismatch_not_a_crash(
    fuzz_target: FuzzTarget, wechat: WeChatEmulator
) -> None:
    data = wechat.user_data(APPID, fuzz_target.user)
    response = fuzz_target.http.post(
        f"{fuzz_target.url}/wechat/decrypt",
        json={**data, "signature": "\u00e9" * 40},
        headers={"Authorization": f"Bearer {fuzz_target.access_token}"},
        timeout=10,
    )
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "session_key_mismatch"


@pytest.mark.parametrize(
    ("method", "path", "api"),
    [
        ("POST", "/wechat/phone", "/wxa/business/getuserphonenumber"),
        ("GET", "/wechat/session", "/wxa/checksession"),
    ],
)
def test_wechat_refusing_a_high_risk_user_is_a_documented_403(
    fuzz_target: FuzzTarget, wechat: WeChatEmulator, method: str, path: str, api: str
) -> None:
    body = {"code": wechat.mint_phone_code(APPID, fuzz_target.user)} if method == "POST" else None
    wechat.inject(Fault(errcode=40226, path=api))
    response = fuzz_target.http.request(
        method,
        f"{fuzz_target.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {fuzz_target.access_token}"},
        timeout=10,
    )
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "access_denied"
    assert "403" in DOC["paths"][path][method.lower()]["responses"]
