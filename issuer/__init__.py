"""issuer: the backend half of WeChat mini-program login.

``create_app`` builds the Flask app: settings (defaults, ``ISSUER_CONFIG``, ``ISSUER_*``,
explicit overrides), logging, the key ring, the store, the WeChat client, rate limits, and the
views. Nothing happens at import time.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import DEVELOPMENT_APPID, DEVELOPMENT_OA_APPID, ConfigError, Settings, load_settings
from .errors import StartupError
from .keys import KeyDirectory, KeyManager, KeyPolicy
from .keys.directory import NoKeys
from .keys.matching import mismatch, record_checks
from .logs import configure_logging, redact_url
from .sealing import LiveSealer
from .service import AuthService
from .store import Store, StoreUnavailable, open_store
from .userdata import UserData
from .web.metrics import Metrics
from .wechat.client import WeChatClient
from .wechat.servertoken import ServerTokens

__all__ = ["ConfigError", "StartupError", "create_app"]

# The servers create_app is told it runs under: the production entry point (wsgi.py, which
# gunicorn loads) or ``issuer dev``.
Entry = Literal["wsgi", "dev"]


def create_app(
    config: Mapping[str, Any] | None = None,
    *,
    clock: Callable[[], float] = time.time,
    environ: Mapping[str, str] | None = None,
    entry: Entry | None = None,
) -> Flask:
    """Build the issuer app.

    :param config: settings by lower-case name, winning over the environment and the file.
    :param clock: the service's clock (seconds since the epoch), replaceable in tests.
    :param environ: the environment to read settings from (``os.environ`` by default).
    :param entry: the server about to serve the app: ``"wsgi"`` (the production entry point)
        refuses development mode; either logs the start-up line. None (tests, CLI commands)
        logs no start-up line.
    :raises StartupError: a setting, the key directory or the database is unusable; the
        message is one line naming what to fix.
    """
    settings = load_settings(config, environ)
    if settings.development and (entry == "wsgi" or "gunicorn.arbiter" in sys.modules):
        # The emulator mints codes for anyone who reaches it: it stays on `issuer dev`, which
        # binds loopback only. gunicorn's arbiter is imported by gunicorn alone, whichever
        # module it was told to load.
        raise ConfigError(
            "ISSUER_ENV",
            "development mode (the WeChat emulator) never runs under gunicorn; "
            "use `issuer dev`, or set ISSUER_ENV=production",
        )
    configure_logging(json_lines=not settings.development)
    app = Flask(__name__)
    for warning in settings.warnings:
        app.logger.warning(warning)

    store = open_store(settings.database_url, pool_size=settings.database_pool_size)
    try:
        store.migrate()
        keys = open_key_ring(settings, store, clock)
    except StoreUnavailable as error:
        raise StartupError(f"ISSUER_DATABASE_URL: cannot open the database: {error}") from None
    finally:
        store.close()  # each worker thread opens its own connection when it needs one

    # Off by default; when off, nothing of prometheus_client is even imported.
    metrics = Metrics.for_this_process() if settings.metrics else None
    wechat = WeChatClient(
        settings.wechat_api_base,
        settings.wechat_timeout,
        observe=metrics.observe_wechat if metrics else None,
    )

    def data_keys() -> tuple[Mapping[str, bytes], str]:
        ring = keys()  # once: a rotation between two reads would mix two rings
        return ring.data_keys, ring.active_data_kid

    sealer = LiveSealer(data_keys, refresh=keys.fresh)
    service = AuthService(
        settings=settings,
        store=store,
        wechat=wechat,
        keys=keys,
        sealer=sealer,
        clock=clock,
        on_reuse=metrics.refresh_token_reused if metrics else None,
    )
    app.extensions["issuer"] = service
    app.extensions["issuer.userdata"] = UserData(
        settings=settings,
        store=store,
        wechat=wechat,
        server_tokens=ServerTokens(store, wechat, sealer, clock=clock),
        sealer=sealer,
        clock=clock,
    )

    from .web import http, ratelimit, views
    from .web.weblogin import weblogin
    from .weblogin import PollGate, WebLogin, waiting_polls

    app.extensions["issuer.weblogin"] = WebLogin(service, lambda: keys().data_keys)
    app.extensions["issuer.pollgate"] = PollGate(waiting_polls(environ))

    http.install(app, observe=metrics.observe_request if metrics else None)
    for blueprint in (
        views.auth,
        views.api,
        views.wechat_data,
        views.discovery,
        views.health,
        weblogin,
    ):
        app.register_blueprint(blueprint)
    ratelimit.install(app, settings)  # per client IP and user; shared through Redis
    wechat.budget = ratelimit.limits_of(app).hit_app  # per app, before WeChat's quota
    if metrics is not None:
        assert settings.metrics_token is not None  # load_settings requires it with metrics
        metrics.install(app, settings.metrics_token)
        app.extensions["issuer.metrics"] = metrics
    if settings.proxy_hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops
        )
    if settings.emulate_wechat:
        _mount_emulator(app, settings)
        from .web import console

        console.install(app, settings)  # the page plays the emulator's phone: never without it
    if entry is not None:
        log_startup(app.logger, settings, keys().active.kid)
    return app


def log_startup(logger: logging.Logger, settings: Settings, active_kid: str) -> None:
    """The one line that says what this start serves with: never a secret, and the URLs of
    the database and the rate-limit storage with any password replaced."""
    apps = ", ".join(f"{app.appid} ({app.kind})" for app in settings.apps)
    logger.info(
        "issuer started: env=%s url=%s apps=[%s] database=%s ratelimit_storage=%s "
        "proxy_hops=%d metrics=%s signing_kid=%s",
        settings.env,
        settings.url,
        apps,
        redact_url(settings.database_url),
        redact_url(settings.ratelimit_storage_uri),
        settings.proxy_hops,
        "on (Bearer token)" if settings.metrics else "off",
        active_kid,
    )


def open_key_ring(settings: Settings, store: Store, clock: Callable[[], float]) -> KeyManager:
    """The process's key ring, checked against the data the database holds.

    Keys are made only for a database that holds no sealed data: an empty key directory
    beside a database that does is a wrong ``ISSUER_KEYS_DIR`` (or lost keys), never a first
    start, and minting keys there would serve tokens nobody else knows and fail every refresh.

    :raises StartupError: the keys cannot be read or do not match the data (one line).
    :raises StoreUnavailable: the database cannot answer.
    """
    checks = store.data_key_checks()
    sealed_with = set(store.sealed_kid_counts())
    holds_data = bool(checks or sealed_with)
    try:
        keys = KeyManager(
            KeyDirectory(settings.keys_dir),
            key_policy(settings),
            data_key=settings.data_key,
            clock=clock,
            create=not holds_data,
        )
    except NoKeys:
        raise StartupError(
            f"ISSUER_KEYS_DIR: {settings.keys_dir} holds no keys but the database holds data "
            "sealed with data keys: the keys do not match the data (point ISSUER_KEYS_DIR at "
            "the directory this database was used with, or restore it from backup)"
        ) from None
    ring = keys()
    problem = mismatch(ring.data_keys, checks, sealed_with)
    if problem is not None:
        raise StartupError(f"ISSUER_KEYS_DIR: the keys do not match the data: {problem}")
    record_checks(ring, store, checks, clock())
    return keys


def key_policy(settings: Settings) -> KeyPolicy:
    return KeyPolicy(
        alg=settings.signing_alg,
        jwks_max_age=settings.jwks_max_age,
        rotation_days=settings.key_rotation_days,
        retired_lifetime=settings.access_token_ttl + settings.leeway,
    )


def _mount_emulator(app: Flask, settings: Settings) -> None:
    """Serve the WeChat emulator under ``/_wechat`` of this app (development mode only)."""
    from .wechat.emulator import WeChatEmulator

    if not settings.development:
        raise ConfigError("ISSUER_ENV", "the WeChat emulator never runs in production")
    # Only the built-in development apps, whose secrets this process made up: never a real one.
    built_in = {DEVELOPMENT_APPID, DEVELOPMENT_OA_APPID}
    if not {item.appid for item in settings.apps} <= built_in:
        raise ConfigError("ISSUER_WECHAT_API_BASE", "the emulator plays its own apps only")
    emulator = WeChatEmulator(
        {item.appid: item.secret for item in settings.apps},
        official_accounts=[item.appid for item in settings.apps if item.kind == "officialaccount"],
    )
    app.extensions["issuer.emulator"] = emulator
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/_wechat": emulator.app}
    )
