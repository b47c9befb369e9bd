"""PKCE (RFC 7636), ``S256`` only: RFC 9700 §2.1.1 rules out ``plain``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

METHOD = "S256"
# RFC 7636 §4.2: BASE64URL(SHA256(verifier)) without padding is always 43 characters.
CHALLENGE_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
# RFC 7636 §4.1: 43 to 128 unreserved characters.
VERIFIER_PATTERN = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def is_challenge(value: str) -> bool:
    """Whether ``value`` has the shape of an ``S256`` code challenge."""
    return CHALLENGE_PATTERN.fullmatch(value) is not None


def s256(verifier: str) -> str:
    """The ``S256`` challenge of a verifier (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verifier_matches(verifier: str, challenge: str) -> bool:
    """RFC 7636 §4.6: does ``verifier`` hash to ``challenge``? Constant-time compare; a
    verifier of the wrong shape never matches."""
    if VERIFIER_PATTERN.fullmatch(verifier) is None:
        return False
    return hmac.compare_digest(s256(verifier), challenge)
