"""Strict verification of issuer's access tokens: RFC 9068 JWTs checked per RFC 8725.

No I/O here: the caller passes a function from ``kid`` to key (issuer's own key ring, or a
downstream service's JWKS cache) and a :class:`VerificationPolicy`. The only outside state
read is the wall clock, for ``exp`` and ``iat``, as PyJWT reads it.

This is the one implementation: issuer verifies its own Bearer tokens through it too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 -- a media type, not a secret
# RFC 9068 §4: "at+jwt", or its full media type; media types compare case-insensitively.
ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# RFC 9068 §2.2 names iss, exp, aud, sub, client_id, iat and jti; issuer adds sid (the login
# session) to every token it signs.
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id", "sid")
# Identifier claims that must be non-empty strings.
STRING_CLAIMS = ("sub", "client_id", "jti", "sid", "openid")
# RFC 8725 §3.10 / §2.8: headers that would let a token choose its own verification key.
FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c"})
# Every algorithm issuer can sign with (ES256 by default; RS256 and EdDSA selectable).
DEFAULT_ALGORITHMS = ("ES256", "RS256", "EdDSA")
DEFAULT_LEEWAY = 5
MAX_LEEWAY = 30
MAX_TOKEN_LENGTH = 8192
MAX_KID_LENGTH = 256


class InvalidAccessToken(Exception):
    """The token does not verify; ``str(error)`` says why in a sentence safe to log and to
    answer with (it never repeats the token)."""


class VerificationKey(Protocol):
    """A public key and the one algorithm it verifies."""

    @property
    def public_key(self) -> Any: ...

    @property
    def alg(self) -> str: ...


@dataclass(frozen=True)
class VerificationPolicy:
    """Whom a token must come from and be for, and how much clock skew is forgiven.

    :param issuer: the ``iss`` expected, byte for byte (issuer's ``ISSUER_URL``).
    :param audience: the ``aud`` expected, byte for byte; a list of audiences is refused.
    :param leeway: seconds of clock skew allowed on ``exp`` and ``iat``, 0 to 30.
    :param algorithms: the algorithms accepted; a key of any other algorithm never verifies.
    :raises ValueError: a leeway outside 0-30 s, or no algorithm.
    """

    issuer: str
    audience: str
    leeway: int = DEFAULT_LEEWAY
    algorithms: Collection[str] = DEFAULT_ALGORITHMS

    def __post_init__(self) -> None:
        # bool is an int; a leeway of True is a mistake, not one second.
        if isinstance(self.leeway, bool) or not 0 <= self.leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be from 0 to {MAX_LEEWAY} seconds")
        if not self.algorithms or "none" in self.algorithms:
            raise ValueError("algorithms must name at least one signing algorithm, never none")
        object.__setattr__(self, "algorithms", frozenset(self.algorithms))


def verify_access_token(
    token: str,
    key_for: Callable[[str], VerificationKey | None],
    policy: VerificationPolicy,
) -> dict[str, Any]:
    """Verify an access token as strictly as issuer signs it (RFC 8725, RFC 9068 §4).

    The key is chosen by ``kid`` through ``key_for`` and the algorithm by that key (it must be
    in ``policy.algorithms``); nothing in the token picks how it is checked. ``typ`` must be
    ``at+jwt``; ``iss`` and ``aud`` compare exactly; ``exp``, ``iat``, ``sub``, ``jti``,
    ``client_id`` and ``sid`` are required; an ``iat`` later than now plus the leeway is
    refused; so are ``jwk``/``jku``/``x5u``/``x5c`` headers and any ``crit`` header.

    .. warning:: A valid signature says nothing about the session behind the token: a token
       stays valid until it expires even after its user logs out. Only issuer can check.

    :returns: the claims.
    :raises InvalidAccessToken: for any reason at all; the message says which, without
        detail an attacker could use.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise InvalidAccessToken("The access token is malformed.")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidAccessToken("The access token is malformed.") from None
    if FORBIDDEN_HEADERS & header.keys():
        raise InvalidAccessToken(
            "The access token carries a key-selection header issuer does not trust."
        )
    # RFC 7515 §4.1.11: a recipient that does not understand every extension named in "crit"
    # must reject the JWS. Issuer signs with none and this code understands none, so any
    # "crit" (even one naming RFC 7797's b64, which the JWT library would accept) is refused
    # here, whatever the library version checks.
    if "crit" in header:
        raise InvalidAccessToken(
            "The access token names a critical header extension issuer refuses."
        )
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES:
        raise InvalidAccessToken("The token is not an access token (typ must be at+jwt).")
    kid = header.get("kid")
    key = key_for(kid) if isinstance(kid, str) and 0 < len(kid) <= MAX_KID_LENGTH else None
    if key is None or key.alg not in policy.algorithms:
        raise InvalidAccessToken("The access token was not signed by a key of this issuer.")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public_key,
            algorithms=[key.alg],  # the key's, never the token's
            audience=policy.audience,
            issuer=policy.issuer,
            leeway=policy.leeway,
            options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidAccessToken("The access token has expired.") from None
    except jwt.ImmatureSignatureError:  # iat (or nbf) later than now plus the leeway
        raise InvalidAccessToken("The access token is not valid yet.") from None
    except jwt.PyJWTError:
        raise InvalidAccessToken("The access token is invalid.") from None
    _check_claim_types(claims)
    # RFC 7519 §4.1.6 leaves iat informational; a token issued "later" than now plus the
    # leeway was not signed by an issuer with a sane clock. PyJWT checks this too since 2.10;
    # checking here keeps the rule whatever the library version does.
    if claims["iat"] > time.time() + policy.leeway:
        raise InvalidAccessToken("The access token is not valid yet.")
    return claims


def _check_claim_types(claims: dict[str, Any]) -> None:
    """Types PyJWT lets through: identifiers must be non-empty strings, times numbers."""
    for name in STRING_CLAIMS:
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise InvalidAccessToken("The access token is invalid.")
    # RFC 7519 §2 NumericDate: a JSON number. PyJWT converts strings and booleans with int().
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if name in claims and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidAccessToken("The access token is invalid.")
    if "unionid" in claims and not isinstance(claims["unionid"], str):
        raise InvalidAccessToken("The access token is invalid.")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1), or None when
    the header is missing, empty, or of another scheme. The scheme is case-insensitive
    (RFC 7235 §2.1)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
