"""Settings: every ``ISSUER_*`` variable named once, parsed and checked once, at start-up.

Precedence, lowest first: the defaults below, the TOML file named by ``ISSUER_CONFIG``, the
``ISSUER_*`` environment, and the explicit overrides given to ``create_app``. A missing or
malformed value raises :class:`ConfigError`, whose message is one line naming the variable;
nothing here is looked at again after start-up.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import limits
import redis

from .errors import StartupError

PREFIX = "ISSUER_"
# gunicorn.conf.py's default for ISSUER_THREADS.
DEFAULT_THREADS = 32
SIGNING_ALGORITHMS = ("ES256", "RS256", "EdDSA")
APP_KINDS = ("miniprogram", "officialaccount")
ENVIRONMENTS = ("production", "development")
# Rate-limit storages issuer is tested with: one process's memory, or one Redis server (plain,
# TLS, or a local socket). Memcached, MongoDB and Valkey need client libraries issuer does not
# ship; Redis Cluster and Sentinel are untested here.
RATELIMIT_SCHEMES = ("memory", "redis", "rediss", "redis+unix")
# WeChat appids are "wx" followed by 16 hex digits.
APPID_PATTERN = re.compile(r"wx[0-9a-fA-F]{16}")
# The one app the development emulator plays: it never plays a configured (real) one.
DEVELOPMENT_APPID = "wxde000000000000de"
# The shortest ISSUER_METRICS_TOKEN taken: secrets.token_urlsafe(32) gives 43 characters.
METRICS_TOKEN_MIN_LENGTH = 32
# Web clients (issuer as an OAuth 2.0 authorization server, RFC 6749 §4.1): ``h5`` pages inside
# WeChat log in through an official account; ``web`` (PC) sites by scanning a mini-program code.
CLIENT_KINDS = {"h5": "officialaccount", "web": "miniprogram"}
CLIENT_SCOPES = ("snsapi_base", "snsapi_userinfo")
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A mini-program page path as getwxacodeunlimit takes it: no leading slash, no query.
PAGE_PATTERN = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*")
# The official account and web clients the emulator plays in development mode.
DEVELOPMENT_OA_APPID = "wxde0000000000000a"
DEVELOPMENT_H5_CLIENT = "dev-h5"
DEVELOPMENT_WEB_CLIENT = "dev-pc"


class ConfigError(StartupError):
    """A setting is missing or malformed. The message names the variable to fix."""

    def __init__(self, setting: str, problem: str, source: str | None = None) -> None:
        where = f" (from {source})" if source else ""
        super().__init__(f"{setting}{where}: {problem}")
        self.setting = setting


@dataclass(frozen=True)
class WeChatApp:
    """One WeChat app issuer logs users in for. ``secret`` never leaves this process."""

    appid: str
    secret: str = field(repr=False)
    kind: str = "miniprogram"


@dataclass(frozen=True)
class WebClient:
    """A web page that logs in through issuer's authorization endpoint (``[[clients]]``).

    ``app`` is the official account (``h5``) or the mini-program whose code the PC shows
    (``web``); ``redirect_uris`` are compared exactly (RFC 9700 §4.1.3).
    """

    id: str
    kind: str
    app: str
    redirect_uris: tuple[str, ...] = ()
    scope: str = "snsapi_base"
    page: str | None = None


@dataclass(frozen=True)
class Settings:
    """The validated configuration. Field names are the variable names without the prefix."""

    env: str
    url: str
    audience: str
    database_url: str = field(repr=False)  # a PostgreSQL URL may carry a password
    keys_dir: Path
    signing_alg: str
    access_token_ttl: int
    refresh_token_ttl: int
    refresh_reuse_grace: float
    login_retry_window: float
    leeway: int
    ratelimit_login: str
    ratelimit_refresh: str
    ratelimit_me: str
    ratelimit_wechat: str
    ratelimit_wechat_user: str
    ratelimit_wechat_app: str
    ratelimit_storage_uri: str = field(repr=False)  # may carry a Redis password
    proxy_hops: int
    wechat_api_base: str
    wechat_timeout: float
    jwks_max_age: int
    key_rotation_days: int
    metrics: bool
    metrics_token: str | None = field(repr=False)
    data_key: bytes | None = field(repr=False)
    apps: tuple[WeChatApp, ...]
    # The development emulator answers for WeChat (development mode, no API base given).
    emulate_wechat: bool
    # Unknown ISSUER_* variables: reported in the log once logging is set up.
    warnings: tuple[str, ...] = ()
    # PostgreSQL connections per process: by default one per gunicorn thread, so no request
    # thread ever waits for a connection another thread holds.
    database_pool_size: int = DEFAULT_THREADS
    clients: tuple[WebClient, ...] = ()
    # Where WeChat's authorize page lives (the emulator's in development mode).
    wechat_open_base: str = "https://open.weixin.qq.com"
    # Per client IP: scan tickets created, and scan polls.
    ratelimit_scan: str = "30/minute"
    ratelimit_scan_poll: str = "600/minute"

    @property
    def development(self) -> bool:
        return self.env == "development"

    def app(self, appid: str) -> WeChatApp | None:
        """The configured app with this appid, or None."""
        for app in self.apps:
            if app.appid == appid:
                return app
        return None

    def client(self, client_id: str) -> WebClient | None:
        """The configured web client with this id, or None."""
        for client in self.clients:
            if client.id == client_id:
                return client
        return None


# -- parsers: each takes the raw value (a str from the environment, any TOML type from the
# file) and returns the typed value, or raises ValueError with the reason.


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a string")
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value)
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    return parse


def _whole(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be a whole number")
        try:
            number = int(value) if isinstance(value, int) else int(_text(value), 10)
        except ValueError:
            raise ValueError(f"must be a whole number; got {value!r}") from None
        if number < low or (high is not None and number > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}; got {number}")
        return number

    return parse


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("must be a number of seconds")
        try:
            number = float(value) if isinstance(value, int | float) else float(_text(value))
        except ValueError:
            raise ValueError(f"must be a number of seconds; got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be from {low:g} to {high:g} seconds; got {number:g}")
        return number

    return parse


def _http_url(value: Any) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL; got {text!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or a fragment")
    return text


def _database_url(value: Any) -> str:
    """A SQLite path, or a PostgreSQL URL that libpq can parse (checked without connecting).

    The messages never echo a PostgreSQL URL: it may carry a password.
    """
    text = _text(value)
    if text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return text
    if text.startswith(("postgresql://", "postgres://")):
        # Imported here: the driver is loaded only by deployments that use it.
        from .store.postgres import parse_url

        parse_url(text)  # ValueError with the password redacted
        return text
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme == "sqlite":
        raise ValueError("must name a file: sqlite:///relative/path or sqlite:////absolute/path")
    # Only a scheme-like scheme is shown: anything else may be part of a password.
    shown = f"scheme {scheme!r}" if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,20}", scheme) else None
    raise ValueError(
        "must be sqlite:///relative/path, sqlite:////absolute/path or "
        f"postgresql://user:password@host:port/dbname; got {shown or 'no URL scheme'}"
    )


def _rate_limit(value: Any) -> str:
    text = _text(value)
    try:
        if not limits.parse_many(text):
            raise ValueError
    except ValueError:
        raise ValueError(f"must be a rate such as '60/minute'; got {text!r}") from None
    return text


def _storage_uri(value: Any) -> str:
    """``memory://``, or a Redis URI redis-py accepts, checked without connecting.

    The messages never echo the URI, which may carry a password.
    """
    text = _text(value)
    scheme, _, rest = text.partition("://") if "://" in text else ("", "", "")
    if scheme not in RATELIMIT_SCHEMES:
        # Only a scheme-like scheme is shown: anything else may be part of a password.
        shown = repr(scheme) if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,20}", scheme) else "none"
        raise ValueError(
            f"must be memory://, or a redis://, rediss:// or redis+unix:// URI; got scheme {shown}"
        )
    if scheme == "memory":
        if rest:
            raise ValueError("memory:// takes nothing after the scheme")
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError("is not a valid URI (is an IPv6 host missing its ']'?)") from None
    try:
        port = parts.port  # parsed lazily: a bad port raises only here
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("port must be a number from 1 to 65535 (Redis listens on 6379)")
    if parts.fragment:
        raise ValueError("must not carry a #fragment")
    if scheme == "redis+unix":
        if parts.hostname or not parts.path.strip("/"):
            raise ValueError("must name a socket path, as in redis+unix:///run/redis.sock")
    else:
        if not parts.hostname:
            raise ValueError(f"names no host, as in {scheme}://cache.internal:6379/0")
        # redis-py silently ignores a path that is not a number: refuse it here instead.
        if parts.path not in ("", "/") and not re.fullmatch(r"/[0-9]{1,5}", parts.path):
            raise ValueError(f"path must be a database number, as in {scheme}://host:6379/0")
    # The query (?socket_timeout=2 ...) is redis-py's to judge: build, without connecting,
    # the connection it would make.
    try:
        pool = redis.ConnectionPool.from_url(text.replace("redis+unix://", "unix://", 1))
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError):
        names = ", ".join(sorted({name for name, _ in parse_qsl(parts.query)})) or "none"
        raise ValueError(
            f"has a query option redis does not take, or a bad value (options: {names})"
        ) from None
    return text


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):  # TOML true / false
        return value
    text = _text(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false (1/0, yes/no, on/off); got {text!r}")


def _metrics_token(value: Any) -> str:
    text = _text(value)
    if len(text) < METRICS_TOKEN_MIN_LENGTH or not text.isprintable() or " " in text:
        raise ValueError(
            f"must be at least {METRICS_TOKEN_MIN_LENGTH} printable characters without spaces "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return text


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): reachable from this host only."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _data_key(value: Any) -> bytes:
    text = _text(value)
    standard = text.rstrip("=").translate(str.maketrans("-_", "+/"))
    try:
        key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 of 32 random bytes") from None
    if len(key) != 32:
        raise ValueError(f"must be base64 of exactly 32 bytes; it decodes to {len(key)}")
    return key


# name -> (parser, default). The default None means "not set".
SETTINGS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "env": (_choice(*ENVIRONMENTS), "production"),
    "url": (_http_url, "http://127.0.0.1:8000"),
    "audience": (_text, None),
    "database_url": (_database_url, "sqlite:///instance/issuer.db"),
    "database_pool_size": (_whole(1, 1000), None),
    "keys_dir": (_text, "keys"),
    "signing_alg": (_choice(*SIGNING_ALGORITHMS), "ES256"),
    "access_token_ttl": (_whole(1, 86_400), 900),
    "refresh_token_ttl": (_whole(60), 2_592_000),
    "refresh_reuse_grace": (_seconds(0, 300), 10.0),
    "login_retry_window": (_seconds(0, 300), 10.0),
    "leeway": (_whole(0, 30), 5),
    "ratelimit_login": (_rate_limit, "60/minute"),
    "ratelimit_refresh": (_rate_limit, "120/minute"),
    # Per client IP on /me, and on each /wechat/* endpoint; per user (token sub) on each
    # /wechat/* endpoint; per appid on issuer's calls to WeChat for users (docs/limits.md).
    "ratelimit_me": (_rate_limit, "600/minute"),
    "ratelimit_wechat": (_rate_limit, "120/minute"),
    "ratelimit_wechat_user": (_rate_limit, "20/minute"),
    "ratelimit_wechat_app": (_rate_limit, "600/minute"),
    "ratelimit_storage_uri": (_storage_uri, "memory://"),
    "proxy_hops": (_whole(0, 10), 0),
    "wechat_appid": (_text, None),
    "wechat_secret": (_text, None),
    "wechat_api_base": (_http_url, "https://api.weixin.qq.com"),
    "wechat_timeout": (_seconds(0.1, 60), 5.0),
    "jwks_max_age": (_whole(0, 86_400), 300),
    "key_rotation_days": (_whole(0, 3650), 30),
    "metrics": (_boolean, False),
    "metrics_token": (_metrics_token, None),
    "data_key": (_data_key, None),
    "wechat_open_base": (_http_url, "https://open.weixin.qq.com"),
    "ratelimit_scan": (_rate_limit, "30/minute"),
    "ratelimit_scan_poll": (_rate_limit, "600/minute"),
}
# Read from the environment only: it names the file, so the file cannot set it.
CONFIG_FILE_VARIABLE = PREFIX + "CONFIG"
# Read by gunicorn.conf.py (the app reads ISSUER_THREADS only as the pool size's default).
DEPLOYMENT_VARIABLES = frozenset({PREFIX + "BIND", PREFIX + "THREADS"})


def variable(name: str) -> str:
    """The variable of a setting: ``access_token_ttl`` -> ``ISSUER_ACCESS_TOKEN_TTL``."""
    return PREFIX + name.upper()


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, parse and check every setting.

    :param overrides: settings by lower-case name (``{"access_token_ttl": 60}``), and
        ``apps`` as a list of tables like the TOML file's; they win over everything.
    :param environ: the environment to read (``os.environ`` by default).
    :raises ConfigError: naming the first setting that is missing or malformed.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    raw: dict[str, tuple[Any, str]] = {}  # name -> (value, where it came from)
    warnings: list[str] = []

    file_apps: list[Any] = []
    file_clients: list[Any] = []
    config_path = overrides.pop("config", None) or environ.get(CONFIG_FILE_VARIABLE)
    if config_path:
        table = _read_toml(str(config_path))
        file_apps = _apps_list(table.pop("apps", []), str(config_path))
        file_clients = _clients_list(table.pop("clients", []), str(config_path))
        for name, value in table.items():
            if name not in SETTINGS:
                raise ConfigError(
                    CONFIG_FILE_VARIABLE, f"unknown setting {name!r} in {config_path}"
                )
            raw[name] = (value, str(config_path))

    known = {variable(name) for name in SETTINGS} | {CONFIG_FILE_VARIABLE} | DEPLOYMENT_VARIABLES
    for key, value in environ.items():
        if key.startswith(PREFIX):
            if key in DEPLOYMENT_VARIABLES:
                continue
            if key in known:
                raw[key[len(PREFIX) :].lower()] = (value, "")
            else:
                warnings.append(f"unknown setting {key} ignored")

    override_apps = _apps_list(overrides.pop("apps", []), "overrides")
    override_clients = _clients_list(overrides.pop("clients", []), "overrides")
    for name, value in overrides.items():
        if name not in SETTINGS:
            raise ConfigError(name, "unknown setting")
        raw[name] = (value, "")

    values: dict[str, Any] = {}
    for name, (parse, default) in SETTINGS.items():
        if name in raw and raw[name][0] is not None:
            value, source = raw[name]
            try:
                values[name] = parse(value)
            except ValueError as error:
                raise ConfigError(variable(name), str(error), source or None) from None
        else:
            values[name] = default

    apps = [_app(entry, source, environ) for entry, source in file_apps + override_apps]
    appid, secret = values.pop("wechat_appid"), values.pop("wechat_secret")
    if appid is not None or secret is not None:
        if appid is None:
            raise ConfigError(variable("wechat_appid"), "must be set with ISSUER_WECHAT_SECRET")
        if secret is None:
            raise ConfigError(variable("wechat_secret"), "must be set with ISSUER_WECHAT_APPID")
        apps.append(_app({"appid": appid, "secret": secret}, "", environ))
    seen: set[str] = set()
    for app in apps:
        if app.appid in seen:
            raise ConfigError("apps", f"appid {app.appid} is configured twice")
        seen.add(app.appid)

    development = values["env"] == "development"
    emulate = development and "wechat_api_base" not in raw
    if emulate and apps:
        # The emulator would answer for a real appid with its secret: anyone reaching it
        # could mint codes and get tokens signed with the real keys.
        raise ConfigError(
            variable("wechat_api_base"),
            f"development mode emulates WeChat for its own app only, not {apps[0].appid}; "
            "set ISSUER_WECHAT_API_BASE to reach WeChat with a configured app, or remove it",
        )
    if not apps:
        if not development:
            raise ConfigError(
                variable("wechat_appid"),
                "no WeChat app is configured; set ISSUER_WECHAT_APPID and ISSUER_WECHAT_SECRET, "
                "or list [[apps]] in the ISSUER_CONFIG file",
            )
        if not emulate:
            raise ConfigError(
                variable("wechat_appid"),
                "no WeChat app is configured, and ISSUER_WECHAT_API_BASE turns the emulator off",
            )
        # Known only to this process and its emulator; never valid anywhere else.
        apps.append(WeChatApp(DEVELOPMENT_APPID, secrets.token_hex(16)))
    if emulate:
        values["wechat_api_base"] = values["url"].rstrip("/") + "/_wechat"
        values["wechat_open_base"] = values["wechat_api_base"]
    entries = file_clients + override_clients
    own_pages = urlsplit(values["url"])
    if (
        emulate
        and not entries
        and [app.appid for app in apps] == [DEVELOPMENT_APPID]
        and (own_pages.scheme == "https" or is_loopback(own_pages.hostname or ""))
    ):
        # Beside its own mini-program, the emulator plays an official account and a client
        # of each kind, so both web login flows run offline. Their redirect URI is issuer's
        # own page: on a plain-http address off loopback it could not be registered (RFC
        # 8252 §7.3), so there they are left out.
        apps.append(WeChatApp(DEVELOPMENT_OA_APPID, secrets.token_hex(16), "officialaccount"))
        entries = _development_clients(values["url"], apps)
    clients = _clients(entries, apps)
    if not development:
        _check_production_url(values["url"], given="url" in raw)
    if values["metrics"] and values["metrics_token"] is None:
        raise ConfigError(
            variable("metrics_token"),
            "must be set when ISSUER_METRICS is on: /metrics answers only a scraper that "
            "sends it as a Bearer token",
        )

    values["audience"] = values["audience"] or values["url"]
    if values["database_pool_size"] is None:
        values["database_pool_size"] = _threads(environ)
    values["keys_dir"] = Path(values["keys_dir"])
    return Settings(
        **values,
        apps=tuple(apps),
        emulate_wechat=emulate,
        warnings=tuple(warnings),
        clients=clients,
    )


def _check_production_url(url: str, *, given: bool) -> None:
    """In production the issuer names itself on purpose, over TLS unless it is loopback."""
    if not given:
        raise ConfigError(
            variable("url"),
            "must be set in production: it is the iss of every token and the base of the "
            "discovery URLs (e.g. https://login.example.com)",
        )
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        raise ConfigError(
            variable("url"),
            f"must be https:// in production; http:// is taken for loopback hosts only, not "
            f"{parts.hostname!r}",
        )


def _threads(environ: Mapping[str, str]) -> int:
    """The threads of a gunicorn worker (``ISSUER_THREADS``, read by gunicorn.conf.py)."""
    value = environ.get(PREFIX + "THREADS")
    if value is None:
        return DEFAULT_THREADS
    try:
        threads: int = _whole(1, 1000)(value)
    except ValueError as error:
        raise ConfigError(PREFIX + "THREADS", str(error)) from None
    return threads


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(CONFIG_FILE_VARIABLE, f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(CONFIG_FILE_VARIABLE, f"{path} is not valid TOML: {error}") from None


def _apps_list(entries: Any, source: str) -> list[tuple[Any, str]]:
    if not isinstance(entries, list):
        raise ConfigError("apps", "must be an array of tables ([[apps]])", source)
    return [(entry, source) for entry in entries]


def _app(entry: Any, source: str, environ: Mapping[str, str]) -> WeChatApp:
    where = source or None
    if not isinstance(entry, Mapping):
        raise ConfigError("apps", "each [[apps]] entry must be a table", where)
    unknown = set(entry) - {"appid", "secret", "secret_env", "kind"}
    if unknown:
        raise ConfigError("apps", f"unknown key {sorted(unknown)[0]!r} in [[apps]]", where)
    appid = str(entry.get("appid", "")).strip()
    if not APPID_PATTERN.fullmatch(appid):
        setting = "apps.appid" if source else variable("wechat_appid")
        raise ConfigError(setting, f"must be 'wx' and 16 hex digits; got {appid!r}", where)
    secret: Any = entry.get("secret")
    if secret is None and "secret_env" in entry:
        name = str(entry["secret_env"])
        secret = environ.get(name)
        if not secret:
            raise ConfigError(name, f"is empty or unset, and apps.secret_env of {appid} names it")
    if isinstance(secret, bool) or not isinstance(secret, str | int) or not str(secret).strip():
        raise ConfigError(f"apps.secret of {appid}", "must be set (secret or secret_env)", where)
    kind = str(entry.get("kind", "miniprogram"))
    if kind not in APP_KINDS:
        raise ConfigError(f"apps.kind of {appid}", f"must be one of {', '.join(APP_KINDS)}", where)
    # A secret made only of digits may arrive as an int (TOML) -- it is still text.
    return WeChatApp(appid=appid, secret=str(secret).strip(), kind=kind)


def _clients_list(entries: Any, source: str) -> list[tuple[Any, str]]:
    if not isinstance(entries, list):
        raise ConfigError("clients", "must be an array of tables ([[clients]])", source)
    return [(entry, source) for entry in entries]


def _development_clients(url: str, apps: list[WeChatApp]) -> list[tuple[Any, str]]:
    """The clients the emulator plays in development mode: they land on its own pages."""
    done = url.rstrip("/") + "/_wechat/dev/web-done"
    miniprogram = next(app.appid for app in apps if app.kind == "miniprogram")
    return [
        (
            {
                "id": DEVELOPMENT_H5_CLIENT,
                "kind": "h5",
                "app": DEVELOPMENT_OA_APPID,
                "redirect_uris": [done],
                "scope": "snsapi_userinfo",
            },
            "",
        ),
        (
            {
                "id": DEVELOPMENT_WEB_CLIENT,
                "kind": "web",
                "app": miniprogram,
                "redirect_uris": [done],
                "page": "pages/scan/index",
            },
            "",
        ),
    ]


def _clients(entries: list[tuple[Any, str]], apps: list[WeChatApp]) -> tuple[WebClient, ...]:
    clients: list[WebClient] = []
    for entry, source in entries:
        client = _client(entry, source or None, apps)
        if any(other.id == client.id for other in clients):
            raise ConfigError("clients.id", f"client {client.id!r} is configured twice")
        clients.append(client)
    return tuple(clients)


def _client(entry: Any, where: str | None, apps: list[WeChatApp]) -> WebClient:
    """One ``[[clients]]`` table, checked against the apps it names."""
    if not isinstance(entry, Mapping):
        raise ConfigError("clients", "each [[clients]] entry must be a table", where)
    unknown = set(entry) - {"id", "kind", "app", "redirect_uris", "scope", "page"}
    if unknown:
        raise ConfigError("clients", f"unknown key {sorted(unknown)[0]!r} in [[clients]]", where)
    client_id = entry.get("id")
    if not isinstance(client_id, str) or not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise ConfigError(
            "clients.id", f"must be 1-64 letters, digits, '.', '_' or '-'; got {client_id!r}", where
        )
    kind = entry.get("kind")
    if kind not in CLIENT_KINDS:
        raise ConfigError(f"clients.kind of {client_id}", "must be h5 or web", where)
    app = next((app for app in apps if app.appid == entry.get("app")), None)
    if app is None or app.kind != CLIENT_KINDS[kind]:
        raise ConfigError(
            f"clients.app of {client_id}",
            f"must be the appid of an {CLIENT_KINDS[kind]} app in [[apps]]",
            where,
        )
    uris = entry.get("redirect_uris", [])
    if not isinstance(uris, list) or not all(isinstance(uri, str) for uri in uris):
        raise ConfigError(f"clients.redirect_uris of {client_id}", "must be a list of URLs", where)
    for uri in uris:
        problem = _redirect_uri_problem(uri)
        if problem:
            raise ConfigError(f"clients.redirect_uris of {client_id}", problem, where)
    if kind == "h5" and not uris:
        raise ConfigError(f"clients.redirect_uris of {client_id}", "must list one URL", where)
    scope = entry.get("scope", "snsapi_base")
    if kind != "h5" and "scope" in entry:
        raise ConfigError(f"clients.scope of {client_id}", "is for h5 clients only", where)
    if scope not in CLIENT_SCOPES:
        raise ConfigError(
            f"clients.scope of {client_id}", f"must be one of {', '.join(CLIENT_SCOPES)}", where
        )
    page = entry.get("page")
    if kind == "web":
        if not isinstance(page, str) or not PAGE_PATTERN.fullmatch(page):
            raise ConfigError(
                f"clients.page of {client_id}",
                "must be a mini-program page path such as pages/scan/index",
                where,
            )
    elif page is not None:
        raise ConfigError(f"clients.page of {client_id}", "is for web clients only", where)
    return WebClient(client_id, kind, app.appid, tuple(uris), scope, page)


def _redirect_uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be a redirect URI (RFC 6749 §3.1.2: absolute, no fragment), or
    None. Plain http only for loopback hosts (RFC 8252 §7.3)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return f"{uri!r} is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{uri!r} must be an absolute https:// URL"
    if parts.fragment or "#" in uri:
        return f"{uri!r} must not carry a #fragment"
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme == "http" and not loopback:
        return f"{uri!r} must be https:// (http:// only for loopback addresses)"
    return None
