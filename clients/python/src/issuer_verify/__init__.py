"""Verify issuer's access tokens in your own Python service, from nothing but its URL.

::

    from issuer_verify import AccessTokenVerifier, InvalidAccessToken

    verifier = AccessTokenVerifier(issuer="https://login.example.com")
    try:
        claims = verifier.verify(token)
    except InvalidAccessToken as error:
        ...  # 401; str(error) is safe to log

Flask services: ``from issuer_verify.flask import require_access_token`` (the ``flask``
extra). Importing this package loads PyJWT and the standard library, nothing else.

Everything is strict, as issuer itself verifies (RFC 8725, RFC 9068 §4): the key is picked by
``kid`` among the published keys, the algorithm by that key, never by the token; ``typ`` must
be ``at+jwt``; ``iss`` and ``aud`` compare exactly; ``exp``, ``iat``, ``sub``, ``jti``,
``client_id`` and ``sid`` are required and ``iat`` may not lie in the future beyond the leeway
(5 s by default, at most 30); ``jku``/``jwk``/``x5u``/``x5c`` and ``crit`` headers are refused.

.. warning:: An access token stays valid here until it expires even after the user logs
   out: only issuer can check sessions. Keep issuer's access-token lifetime short.
"""

from .core import (
    ACCESS_TOKEN_TYPE,
    DEFAULT_ALGORITHMS,
    DEFAULT_LEEWAY,
    InvalidAccessToken,
    VerificationKey,
    VerificationPolicy,
    bearer_token,
    verify_access_token,
)
from .jwks import JwksCache, PublishedKey
from .verifier import AccessTokenVerifier

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "DEFAULT_ALGORITHMS",
    "DEFAULT_LEEWAY",
    "AccessTokenVerifier",
    "InvalidAccessToken",
    "JwksCache",
    "PublishedKey",
    "VerificationKey",
    "VerificationPolicy",
    "bearer_token",
    "verify_access_token",
]
__version__ = "0.1.0"
