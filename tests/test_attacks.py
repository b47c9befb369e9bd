"""Forged access tokens, each presented to issuer's ``/me`` and to the downstream helper.

Every forgery here starts from a real login token and issuer's real keys (the strongest
position an attacker can be in short of holding the private key: they know every claim, the
``kid`` and the public key), or is signed with the real private key to check that claims of
the wrong JSON type are refused even under a valid signature. Each must be refused in both
places: ``/me`` answers 401 ``invalid_token`` with ``WWW-Authenticate: Bearer
error="invalid_token"``, and :class:`issuer.verify.AccessTokenVerifier` (pointed at the JWKS
of the same app, served on a loopback port) raises :class:`InvalidAccessToken`.

What tests/test_access_tokens.py and tests/test_verify.py already cover is not repeated here
(plain ``alg: none`` without a signature, HS256 keyed with the PEM, unknown ``crit``, ``jku``/
``jwk``/``x5u`` headers, missing claims ...). This module adds: ``alg`` spelled in other
cases and with a signature kept; HS256 keyed with the DER and JWK JSON of the public key; the
ES256 signature relabelled as other algorithms; zero and out-of-range ECDSA signatures and a
DER-encoded signature; hostile ``kid`` values; claims of the wrong JSON type one by one;
near-miss ``iss`` values; more ``crit`` shapes; a real refresh token, an empty and a 20 KB
token; and a burst of 100 unknown kids at the helper.

Decided from RFC 7519 §2 and SPEC §3 where the code leaves room: ``exp``/``iat`` are
NumericDates, "a JSON numeric value ... non-integer values can be represented", so a float
``exp``/``iat`` is valid and accepted; a JSON *string* holding digits, or a boolean, is not a
NumericDate and must be refused.

The app is built once per module (the same settings as conftest's ``app_factory``) so that
the ~120 cases run in a few seconds rather than building an app and a live server each.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from flask import Flask
from flask.testing import FlaskClient

from issuer import create_app
from issuer.verify import AccessTokenVerifier, InvalidAccessToken
from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, SECRET, ServerThread, all_at_once

ISSUER = "https://issuer.test"
# The order of the P-256 group: r and s must lie in [1, n - 1].
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
DROP = object()  # a header member or claim to leave out


def b64(data: dict[str, Any] | list[Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass
class Arena:
    """One issuer app, a user logged in to it, and a helper verifying against its JWKS."""

    app: Flask
    client: FlaskClient
    url: str
    login: dict[str, Any]
    verifier: AccessTokenVerifier

    @property
    def token(self) -> str:
        token: str = self.login["access_token"]
        return token

    @property
    def key(self) -> Any:
        return self.app.extensions["issuer"].keys().active

    @property
    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = json.loads(unb64(self.token.split(".")[0]))
        return header

    @property
    def claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = json.loads(unb64(self.token.split(".")[1]))
        return claims

    @property
    def signature(self) -> bytes:
        return unb64(self.token.split(".")[2])

    def jwks_url(self) -> str:
        return self.url + "/.well-known/jwks.json"


@pytest.fixture(scope="module")
def arena(
    emulator_server: tuple[WeChatEmulator, str],
    session_keys_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Arena]:
    emulator, wechat_url = emulator_server
    emulator.clear_faults()
    folder = tmp_path_factory.mktemp("attacks")
    app = create_app(
        {
            "env": "production",
            "url": ISSUER,
            "database_url": f"sqlite:///{folder / 'issuer.db'}",
            "keys_dir": str(session_keys_dir),
            "wechat_api_base": wechat_url,
            "wechat_timeout": 2,
            "apps": [{"appid": APPID, "secret": SECRET}],
            "ratelimit_login": "10000/minute",
            "ratelimit_refresh": "10000/minute",
        },
        environ={},
    )
    app.config["TESTING"] = True
    client = app.test_client()
    response = client.post("/auth/login", json={"code": emulator.mint_code(APPID, "mallory")})
    assert response.status_code == 200, response.get_json()
    server = ServerThread(app)
    verifier = AccessTokenVerifier(ISSUER, jwks_url=server.url + "/.well-known/jwks.json")
    yield Arena(app, client, server.url, response.get_json(), verifier)
    server.stop()


# -- building forgeries


def es256(signing_input: str, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """A raw r || s ES256 signature (RFC 7518 §3.4)."""
    der = private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def resign(a: Arena, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """The login token with these header members and claims changed, signed by issuer's real
    key (so only the change can be why it is refused). DROP leaves a member out."""
    head = {**a.header, **(header or {})}
    body = {**a.claims, **claims}
    head = {name: value for name, value in head.items() if value is not DROP}
    body = {name: value for name, value in body.items() if value is not DROP}
    signing_input = f"{b64(head)}.{b64(body)}"
    return f"{signing_input}.{b64(es256(signing_input, a.key.private_key))}"


def relabel(a: Arena, signature: bytes | str | None = None, **header: Any) -> str:
    """The login token's payload under a changed header, with ``signature`` (the original
    one when None; a str is put in verbatim)."""
    head = {**a.header, **header}
    head = {name: value for name, value in head.items() if value is not DROP}
    _, payload, original = a.token.split(".")
    if signature is None:
        tail = original
    elif isinstance(signature, str):
        tail = signature
    else:
        tail = b64(signature)
    return f"{b64(head)}.{payload}.{tail}"


def with_signature(a: Arena, signature: bytes) -> str:
    head, payload, _ = a.token.split(".")
    return f"{head}.{payload}.{b64(signature)}"


def hs256(a: Arena, secret: bytes) -> str:
    """Algorithm confusion: the payload MACed with ``secret`` under ``alg: HS256``."""
    head = b64({**a.header, "alg": "HS256"})
    signing_input = f"{head}.{a.token.split('.')[1]}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def public_der(a: Arena) -> bytes:
    der: bytes = a.key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def public_point(a: Arena) -> bytes:
    point: bytes = a.key.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point


def published_jwk(a: Arena) -> dict[str, Any]:
    """The active key's entry exactly as the live JWKS serves it."""
    entries = a.client.get("/.well-known/jwks.json").get_json()["keys"]
    entry: dict[str, Any] = next(e for e in entries if e["kid"] == a.key.kid)
    return entry


def der_of(signature: bytes) -> bytes:
    """A raw r || s signature re-encoded as ASN.1 DER (what JOSE must not accept)."""
    return encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )


Forgery = Callable[[Arena], str]
CASES: list[Any] = []


def case(name: str, forgery: Forgery) -> None:
    CASES.append(pytest.param(forgery, id=name))


# alg none, in any spelling, with or without a signature (RFC 8725 §3.1)
for _alg in ("none", "NONE", "nOnE", "None"):
    if _alg != "none":  # plain "none" with no signature is in test_access_tokens
        case(f"alg {_alg}, empty signature", lambda a, alg=_alg: relabel(a, "", alg=alg))
    case(f"alg {_alg}, original signature", lambda a, alg=_alg: relabel(a, alg=alg))
    case(
        f"alg {_alg}, random signature",
        lambda a, alg=_alg: relabel(a, secrets.token_bytes(64), alg=alg),
    )
case("alg missing, original signature", lambda a: relabel(a, alg=DROP))
case("alg empty, original signature", lambda a: relabel(a, alg=""))
case("alg as a list", lambda a: relabel(a, alg=["ES256"]))
case("alg null", lambda a: relabel(a, alg=None))

# HS256 keyed with what a verifier holds of the public key (RFC 8725 §2.1)
case("HS256 keyed with the public key DER", lambda a: hs256(a, public_der(a)))
case("HS256 keyed with the public key point", lambda a: hs256(a, public_point(a)))
case("HS256 keyed with the JWK JSON", lambda a: hs256(a, json.dumps(a.key.jwk).encode()))
case(
    "HS256 keyed with the compact sorted JWK JSON",
    lambda a: hs256(a, json.dumps(a.key.jwk, separators=(",", ":"), sort_keys=True).encode()),
)
case(
    "HS256 keyed with the published JWKS entry",
    lambda a: hs256(a, json.dumps(published_jwk(a), separators=(",", ":")).encode()),
)
case("HS256 keyed with the kid", lambda a: hs256(a, a.key.kid.encode()))
case("HS256 keyed with nothing", lambda a: hs256(a, b""))

# the real ES256 signature kept under another alg label
for _alg in ("ES384", "ES512", "RS256", "PS256", "EdDSA", "HS256", "ES256K", "es256"):
    case(f"relabelled as {_alg}", lambda a, alg=_alg: relabel(a, alg=alg))

# ECDSA signatures out of range ("psychic signatures", CVE-2022-21449) and in DER
case("ECDSA r=s=0, raw 64 zero bytes", lambda a: with_signature(a, bytes(64)))
case("ECDSA r=s=0, DER", lambda a: with_signature(a, encode_dss_signature(0, 0)))
case(
    "ECDSA r=s=n",
    lambda a: with_signature(a, P256_ORDER.to_bytes(32, "big") * 2),
)
case(
    "ECDSA r=0, s kept",
    lambda a: with_signature(a, bytes(32) + a.signature[32:]),
)
case(
    "ECDSA r kept, s=0",
    lambda a: with_signature(a, a.signature[:32] + bytes(32)),
)
case("valid signature re-encoded as DER", lambda a: with_signature(a, der_of(a.signature)))
case("valid signature truncated to 63 bytes", lambda a: with_signature(a, a.signature[:63]))
case(
    "valid signature with a byte appended",
    lambda a: with_signature(a, a.signature + b"\x00"),
)
case(
    "valid signature with r and s swapped",
    lambda a: with_signature(a, a.signature[32:] + a.signature[:32]),
)

# hostile kids, signed by the real key so the kid is all that is wrong
HOSTILE_KIDS: dict[str, Any] = {
    "kid path traversal": "../../../../etc/passwd",
    "kid SQL injection": "' OR '1'='1",
    "kid shell substitution": "$(touch /tmp/pwned)",
    "kid shell separator": "; rm -rf /",
    "kid 10 KB": "k" * 10 * 1024,
    "kid 1000 chars": "k" * 1000,
    "kid empty": "",
    "kid number": 1,
    "kid list": ["x"],
    "kid null": None,
    "kid object": {"kid": "x"},
    "kid NUL byte": "\x00",
}
for _name, _kid in HOSTILE_KIDS.items():
    case(_name, lambda a, kid=_kid: resign(a, {"kid": kid}))
case("kid real with a trailing space", lambda a: resign(a, {"kid": a.key.kid + " "}))
case("kid real with a trailing NUL", lambda a: resign(a, {"kid": a.key.kid + "\x00"}))
case("kid real in upper case", lambda a: resign(a, {"kid": a.key.kid.upper()}))
case("kid real as a list", lambda a: resign(a, {"kid": [a.key.kid]}))

# claims of the wrong JSON type, one at a time, under a valid signature
WRONG_TYPES: dict[str, dict[str, Callable[[dict[str, Any]], Any]]] = {
    "exp": {
        "numeric string": lambda c: str(c["exp"]),
        "numeric string with spaces": lambda c: f" {c['exp']} ",
        "list": lambda c: [c["exp"]],
        "object": lambda c: {"exp": c["exp"]},
        "true": lambda c: True,
        "null": lambda c: None,
    },
    "iat": {
        "numeric string": lambda c: str(c["iat"]),
        "list": lambda c: [c["iat"]],
        "object": lambda c: {"iat": c["iat"]},
        "true": lambda c: True,
        "false": lambda c: False,
        "null": lambda c: None,
    },
    "aud": {
        "number": lambda c: 1,
        "object": lambda c: {"aud": c["aud"]},
        "null": lambda c: None,
        "empty string": lambda c: "",
    },
    "iss": {
        "list": lambda c: [c["iss"]],
        "number": lambda c: 1,
        "null": lambda c: None,
    },
}
for _claim in ("sub", "client_id", "jti", "sid", "openid"):
    WRONG_TYPES[_claim] = {
        "number": lambda c: 42,
        "list": lambda c, n=_claim: [c[n]],
        "null": lambda c: None,
        "object": lambda c, n=_claim: {n: c[n]},
        "true": lambda c: True,
        "empty string": lambda c: "",
    }
WRONG_TYPES["unionid"] = {"number": lambda c: 42, "list": lambda c: ["u"]}
for _claim, _variants in WRONG_TYPES.items():
    for _kind, _value in _variants.items():
        case(
            f"{_claim} {_kind}",
            lambda a, claim=_claim, value=_value: resign(a, **{claim: value(a.claims)}),
        )

# near misses of iss (compared byte for byte, SPEC §3; PyJWT 2.10.0 once matched substrings)
for _name, _iss in {
    "iss with a suffix": ISSUER + ".evil.test",
    "iss with a path": ISSUER + "/evil",
    "iss with a prefix": "x" + ISSUER,
    "iss with a leading space": " " + ISSUER,
    "iss with a trailing space": ISSUER + " ",
    "iss with a trailing NUL": ISSUER + "\x00",
    "iss with a trailing slash": ISSUER + "/",
    "iss with http": ISSUER.replace("https:", "http:"),
    "iss in upper case": ISSUER.upper(),
    "iss in mixed case": "http://Issuer.Test",
    "iss truncated": ISSUER[:-1],
    "iss host only": "issuer.test",
    "iss scheme only": "http://",
    "iss empty": "",
    "iss with a port": "https://issuer.test:80",
}.items():
    case(_name, lambda a, iss=_iss: resign(a, iss=iss))

# crit shapes (RFC 7515 §4.1.11); a plain unknown extension is in test_access_tokens
case("crit b64 with b64 false", lambda a: resign(a, {"crit": ["b64"], "b64": False}))
case("crit naming alg", lambda a: resign(a, {"crit": ["alg"]}))
case("crit empty list", lambda a: resign(a, {"crit": []}))
case("crit not a list", lambda a: resign(a, {"crit": "exp-ext", "exp-ext": 1}))
case("crit of a number", lambda a: resign(a, {"crit": [1]}))
case(
    "crit unknown beside b64",
    lambda a: resign(a, {"crit": ["b64", "exp-ext"], "b64": True, "exp-ext": 1}),
)
# Understood by the JWT library (RFC 7797), not by issuer, which uses no extension at all.
case("crit b64 with b64 true", lambda a: resign(a, {"crit": ["b64"], "b64": True}))
case("crit naming kid", lambda a: resign(a, {"crit": ["kid"]}))
case("x5c header", lambda a: resign(a, {"x5c": ["MIIB"]}))
case("typ as a list", lambda a: resign(a, {"typ": ["at+jwt"]}))

# not an access token at all, or not one of a sane size
case("a real refresh token", lambda a: a.login["refresh_token"])
case("empty", lambda a: "")
case("20 KB, signed by the real key", lambda a: resign(a, padding="x" * 20 * 1024))
case("20 KB of dots and letters", lambda a: "a." * 10 * 1024)
case("header and payload swapped", lambda a: ".".join(a.token.split(".")[i] for i in (1, 0, 2)))
case("four parts", lambda a: a.token + ".AAAA")
case("whitespace inside", lambda a: a.token.replace(".", ".\t", 1))


def assert_refused_at_me(a: Arena, token: str) -> None:
    response = a.client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.get_json()
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == "invalid_token"
    assert set(body) == {"error", "error_description"}
    if len(token) > 8:
        assert token not in response.get_data(as_text=True)


def assert_refused_by_helper(a: Arena, token: str) -> None:
    with pytest.raises(InvalidAccessToken) as refused:
        a.verifier.verify(token)
    if len(token) > 8:
        assert token not in str(refused.value)


def test_the_genuine_token_passes_both(arena: Arena) -> None:
    """The control: the setup works, so every refusal below is the forgery's doing."""
    assert (
        arena.client.get("/me", headers={"Authorization": f"Bearer {arena.token}"}).status_code
        == 200
    )
    assert arena.verifier.verify(arena.token)["sub"] == arena.login["user_id"]
    # Re-signing with no change reproduces a valid token: resign() itself is sound.
    again = resign(arena)
    assert arena.client.get("/me", headers={"Authorization": f"Bearer {again}"}).status_code == 200
    assert arena.verifier.verify(again)["jti"] == arena.claims["jti"]


@pytest.mark.parametrize("forgery", CASES)
def test_forgery_is_refused_at_me_and_by_the_helper(arena: Arena, forgery: Forgery) -> None:
    token = forgery(arena)
    assert token != arena.token
    assert_refused_at_me(arena, token)
    assert_refused_by_helper(arena, token)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param(lambda c: {"exp": c["exp"] + 0.5}, id="exp float"),
        pytest.param(lambda c: {"iat": c["iat"] - 0.25}, id="iat float"),
        pytest.param(lambda c: {"exp": float(c["exp"]), "iat": float(c["iat"])}, id="both .0"),
    ],
)
def test_a_fractional_numeric_date_is_valid(arena: Arena, changes: Any) -> None:
    """RFC 7519 §2: a NumericDate may be non-integer. Issuer signs integers, but a float is
    not a type error and both verifiers agree on it."""
    token = resign(arena, **changes(arena.claims))
    response = arena.client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_json()
    assert arena.verifier.verify(token)["sub"] == arena.login["user_id"]


def test_an_expired_float_exp_is_expired(arena: Arena) -> None:
    now = time.time()
    token = resign(arena, iat=now - 1000.5, exp=now - 100.5)
    assert_refused_at_me(arena, token)
    with pytest.raises(InvalidAccessToken, match="expired"):
        arena.verifier.verify(token)


# -- unknown kids cannot turn the helper into a JWKS flood


def test_a_burst_of_100_unknown_kids_fetches_the_jwks_at_most_once_more(arena: Arena) -> None:
    verifier = AccessTokenVerifier(ISSUER, jwks_url=arena.jwks_url())
    assert verifier.verify(arena.token)
    assert verifier.jwks.fetches == 1
    hostile = [kid for kid in HOSTILE_KIDS.values() if isinstance(kid, str) and kid]
    kids = [hostile[i % len(hostile)] if i % 2 else secrets.token_urlsafe(12) for i in range(100)]
    # Signed by issuer's real key: only the kid is unknown.
    tokens = [resign(arena, {"kid": kid}, jti=secrets.token_urlsafe(16)) for kid in kids]
    outcomes = all_at_once([functools.partial(verifier.verify, token) for token in tokens])
    assert all(isinstance(outcome, InvalidAccessToken) for outcome in outcomes), outcomes
    assert verifier.jwks.fetches <= 2
    # A second burst right after changes nothing, and the real token still verifies from
    # the cache.
    for token in tokens[:20]:
        with pytest.raises(InvalidAccessToken):
            verifier.verify(token)
    assert verifier.verify(arena.token)
    assert verifier.jwks.fetches <= 2


def test_unknown_kids_at_me_do_not_reload_the_key_ring(arena: Arena) -> None:
    """Issuer's own side: an unknown kid costs one stat of the manifest, never a reload."""
    manager = arena.app.extensions["issuer"].keys
    loads = 0
    original = manager.directory.load

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        nonlocal loads
        loads += 1
        return original(*args, **kwargs)

    manager.directory.load = counting_load
    try:
        for _ in range(50):
            assert_refused_at_me(arena, resign(arena, {"kid": secrets.token_urlsafe(12)}))
    finally:
        del manager.directory.load
    assert loads == 0
