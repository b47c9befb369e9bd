"""Verify issuer's access tokens in your own Python service, from nothing but the JWKS URL.

::

    from issuer.verify import AccessTokenVerifier, require_access_token

    verifier = AccessTokenVerifier(issuer="https://login.example.com")

    @app.get("/orders")
    @require_access_token(verifier)
    def orders():
        return {"user": g.access_token["sub"]}

Everything is strict, as issuer itself verifies (RFC 8725, RFC 9068 §4): the key is picked by
``kid`` among the keys published at the JWKS URL, the algorithm by that key (and it must be in
``algorithms``), never by the token; ``typ`` must be ``at+jwt``; ``iss`` and ``aud`` compare
exactly; ``exp``, ``iat``, ``sub``, ``jti`` and ``client_id`` are required; ``jku``/``jwk``/
``x5u``/``x5c`` headers are refused, and so is any ``crit`` header (RFC 7515 §4.1.11: issuer
uses no JWS extension, so this helper understands none).

Keys are cached for the JWKS ``Cache-Control: max-age`` (monotonic clock). A token with an
unknown ``kid`` -- the first token of a freshly rotated key -- triggers one refetch, but at most
one per ``refetch_cooldown`` seconds, so a burst of forged kids cannot turn this service into
a JWKS flood. A revoked key stops verifying here once the cached JWKS expires.

.. warning:: An access token stays valid here until it expires even after the user logs
   out: only issuer can check sessions. Keep ``ISSUER_ACCESS_TOKEN_TTL`` short.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import jwt
import requests
from flask import Response, g, request

from .errors import InvalidToken
from .tokens import TokenPolicy, verify_access_token

log = logging.getLogger("issuer.verify")

DEFAULT_ALGORITHMS = ("ES256", "RS256", "EdDSA")
DEFAULT_MAX_AGE = 300.0
MAX_AGE_PATTERN = re.compile(r"max-age=(\d+)")
F = TypeVar("F", bound=Callable[..., Any])


class InvalidAccessToken(Exception):
    """The token does not verify; ``str(error)`` says why in a sentence safe to log."""


@dataclass(frozen=True)
class PublishedKey:
    public_key: Any
    alg: str


class JwksCache:
    """The keys published at a JWKS URL, cached for their ``max-age``."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        timeout: float = 5.0,
        refetch_cooldown: float = 30.0,
        session: requests.Session | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = frozenset(algorithms)
        self.timeout = timeout
        self.refetch_cooldown = refetch_cooldown
        self._http = session or requests.Session()
        self._monotonic = monotonic
        self._keys: dict[str, PublishedKey] = {}
        self._expires = float("-inf")
        # Refetches for unknown kids are counted apart from routine refreshes: a key rotated
        # in at once must be found even right after a routine fetch.
        self._unknown_refetched = float("-inf")
        self.fetches = 0
        self._lock = threading.Lock()

    def key(self, kid: str) -> PublishedKey | None:
        """The published key with this kid, fetching the JWKS when the cache expired, or once
        (cooldown permitting) when the kid is unknown. None: not published."""
        refreshed = False
        if self._monotonic() >= self._expires:
            refreshed = self._fetch(unknown_kid=False)
        found = self._keys.get(kid)
        if found is None and not refreshed:
            self._fetch(unknown_kid=True)
            found = self._keys.get(kid)
        return found

    def _fetch(self, *, unknown_kid: bool) -> bool:
        """Fetch the JWKS unless another thread just did; True when this call fetched."""
        with self._lock:
            now = self._monotonic()
            if unknown_kid:
                if now - self._unknown_refetched < self.refetch_cooldown:
                    return False  # the floor: at most one refetch per cooldown
                self._unknown_refetched = now
            elif now < self._expires:
                return False  # another thread refreshed it meanwhile
            try:
                response = self._http.get(self.url, timeout=self.timeout)
                response.raise_for_status()
                document = json.loads(response.content)
            except (requests.RequestException, ValueError) as error:
                # Keep the keys we have; try again after the cooldown.
                log.warning("JWKS fetch from %s failed: %s", self.url, type(error).__name__)
                self._expires = now + min(self.refetch_cooldown, DEFAULT_MAX_AGE)
                return True
            self.fetches += 1
            self._keys = self._parse(document)
            self._expires = now + _max_age(response.headers.get("Cache-Control", ""))
            return True

    def _parse(self, document: Any) -> dict[str, PublishedKey]:
        keys: dict[str, PublishedKey] = {}
        entries = document.get("keys") if isinstance(document, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            kid, alg = entry.get("kid"), entry.get("alg")
            if not isinstance(kid, str) or alg not in self.algorithms:
                continue  # a key without its own alg never verifies: no guessing
            if {"d", "p", "q", "k"} & entry.keys():
                continue  # a private or symmetric key has no business in a JWKS
            try:
                keys[kid] = PublishedKey(jwt.PyJWK(entry, algorithm=alg).key, alg)
            except jwt.PyJWTError:
                continue
        return keys


class AccessTokenVerifier:
    """Verifies issuer's access tokens against its published keys."""

    def __init__(
        self,
        issuer: str,
        audience: str | None = None,
        *,
        jwks_url: str | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway: int = 5,
        refetch_cooldown: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        """
        :param issuer: issuer's ``ISSUER_URL``, exactly (it is compared byte for byte).
        :param audience: ``ISSUER_AUDIENCE``; defaults to ``issuer`` as issuer's does.
        :param jwks_url: defaults to ``{issuer}/.well-known/jwks.json``.
        :param algorithms: the algorithms you accept; a key of another algorithm is ignored.
        :param leeway: seconds of clock skew allowed on ``exp``/``iat`` (0-30).
        """
        if not 0 <= leeway <= 30:
            raise ValueError("leeway must be from 0 to 30 seconds")
        self.policy = TokenPolicy(
            issuer=issuer, audience=audience or issuer, access_token_ttl=0, leeway=leeway
        )
        self.jwks = JwksCache(
            jwks_url or issuer.rstrip("/") + "/.well-known/jwks.json",
            algorithms=algorithms,
            refetch_cooldown=refetch_cooldown,
            timeout=timeout,
        )

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token.

        :raises InvalidAccessToken: for any reason; the message is safe to log.
        """
        try:
            return verify_access_token(token, self.jwks.key, self.policy)
        except InvalidToken as error:
            raise InvalidAccessToken(error.description) from None


def require_access_token(verifier: AccessTokenVerifier) -> Callable[[F], F]:
    """A Flask view decorator: a valid ``Authorization: Bearer`` access token or a 401.

    The claims go on ``g.access_token``. The 401 is RFC 6750 JSON with ``WWW-Authenticate``.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return _unauthorized("An access token is required.", missing=True)
            try:
                g.access_token = verifier.verify(token.strip())
            except InvalidAccessToken as error:
                return _unauthorized(str(error), missing=False)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def _unauthorized(description: str, *, missing: bool) -> Response:
    error = InvalidToken(description, missing=missing)
    response = Response(json.dumps(error.body()), status=401, mimetype="application/json")
    response.headers.update(error.headers())
    response.headers["Cache-Control"] = "no-store"
    return response


def _max_age(cache_control: str) -> float:
    match = MAX_AGE_PATTERN.search(cache_control)
    return float(match.group(1)) if match else DEFAULT_MAX_AGE
