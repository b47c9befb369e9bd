"""`AccessTokenVerifier`: the strict checks of :mod:`issuer_verify.core` against the keys an
issuer publishes, from nothing but its URL."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .core import (
    DEFAULT_ALGORITHMS,
    DEFAULT_LEEWAY,
    VerificationPolicy,
    verify_access_token,
)
from .jwks import HttpSession, JwksCache


class AccessTokenVerifier:
    """Verifies issuer's access tokens against its published keys. Thread-safe; make one per
    process and keep it (it holds the JWKS cache)."""

    def __init__(
        self,
        issuer: str,
        audience: str | None = None,
        *,
        jwks_url: str | None = None,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway: int = DEFAULT_LEEWAY,
        refetch_cooldown: float = 30.0,
        timeout: float = 5.0,
        session: HttpSession | None = None,
    ) -> None:
        """
        :param issuer: issuer's ``ISSUER_URL``, exactly (it is compared byte for byte).
        :param audience: ``ISSUER_AUDIENCE``; defaults to ``issuer`` as issuer's does.
        :param jwks_url: defaults to ``{issuer}/.well-known/jwks.json``.
        :param algorithms: the algorithms you accept; a key of another algorithm is ignored.
        :param leeway: seconds of clock skew allowed on ``exp``/``iat`` (0-30, default 5).
        :param refetch_cooldown: least seconds between JWKS refetches for unknown kids.
        :param timeout: seconds for each JWKS fetch.
        :param session: an HTTP client for the JWKS (see :mod:`issuer_verify.jwks`).
        :raises ValueError: a leeway outside 0-30 s, or a JWKS URL that is not http(s).
        """
        self.policy = VerificationPolicy(
            issuer=issuer,
            audience=audience or issuer,
            leeway=leeway,
            algorithms=algorithms,
        )
        self.jwks = JwksCache(
            jwks_url or issuer.rstrip("/") + "/.well-known/jwks.json",
            algorithms=algorithms,
            refetch_cooldown=refetch_cooldown,
            timeout=timeout,
            session=session,
        )

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token.

        :raises InvalidAccessToken: for any reason; the message is safe to log.
        """
        return verify_access_token(token, self.jwks.key, self.policy)
