"""Access tokens: RFC 9068 shape, verification by JWKS, and everything /me must refuse."""

from __future__ import annotations

import base64
import json
import time
import tracemalloc

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import APPID


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_header_and_claims_follow_rfc9068(app, login, wechat):
    body = login("alice")
    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    ring = app.extensions["issuer"].keys()
    assert header == {"alg": "ES256", "kid": ring.active.kid, "typ": "at+jwt"}
    claims = jwt.decode(token, options={"verify_signature": False})
    openid, unionid = wechat.identity(APPID, "alice")
    assert set(claims) == {
        "iss", "sub", "aud", "client_id", "iat", "exp", "jti", "sid", "openid", "unionid",
    }  # fmt: skip
    assert claims["iss"] == "https://issuer.test"
    assert claims["aud"] == "https://issuer.test"
    assert claims["sub"] == body["user_id"]
    assert claims["sub"] != openid
    assert claims["client_id"] == APPID
    assert claims["openid"] == openid
    assert claims["unionid"] == unionid
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 5
    session_key = wechat.session_key(APPID, openid)
    assert session_key not in token
    assert session_key not in base64.urlsafe_b64decode(token.split(".")[1] + "==").decode()


def test_unionid_is_absent_when_unknown(client, wechat):
    code = wechat.mint_code(APPID, "bob", unionid=False)
    token = client.post("/auth/login", json={"code": code}).get_json()["access_token"]
    assert "unionid" not in jwt.decode(token, options={"verify_signature": False})


def test_jti_is_unique(login):
    tokens = [login("carol")["access_token"] for _ in range(5)]
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}
    assert len(jtis) == 5


def test_downstream_verifies_with_pyjwkclient_against_the_live_jwks(live_server, wechat):
    import requests

    code = wechat.mint_code(APPID, "dora")
    token = requests.post(live_server + "/auth/login", json={"code": code}, timeout=5).json()[
        "access_token"
    ]
    client = jwt.PyJWKClient(live_server + "/.well-known/jwks.json")
    key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience="https://issuer.test",
        issuer="https://issuer.test",
        options={"require": ["exp", "iat", "sub", "jti"]},
    )
    assert claims["client_id"] == APPID


@pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
def test_other_algorithms_sign_and_verify(app_factory, wechat, tmp_path, alg):
    app = app_factory(signing_alg=alg, keys_dir=str(tmp_path / alg))
    client = app.test_client()
    token = client.post("/auth/login", json={"code": wechat.mint_code(APPID, "erin")}).get_json()[
        "access_token"
    ]
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert client.get("/me", headers=bearer(token)).status_code == 200
    jwks = client.get("/.well-known/jwks.json").get_json()
    assert [key["alg"] for key in jwks["keys"]] == [alg]


# -- what /me refuses (RFC 8725 and RFC 9068 §4)


@pytest.fixture
def forge(app, login):
    """``forge(header_changes, claim_changes, key=None)``: a token signed with our real key."""
    body = login("mallory")
    ring = app.extensions["issuer"].keys()
    good = jwt.decode(body["access_token"], options={"verify_signature": False})

    def make(header=None, claims=None, drop=(), key=None, algorithm="ES256"):
        payload = {**good, **(claims or {})}
        for name in drop:
            payload.pop(name, None)
        headers = {"kid": ring.active.kid, "typ": "at+jwt", **(header or {})}
        return jwt.encode(payload, key or ring.active.private_key, algorithm, headers=headers)

    make.good = body["access_token"]
    make.ring = ring
    make.claims = good
    return make


def public_pem(ring) -> bytes:
    return ring.active.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def unsigned(header: dict, claims: dict, signature: str = "") -> str:
    return f"{b64(header)}.{b64(claims)}.{signature}"


def forged_cases(forge):
    ring, claims, good = forge.ring, forge.claims, forge.good
    head, body, sig = good.split(".")
    other_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    cases = {
        "tampered payload": f"{head}.{b64({**claims, 'sub': 'someone-else'})}.{sig}",
        "tampered signature": f"{head}.{body}.{sig[:-4]}AAAA",
        "empty signature": f"{head}.{body}.",
        "signed by another key": forge(key=other_key),
        "alg none": unsigned({"alg": "none", "typ": "at+jwt", "kid": ring.active.kid}, claims),
        "alg None": unsigned({"alg": "None", "typ": "at+jwt", "kid": ring.active.kid}, claims),
        "HS256 keyed with the public PEM": _hs256(claims, public_pem(ring), ring.active.kid),
        "HS256 keyed with the public JWK": _hs256(
            claims, json.dumps(ring.active.jwk).encode(), ring.active.kid
        ),
        "expired": forge(claims={"iat": now - 1000, "exp": now - 100}),
        "issued in the future": forge(claims={"iat": now + 600, "exp": now + 1500}),
        "wrong audience": forge(claims={"aud": "http://other.test"}),
        "audience list": forge(claims={"aud": ["https://issuer.test", "http://other.test"]}),
        "wrong issuer": forge(claims={"iss": "https://issuer.test/"}),
        "issuer other scheme": forge(claims={"iss": "http://issuer.test"}),
        "typ JWT": forge(header={"typ": "JWT"}),
        "typ missing": forge(header={"typ": None}),
        "unknown kid": forge(header={"kid": "no-such-key"}),
        "kid path traversal": forge(header={"kid": "../../etc/passwd"}),
        "kid missing": _without_kid(forge),
        "jku header": forge(header={"jku": "http://127.0.0.1:9/jwks.json"}),
        "x5u header": forge(header={"x5u": "http://127.0.0.1:9/cert.pem"}),
        "jwk header": forge(header={"jwk": {"kty": "EC"}}),
        "unknown crit": forge(header={"crit": ["exp-ext"], "exp-ext": 1}),
        # RFC 7515 §4.1.11: issuer understands no extension, so any crit is refused -- even
        # one naming b64 (RFC 7797), which the JWT library itself understands.
        "crit b64": _signed_as_written(
            {"alg": "ES256", "typ": "at+jwt", "kid": ring.active.kid, "crit": ["b64"], "b64": True},
            claims,
            ring.active.private_key,
        ),
        "crit empty": _signed_as_written(
            {"alg": "ES256", "typ": "at+jwt", "kid": ring.active.kid, "crit": []},
            claims,
            ring.active.private_key,
        ),
        "sub wrong type": forge(claims={"sub": 123}),
        "client_id wrong type": forge(claims={"client_id": ["x"]}),
        "sid of no session": forge(claims={"sid": "A" * 22}),
        "not a jwt": "not-a-jwt",
        "two parts": f"{head}.{body}",
    }
    for claim in ("iss", "sub", "aud", "exp", "iat", "jti", "client_id", "sid"):
        cases[f"{claim} missing"] = forge(drop=(claim,))
    return cases


def _hs256(claims, secret: bytes, kid: str) -> str:
    import hashlib
    import hmac

    header = b64({"alg": "HS256", "typ": "at+jwt", "kid": kid})
    signing_input = f"{header}.{b64(claims)}".encode()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64(signature)}"


def _signed_as_written(header, claims, key) -> str:
    """A JWS with exactly this header, signed ES256 (the JWT library would rewrite b64)."""
    signing_input = f"{b64(header)}.{b64(claims)}"
    algorithm = jwt.algorithms.get_default_algorithms()["ES256"]
    return f"{signing_input}.{b64(algorithm.sign(signing_input.encode(), key))}"


def _without_kid(forge) -> str:
    token = forge()
    header = jwt.get_unverified_header(token)
    del header["kid"]
    return jwt.encode(forge.claims, forge.ring.active.private_key, "ES256", headers=header)


def test_me_refuses_every_forged_token(client, forge):
    assert client.get("/me", headers=bearer(forge.good)).status_code == 200
    for name, token in forged_cases(forge).items():
        response = client.get("/me", headers=bearer(token))
        assert response.status_code == 401, name
        assert response.get_json()["error"] == "invalid_token", name
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"', name


@pytest.mark.parametrize("authorization", [None, "Basic dXNlcjpwYXNz", "Token abc", ""])
def test_missing_bearer_gets_a_bare_challenge(client, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.get("/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.get_json()["error"] == "invalid_token"


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer ", "Bearer a b"])
def test_malformed_bearer_is_invalid_token(client, authorization):
    response = client.get("/me", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_bearer_scheme_is_case_insensitive(client, login):
    token = login("olga")["access_token"]
    assert client.get("/me", headers={"Authorization": f"bearer {token}"}).status_code == 200


def test_me_shows_the_user(client, login, wechat):
    body = login("pia")
    response = client.get("/me", headers=bearer(body["access_token"]))
    assert response.headers["Cache-Control"] == "no-store"
    me = response.get_json()
    openid, unionid = wechat.identity(APPID, "pia")
    assert me["user_id"] == body["user_id"]
    assert me["appid"] == APPID
    assert me["openid"] == openid
    assert me["unionid"] == unionid
    assert time.strptime(me["created_at"], "%Y-%m-%dT%H:%M:%SZ")


def test_me_rejects_tokens_of_an_ended_session(client, login):
    body = login("quinn")
    client.post("/auth/logout", json={"refresh_token": body["refresh_token"]})
    response = client.get("/me", headers=bearer(body["access_token"]))
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_token"


# -- the cache of verified tokens


def test_a_token_seen_again_is_served_from_the_cache_of_verified_tokens(app, client, login):
    token = login("vera")["access_token"]
    cache = app.extensions["issuer"]._verified
    assert client.get("/me", headers=bearer(token)).status_code == 200
    assert token in cache
    assert client.get("/me", headers=bearer(token)).status_code == 200
    # A forgery never enters, however often it is presented.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(2):
        assert client.get("/me", headers=bearer(forged)).status_code == 401
    assert forged not in cache


def test_a_cached_token_of_a_revoked_key_is_refused(app_factory, tmp_path, wechat):
    from issuer import key_policy
    from issuer.keys import KeyDirectory

    app = app_factory(keys_dir=str(tmp_path / "keys"))
    client = app.test_client()
    manager = app.extensions["issuer"].keys
    manager.check_interval = 0
    code = wechat.mint_code(APPID, "wim")
    token = client.post("/auth/login", json={"code": code}).get_json()["access_token"]
    assert client.get("/me", headers=bearer(token)).status_code == 200  # now cached
    settings = app.extensions["issuer"].settings
    KeyDirectory(tmp_path / "keys").revoke(manager().active.kid, key_policy(settings))
    assert client.get("/me", headers=bearer(token)).status_code == 401


def test_cache_entries_expire_with_the_token_and_the_cache_is_bounded():
    from issuer.tokens import VerifiedTokenCache

    cache = VerifiedTokenCache(size=2)
    header = b64({"alg": "ES256", "kid": "k1", "typ": "at+jwt"})
    tokens = [f"{header}.{b64({'n': n})}.sig" for n in range(3)]
    for token in tokens:
        cache.put(token, {"exp": 1000})
    published = {"k1"}.__contains__
    assert cache.get(tokens[0], now=0, leeway=5, key_published=published) is None  # evicted
    assert cache.get(tokens[2], now=1005, leeway=5, key_published=published) == {"exp": 1000}
    assert cache.get(tokens[2], now=1005.5, leeway=5, key_published=published) is None
    assert cache.get(tokens[1], now=0, leeway=5, key_published=lambda kid: False) is None


def test_the_cache_keeps_a_digest_per_token_and_stays_under_two_megabytes():
    """A worker's cache must not grow into tens of MB: bounded entries, no whole tokens."""
    from issuer.tokens import VerifiedTokenCache

    header = b64({"alg": "ES256", "kid": "k" * 43, "typ": "at+jwt"})

    def verified(n):
        claims = {
            "iss": "https://issuer.test",
            "sub": f"usr_{n:022d}",
            "aud": "https://issuer.test",
            "client_id": APPID,
            "iat": 1_700_000_000 + n,
            "exp": 1_700_000_900 + n,
            "jti": f"{n:022d}",
            "sid": f"{n:022d}",
            "openid": f"o{n:027d}",
            "unionid": f"u{n:027d}",
        }
        # A token of issuer's length, and claims as fresh objects, as verification makes them.
        return f"{header}.{b64(claims)}.{'A' * 86}", json.loads(json.dumps(claims))

    cache = VerifiedTokenCache()
    tracemalloc.start()
    try:
        for n in range(2 * cache.size):
            cache.put(*verified(n))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(cache) == cache.size
    assert held < 2 * 1024 * 1024, f"{held / cache.size:.0f} bytes per entry"
    token, _ = verified(2 * cache.size - 1)
    assert token in cache
    assert verified(0)[0] not in cache  # the least recently used went first
