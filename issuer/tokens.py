"""Access tokens (RFC 9068 JWTs) and refresh tokens (opaque, HMAC-derived): make and check.

Nothing here does I/O or reads the clock: keys, settings and ``now`` are passed in.

Refresh token format, ``rt_`` + base64url of 52 bytes::

    sid (16 bytes) | counter (4 bytes, big-endian) | HMAC-SHA256(session secret, ...) (32 bytes)

The session stores its secret (encrypted at rest) and the counter of its current token. A
token is therefore *derived*, not stored: the successor of counter ``n`` is always the same
token ``n + 1``, so a retry inside the reuse grace gets the very successor the first request
got and the chain never forks (SPEC §3). The 256-bit MAC is the token's secret entropy.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

import issuer_verify
from issuer_verify import ACCESS_TOKEN_TYPE, VerificationKey, VerificationPolicy

from .errors import InvalidToken
from .keys.ring import SigningKey, b64url

REFRESH_PREFIX = "rt_"
SID_BYTES = 16
COUNTER_BYTES = 4
MAC_BYTES = 32
REFRESH_BYTES = SID_BYTES + COUNTER_BYTES + MAC_BYTES
SESSION_SECRET_BYTES = 32
MAC_CONTEXT = b"issuer refresh token v1\x00"


@dataclass(frozen=True)
class TokenPolicy:
    """What every access token says about its issuer, and how strictly it is checked."""

    issuer: str
    audience: str
    access_token_ttl: int
    leeway: int

    @functools.cached_property
    def verification(self) -> VerificationPolicy:
        """The checks of :func:`verify_access_token`: this issuer, this audience, this leeway,
        any algorithm issuer signs with (a retired key may predate an algorithm change)."""
        return VerificationPolicy(issuer=self.issuer, audience=self.audience, leeway=self.leeway)


def new_jti() -> str:
    return secrets.token_urlsafe(16)


def access_claims(
    policy: TokenPolicy,
    *,
    user_id: str,
    appid: str,
    openid: str,
    unionid: str | None,
    sid: str,
    now: float,
    jti: str,
) -> dict[str, Any]:
    """All claims of an access token (RFC 9068 §2.2), built in one place."""
    issued_at = int(now)
    claims: dict[str, Any] = {
        "iss": policy.issuer,
        "sub": user_id,
        "aud": policy.audience,
        "client_id": appid,
        "iat": issued_at,
        "exp": issued_at + policy.access_token_ttl,
        "jti": jti,
        "sid": sid,
        "openid": openid,
    }
    if unionid:
        claims["unionid"] = unionid
    return claims


def sign_access_token(claims: Mapping[str, Any], key: SigningKey) -> str:
    """A compact JWS with ``typ: at+jwt`` and the key's ``kid``."""
    return jwt.encode(
        dict(claims),
        key.private_key,
        algorithm=key.alg,
        headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE},
    )


def verify_access_token(
    token: str, key_for: Callable[[str], VerificationKey | None], policy: TokenPolicy
) -> dict[str, Any]:
    """Verify an access token as strictly as it was signed (RFC 8725, RFC 9068 §4), with the
    same code downstream services use (:func:`issuer_verify.verify_access_token`).

    The key is chosen by ``kid`` through ``key_for`` (issuer's own ring) and the algorithm by
    that key; nothing in the token picks how it is checked.

    :returns: the claims.
    :raises InvalidToken: for any reason at all; the description says which, without detail
        an attacker could use.
    """
    try:
        return issuer_verify.verify_access_token(token, key_for, policy.verification)
    except issuer_verify.InvalidAccessToken as error:
        raise InvalidToken(str(error)) from None


class VerifiedTokenCache:
    """Claims of access tokens this process has already verified, so that a token presented
    again skips the signature check (an ES256 verify costs about half a request here).

    Only a token that passed :func:`verify_access_token` enters, keyed by the SHA-256 of its
    whole compact form (a hit needs a second preimage, not just a look-alike); a hit is
    refused once the token expires or its signing key is no longer published (revoked or
    dropped), exactly as a fresh verification would refuse it. Bounded: the least recently
    used entry goes first.

    Memory, per worker process: an entry is about 1.8 KB (the digest, the claims and their
    strings, the LRU node), so the default 1,024 entries stay under 2 MB. A client reuses its
    token for minutes at most, on issuer's few Bearer routes; ten thousand entries of whole
    tokens (0.6 KB more each) cost some 23 MB per worker for little more hit rate.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[dict[str, Any], str]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and self._key(token) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, token: str, *, now: float, leeway: float, key_published: Callable[[str], bool]
    ) -> dict[str, Any] | None:
        key = self._key(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            claims, kid = entry
            if now > claims["exp"] + leeway or not key_published(kid):
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return claims

    def put(self, token: str, claims: dict[str, Any]) -> None:
        kid = jwt.get_unverified_header(token)["kid"]
        key = self._key(token)
        with self._lock:
            self._entries[key] = (claims, kid)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


# -- refresh tokens


def new_session_id() -> str:
    return b64url(secrets.token_bytes(SID_BYTES))


def new_session_secret() -> bytes:
    return secrets.token_bytes(SESSION_SECRET_BYTES)


@dataclass(frozen=True)
class RefreshToken:
    """A parsed refresh token; its MAC is not yet checked against the session secret."""

    sid: str
    counter: int
    mac: bytes


def _mac(secret: bytes, sid_bytes: bytes, counter: int) -> bytes:
    message = MAC_CONTEXT + sid_bytes + counter.to_bytes(COUNTER_BYTES, "big")
    return hmac.new(secret, message, hashlib.sha256).digest()


def mint_refresh_token(sid: str, secret: bytes, counter: int) -> str:
    """The refresh token number ``counter`` of session ``sid``: always the same string."""
    sid_bytes = _decode(sid)
    body = sid_bytes + counter.to_bytes(COUNTER_BYTES, "big") + _mac(secret, sid_bytes, counter)
    return REFRESH_PREFIX + b64url(body)


def parse_refresh_token(token: str) -> RefreshToken | None:
    """Split a refresh token into its parts, or None when it is not one of ours."""
    if not token.startswith(REFRESH_PREFIX) or len(token) > 128:
        return None
    try:
        body = _decode(token[len(REFRESH_PREFIX) :])
    except ValueError:
        return None
    if len(body) != REFRESH_BYTES:
        return None
    sid = b64url(body[:SID_BYTES])
    counter = int.from_bytes(body[SID_BYTES : SID_BYTES + COUNTER_BYTES], "big")
    return RefreshToken(sid, counter, body[SID_BYTES + COUNTER_BYTES :])


def refresh_token_matches(token: RefreshToken, secret: bytes) -> bool:
    """Constant-time check of the token's MAC against its session's secret."""
    expected = _mac(secret, _decode(token.sid), token.counter)
    return hmac.compare_digest(expected, token.mac)


def _decode(text: str) -> bytes:
    """Strict base64url without padding: one spelling per value."""
    if not text or "=" in text or not text.isascii():
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise ValueError("not base64url") from error
    if b64url(data) != text:
        raise ValueError("not canonical base64url")
    return data
