"""Rate limits: flask-limiter, counted per client address, per user and per WeChat app.

This module owns the limiter: its storage, the key prefix, the start-up check of Redis, and
what happens while Redis is away. Everything below is flask-limiter's (and its ``limits``
library's) own machinery, configured here; nothing re-implements the counting.

What is limited, each rate a setting (``docs/limits.md`` has the reasons):

- per client address: ``/auth/login``, ``/auth/refresh``, ``/me``, and each of
  ``/wechat/decrypt``, ``/wechat/phone`` and ``/wechat/session`` (checked before the Bearer
  token is, so that garbage costs no signature check);
- per user (the access token's ``sub``, once verified: an unverified ``sub`` would let anyone
  spend someone else's allowance): each of the three ``/wechat/*`` endpoints;
- per WeChat app, across every host sharing the storage: the calls issuer makes to WeChat for
  logged-in users, refused with 429 ``slow_down`` before WeChat's own per-app quota is spent.
  The factory hands :meth:`Limits.hit_app` to the WeChat client, which calls it before each
  such call. The login exchange (``jscode2session``) is not counted: WeChat counts it per
  user, and the login limit already bounds it.

Only a 429 carries ``Retry-After`` (when the window resets) -- no ``X-RateLimit-*`` headers
on the answers that passed: they told a client nothing it needs, on every answer.

Where the counters live:

- ``memory://`` counts in each worker process: with N workers a client gets up to N times the
  limit. A ``redis://`` URI counts once for every worker of every host. In memory, counters
  expire lazily (:class:`LazyMemoryStorage`): ``limits``' own memory storage starts a timer
  thread after almost every hit to expire keys, a cost on the hot path.
- Keys carry a prefix derived from ``ISSUER_URL`` (:func:`key_prefix`): the hosts of one
  deployment share it, and so share their counters; two deployments sharing one Redis do not.
- Redis is pinged once at start-up. Refused credentials or a database number the server lacks
  are configuration errors: start-up stops with one line. An unreachable Redis is an outage, not
  a configuration error: issuer starts anyway, with one warning, and behaves as below.
- While Redis is away, issuer keeps answering logins and refreshes (fail-open, to per-process
  limits): flask-limiter's ``in_memory_fallback_enabled`` counts in each worker's memory, as
  with ``memory://``, logs one warning per worker, pings Redis again after 1, 2, 4 ... 32 s
  (then 1 s again) and goes back to the shared counters by itself. ``swallow_errors`` covers
  the few requests in flight at the moment Redis goes away: served uncounted, never a 500.
- Every Redis call has a timeout (:data:`REDIS_TIMEOUT`), so a Redis that hangs delays the
  request that finds it so, and each later re-check, by a second or two, and never holds a
  worker thread for good; ``?socket_timeout=`` in the URI overrides it.

The Redis password never reaches a log line or an error: only :func:`redacted` forms of the
URI are shown, and redis-py's own messages name the host and port, never the credentials.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from urllib.parse import unquote, urlsplit

import limits
import redis
from flask import Flask, current_app, g, has_app_context, request
from flask_limiter import Limiter
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from ..config import ConfigError, Settings
from ..errors import SlowDown

log = logging.getLogger("issuer.ratelimit")

VARIABLE = "ISSUER_RATELIMIT_STORAGE_URI"
# Seconds to connect to Redis and to wait for each answer. Redis answers in well under a
# millisecond on a healthy network; a second means it is down or hung, and a request should
# then fall back to the in-memory counters rather than wait for redis-py's default 5 s.
REDIS_TIMEOUT = 1
# The scheme LazyMemoryStorage registers with ``limits``; ``memory://`` in the setting maps to it.
LAZY_MEMORY_SCHEME = "issuer+memory"
EXTENSION = "issuer.limiter"
# The endpoints that call WeChat or decrypt with the caller's session_key.
WECHAT_ENDPOINTS = ("wechat_data.decrypt", "wechat_data.phone", "wechat_data.session_check")


class LazyMemoryStorage(MemoryStorage):
    """``limits``' in-memory storage without its expiry thread.

    :class:`~limits.storage.MemoryStorage` starts a ``threading.Timer`` (10 ms) on a hit
    whenever the previous one has fired, so under steady traffic nearly every request pays
    for a new thread. Expiry needs no thread: a counter is already dropped when read after
    its window (``get``, which every hit calls first). What is left is memory held by keys
    nobody reads again -- addresses that went away -- and those are swept here, inline, at
    most once per :attr:`SWEEP_INTERVAL` seconds.
    """

    STORAGE_SCHEME = [LAZY_MEMORY_SCHEME]  # noqa: RUF012 -- limits' registry reads this name
    SWEEP_INTERVAL = 10.0

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **_: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **_)
        self.timer.cancel()  # the one the base class starts at once
        self._next_sweep = time.monotonic() + self.SWEEP_INTERVAL
        self._sweeping = threading.Lock()

    # The base class calls this (name-mangled) before every incr, decr and acquire_entry.
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep or not self._sweeping.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + self.SWEEP_INTERVAL
            self.sweep()
        finally:
            self._sweeping.release()

    def sweep(self) -> None:
        """Drop every counter and moving-window entry list whose time is up."""
        wall = time.time()
        for key, expiry in list(self.expirations.items()):
            if expiry <= wall:
                self.storage.pop(key, None)
                self.expirations.pop(key, None)
                self.locks.pop(key, None)
        for key, events in list(self.events.items()):
            if not events or events[0].expiry <= wall:  # newest first: all expired
                self.events.pop(key, None)
                self.locks.pop(key, None)


def install(app: Flask, settings: Settings) -> Limiter:
    """Bind the limits of ``settings`` to ``app``.

    :raises ConfigError: Redis refused the credentials or the database number of the URI.
    """
    uri = settings.ratelimit_storage_uri
    prefix = key_prefix(settings.url)
    shared = not uri.startswith("memory://")
    limiter = Limiter(
        key_func=client_address,
        storage_uri=uri if shared else f"{LAZY_MEMORY_SCHEME}://",
        # wrap_exceptions: every storage failure is a limits StorageError, whatever the driver.
        storage_options=(
            {
                "socket_timeout": REDIS_TIMEOUT,
                "socket_connect_timeout": REDIS_TIMEOUT,
                "wrap_exceptions": True,
            }
            if shared
            else {}
        ),
        # Retry-After goes on a 429 only, from the breached limit (issuer.web.http).
        headers_enabled=False,
        key_prefix=prefix,
        in_memory_fallback_enabled=shared,
        swallow_errors=True,
    )
    # flask-limiter logs to "flask-limiter", which nothing in issuer handles: its warnings would
    # reach stderr as bare text. Under "issuer." they are JSON lines with the request id.
    limiter.logger = log
    per_address = {
        "auth.login": settings.ratelimit_login,
        "auth.refresh": settings.ratelimit_refresh,
        "api.me": settings.ratelimit_me,
        **dict.fromkeys(WECHAT_ENDPOINTS, settings.ratelimit_wechat),
        # Web login: each authorize and callback calls WeChat or writes, like a login.
        "weblogin.authorize": settings.ratelimit_login,
        "weblogin.callback": settings.ratelimit_login,
        "weblogin.token": settings.ratelimit_refresh,
        "weblogin.scan_create": settings.ratelimit_scan,
        "weblogin.scan_qrcode": settings.ratelimit_scan_poll,
        "weblogin.scan_poll": settings.ratelimit_scan_poll,
    }

    @limiter.request_filter
    def unlimited() -> bool:
        # flask-limiter looks for limits before every view; the look-up cost a seventh of a
        # JWKS request in the benchmark's profile, and only these views carry any.
        return request.endpoint not in per_address

    limiter.init_app(app)
    if shared:
        # While Redis is away flask-limiter counts in a MemoryStorage it makes itself; make it
        # the lazy one too (flask-limiter has no option for it).
        fallback = LazyMemoryStorage()
        limiter._fallback_storage = fallback
        limiter._fallback_limiter = FixedWindowRateLimiter(fallback)
    app.extensions[EXTENSION] = Limits(
        limiter,
        prefix,
        per_user=limits.parse_many(settings.ratelimit_wechat_user),
        per_app=limits.parse_many(settings.ratelimit_wechat_app),
    )
    for endpoint, rate in per_address.items():
        view = app.view_functions[endpoint]
        app.view_functions[endpoint] = limiter.limit(rate)(view)  # type: ignore[assignment]
    if isinstance(limiter.storage, RedisStorage):
        _check_redis(limiter.storage, uri, prefix)
    return limiter


def client_address() -> str:
    """The key of a per-address limit: the client's address (after ``ProxyFix``)."""
    return request.remote_addr or "unknown"


class Limits:
    """The limits counted outside flask-limiter's decorators, in its storage and key scheme.

    Keys read ``LIMITS:LIMITER/<prefix>/<scope>/<id>/<rate>``, beside flask-limiter's own
    ``LIMITS:LIMITER/<prefix>/<address>/<endpoint>/<rate>``.
    """

    def __init__(
        self,
        limiter: Limiter,
        prefix: str,
        *,
        per_user: list[limits.RateLimitItem],
        per_app: list[limits.RateLimitItem],
    ) -> None:
        self.limiter = limiter
        self.prefix = prefix
        self.per_user = per_user
        self.per_app = per_app

    def hit_user(self, sub: str, endpoint: str) -> None:
        """Count one request of user ``sub`` on ``endpoint``.

        :raises SlowDown: the user's allowance on this endpoint is spent.
        """
        self._hit(
            self.per_user, f"user:{sub}", endpoint, refused="Too many requests from this user"
        )

    def hit_app(self, appid: str) -> None:
        """Count one call to WeChat for ``appid``.

        :raises SlowDown: the app's budget of WeChat calls for the window is spent.
        """
        self._hit(
            self.per_app,
            "wechat",
            appid,
            refused="This app's budget of WeChat calls is spent for now",
        )

    def _hit(
        self, items: list[limits.RateLimitItem], scope: str, name: str, *, refused: str
    ) -> None:
        strategy = self.limiter.limiter  # flask-limiter's in-memory fallback while Redis is away
        identifiers = (self.prefix, scope, name)
        for item in items:
            try:
                if strategy.hit(item, *identifiers):
                    continue
                reset_at = strategy.get_window_stats(item, *identifiers).reset_time
            except StorageError:
                # As flask-limiter's swallow_errors does for its own limits: served uncounted
                # rather than failed, for the moment it takes to notice Redis is gone.
                log.warning("rate limit storage failed; %s %s not counted", scope, name)
                return
            if has_app_context():
                g.rate_limited = True  # for the metrics, as a flask-limiter 429 is
            log.info("rate limit %s reached for %s %s", item, scope, name)
            raise SlowDown(f"{refused}; retry later.", retry_after=retry_after(reset_at))


def retry_after(reset_at: float) -> int:
    """Whole seconds until ``reset_at`` (RFC 9110 §10.2.3), at least 1."""
    return max(1, math.ceil(reset_at - time.time()))


def limits_of(app: Flask | None = None) -> Limits:
    """The :class:`Limits` of ``app`` (the current one by default)."""
    found: Limits = (app or current_app).extensions[EXTENSION]
    return found


def key_prefix(url: str) -> str:
    """The prefix of every counter key: ``issuer:`` and a digest of ``ISSUER_URL``.

    Every host of one deployment has the same ``ISSUER_URL`` (it is the ``iss`` claim, which
    verifiers compare byte for byte), so they count together; a deployment with another URL
    counts apart even on the same Redis. A digest rather than the URL itself: the URL's ``/``
    and ``:`` would blur into flask-limiter's own ``/``-separated key.
    """
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return f"issuer:{digest}"


def redacted(uri: str) -> str:
    """``uri`` without user name, password and query (where redis-py also takes a password)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _check_redis(storage: RedisStorage, uri: str, prefix: str) -> None:
    """Ping Redis once at start-up.

    :raises ConfigError: Redis refused the credentials, or answered the connection with an
        error (a database number it does not have, a user not allowed to PING).
    """
    where = redacted(uri)
    client: redis.Redis = storage.storage  # the redis-py client the limiter counts with
    try:
        client.ping()
    except redis.AuthenticationError:
        raise ConfigError(VARIABLE, f"Redis at {where} refused the credentials") from None
    except redis.ResponseError as error:
        reason = _without_credentials(str(error), uri)
        raise ConfigError(VARIABLE, f"Redis at {where} refused the connection: {reason}") from None
    except (redis.ConnectionError, redis.TimeoutError) as error:
        # An outage, not a mistake in the setting: serve with per-process limits until Redis
        # answers (see the module docstring), rather than let a Redis outage stop logins.
        reason = _without_credentials(str(error), uri)
        log.warning(
            "%s: Redis at %s is unreachable (%s); starting with per-process rate limits "
            "until it answers",
            VARIABLE,
            where,
            reason,
        )
    else:
        log.info("rate limits counted in Redis at %s, key prefix %s", where, prefix)
    finally:
        # Under gunicorn's preload_app this ran in the master: no socket crosses the fork.
        client.connection_pool.disconnect()


def _without_credentials(text: str, uri: str) -> str:
    """``text`` on one line, with the URI's password blanked should a message ever echo it."""
    password = urlsplit(uri).password
    if password:
        for form in (password, unquote(password)):
            text = text.replace(form, "***")
    return " ".join(text.split())
