"""Rate limits on login and refresh (SPEC §2, §10): flask-limiter, counted per client address.

This module owns the limiter: its storage, the key prefix, the start-up check of Redis, and
what happens while Redis is away. Everything below is flask-limiter's own machinery, configured
here; nothing re-implements it.

- ``memory://`` counts in each worker process: with N workers a client gets up to N times the
  limit. A ``redis://`` URI counts once for every worker of every host.
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
from urllib.parse import unquote, urlsplit

import redis
from flask import Flask, request
from flask_limiter import Limiter
from limits.storage import RedisStorage

from ..config import ConfigError, Settings

log = logging.getLogger("issuer.ratelimit")

VARIABLE = "ISSUER_RATELIMIT_STORAGE_URI"
# Seconds to connect to Redis and to wait for each answer. Redis answers in well under a
# millisecond on a healthy network; a second means it is down or hung, and a request should
# then fall back to the in-memory counters rather than wait for redis-py's default 5 s.
REDIS_TIMEOUT = 1


def install(app: Flask, settings: Settings) -> Limiter:
    """Bind the login and refresh limits of ``settings`` to ``app``.

    :raises ConfigError: Redis refused the credentials or the database number of the URI.
    """
    uri = settings.ratelimit_storage_uri
    prefix = key_prefix(settings.url)
    shared = not uri.startswith("memory://")
    limiter = Limiter(
        key_func=lambda: request.remote_addr or "unknown",
        storage_uri=uri,
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
        headers_enabled=True,
        key_prefix=prefix,
        in_memory_fallback_enabled=shared,
        swallow_errors=True,
    )
    # flask-limiter logs to "flask-limiter", which nothing in issuer handles: its warnings would
    # reach stderr as bare text. Under "issuer." they are JSON lines with the request id.
    limiter.logger = log
    limits = {"auth.login": settings.ratelimit_login, "auth.refresh": settings.ratelimit_refresh}

    @limiter.request_filter
    def unlimited() -> bool:
        # flask-limiter looks for limits before every view; only two carry any, and the
        # look-up cost a seventh of a /me or JWKS request in the benchmark's profile.
        return request.endpoint not in limits

    limiter.init_app(app)
    app.extensions["issuer.limiter"] = limiter
    for endpoint, rate in limits.items():
        view = app.view_functions[endpoint]
        app.view_functions[endpoint] = limiter.limit(rate)(view)  # type: ignore[assignment]
    if isinstance(limiter.storage, RedisStorage):
        _check_redis(limiter.storage, uri, prefix)
    return limiter


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
