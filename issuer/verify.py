"""Deprecated: the downstream verifier now lives in the ``issuer-verify`` distribution.

Install ``issuer-verify`` (``pip install ./clients/python``, with the ``flask`` extra for the
decorator) and import from ``issuer_verify`` instead: it verifies issuer's tokens without
installing the server. This module re-exports the same objects so that existing imports keep
working::

    from issuer_verify import AccessTokenVerifier            # was issuer.verify
    from issuer_verify.flask import require_access_token     # was issuer.verify
"""

from __future__ import annotations

from issuer_verify import (
    DEFAULT_ALGORITHMS,
    AccessTokenVerifier,
    InvalidAccessToken,
    JwksCache,
    PublishedKey,
)
from issuer_verify.flask import require_access_token

__all__ = [
    "DEFAULT_ALGORITHMS",
    "AccessTokenVerifier",
    "InvalidAccessToken",
    "JwksCache",
    "PublishedKey",
    "require_access_token",
]
