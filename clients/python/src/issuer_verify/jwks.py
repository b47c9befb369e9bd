"""The keys issuer publishes at its JWKS URL (RFC 7517), fetched over HTTP and cached.

Freshness follows the response's ``Cache-Control: max-age`` less its ``Age`` (RFC 9111
§4.2), measured on the monotonic clock. A ``kid`` not in the cache -- the first token of a key
rotated in at once -- triggers one refetch, but at most one per ``refetch_cooldown`` seconds,
counted apart from routine refreshes, so a burst of forged kids cannot turn a service into a
JWKS flood while a genuine new key is still found right after a routine fetch.

HTTP goes through the standard library unless a ``session`` is given: anything with
``get(url, timeout=...)`` answering ``status_code``, ``headers`` and ``content`` will do
(a ``requests.Session``, to reuse its proxies or client certificates).
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from .core import DEFAULT_ALGORITHMS

log = logging.getLogger("issuer_verify")

DEFAULT_MAX_AGE = 300.0  # when the JWKS response names none
MIN_MAX_AGE = 1.0  # "no-cache" / "max-age=0" must not mean one fetch per token
MAX_MAX_AGE = 86400.0  # a day: a revoked key must stop verifying some time
MAX_JWKS_BYTES = 1 << 20
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
USER_AGENT = "issuer-verify"


class HttpResponse(Protocol):
    """What the cache reads of an HTTP response."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...


class HttpSession(Protocol):
    """What the cache needs of an HTTP client: one GET with a timeout."""

    def get(self, url: str, *, timeout: float) -> HttpResponse: ...


@dataclass(frozen=True)
class _Response:
    status_code: int
    headers: Mapping[str, str]
    content: bytes


class UrllibSession:
    """A GET through :mod:`urllib.request`: no dependency beyond the standard library."""

    def get(self, url: str, *, timeout: float) -> HttpResponse:
        """:raises OSError: the server could not be reached or answered an HTTP error.
        :raises ValueError: the body is larger than :data:`MAX_JWKS_BYTES`."""
        request = urllib.request.Request(  # noqa: S310 -- the scheme is checked in JwksCache
            url, headers={"Accept": "application/json", "User-Agent": USER_AGENT}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            content = response.read(MAX_JWKS_BYTES + 1)
            if len(content) > MAX_JWKS_BYTES:
                raise ValueError("JWKS larger than 1 MiB")
            return _Response(response.status, response.headers, content)


@dataclass(frozen=True)
class PublishedKey:
    """A public key from the JWKS and the one algorithm its entry names."""

    public_key: Any
    alg: str


class JwksCache:
    """The keys published at a JWKS URL, cached for their ``max-age``. Thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        timeout: float = 5.0,
        refetch_cooldown: float = 30.0,
        session: HttpSession | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        :param url: the JWKS URL, ``http`` or ``https``.
        :param algorithms: algorithms accepted; entries naming another (or none) are ignored.
        :param timeout: seconds for each fetch.
        :param refetch_cooldown: least seconds between refetches for unknown kids.
        :param session: the HTTP client; the standard library's by default.
        :raises ValueError: a URL that is not http(s).
        """
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("the JWKS URL must be http:// or https://")
        self.url = url
        self.algorithms = frozenset(algorithms)
        self.timeout = timeout
        self.refetch_cooldown = refetch_cooldown
        self._http: HttpSession = session or UrllibSession()
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
                if response.status_code != 200:
                    raise OSError(f"HTTP {response.status_code}")
                document = json.loads(response.content)
            except (OSError, http.client.HTTPException, ValueError) as error:
                # Keep the keys we have; try again after the cooldown. The error's type only:
                # its text may carry a URL with credentials in it.
                log.warning("JWKS fetch from %s failed: %s", self.url, type(error).__name__)
                self._expires = now + min(self.refetch_cooldown, DEFAULT_MAX_AGE)
                return True
            self.fetches += 1
            self._keys = self._parse(document)
            self._expires = now + freshness(response.headers)
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
            if PRIVATE_MEMBERS & entry.keys():
                continue  # a private or symmetric key has no business in a JWKS
            try:
                keys[kid] = PublishedKey(jwt.PyJWK(entry, algorithm=alg).key, alg)
            except jwt.PyJWTError:
                continue
        return keys


def freshness(headers: Mapping[str, str]) -> float:
    """Seconds a JWKS response stays fresh: ``max-age`` less ``Age`` (RFC 9111 §4.2.1,
    §4.2.3), :data:`DEFAULT_MAX_AGE` when it names none, bounded to 1 s .. 1 day.

    ``no-store`` and ``no-cache`` count as ``max-age=0``: refetched at the next token, but
    never more than once a second.
    """
    max_age: float | None = None
    for directive in (headers.get("Cache-Control") or "").split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            max_age = 0.0
            break
        if name == "max-age":
            try:
                max_age = float(int(value.strip().strip('"')))
            except ValueError:
                max_age = 0.0  # RFC 9111 §4.2.1: an invalid max-age means stale
    if max_age is None:
        max_age = DEFAULT_MAX_AGE
    try:
        age = float(int((headers.get("Age") or "0").strip()))
    except ValueError:
        age = 0.0
    return min(max(max_age - max(age, 0.0), MIN_MAX_AGE), MAX_MAX_AGE)
