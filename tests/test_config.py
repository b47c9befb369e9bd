"""Settings (SPEC §7, STYLE habit 2): defaults, the TOML file, precedence, and refusal at start-up.

Every test passes an explicit ``environ``; the process environment is never read.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import pytest

from issuer import StartupError, create_app
from issuer.config import ConfigError, Settings, load_settings

APPID = "wx0123456789abcdef"
APPID2 = "wxfedcba9876543210"
APPID3 = "wxAbCdEf0123456789"
SECRET = "0f1e2d3c-app-secret-4b5a69788796"
METRICS_TOKEN = "metrics-token-0123456789abcdefghijklmnop"
# What production needs at the least: an app, and the URL it names itself by.
BASE = {
    "ISSUER_URL": "https://login.example",
    "ISSUER_WECHAT_APPID": APPID,
    "ISSUER_WECHAT_SECRET": SECRET,
}


def load(environ: dict[str, str], overrides: dict[str, Any] | None = None) -> Settings:
    return load_settings(overrides, environ)


def config_error(environ: dict[str, str], overrides: dict[str, Any] | None = None) -> str:
    """The message of the ConfigError these settings raise, checked to be one line."""
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides, environ)
    assert isinstance(caught.value, StartupError)
    message = str(caught.value)
    assert "\n" not in message, message
    assert "\r" not in message, message
    assert message.strip(), "the message must say something"
    return message


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "issuer.toml"
    path.write_text(text)
    return path


# -- invalid settings


INVALID = [
    ("ISSUER_ENV", "staging"),
    ("ISSUER_ENV", "prod"),
    ("ISSUER_URL", "ftp://issuer.example"),
    ("ISSUER_URL", "issuer.example"),
    ("ISSUER_URL", "http://"),
    ("ISSUER_URL", "https://issuer.example/?tenant=1"),
    ("ISSUER_URL", "https://issuer.example/#top"),
    ("ISSUER_DATABASE_URL", "mysql://user@db.example/issuer"),
    ("ISSUER_DATABASE_URL", "postgresql://user@db.example/issuer?no_such_option=1"),
    ("ISSUER_DATABASE_URL", "postgres://user@db.example/issuer?sslmode"),
    ("ISSUER_DATABASE_URL", "postgresql:/db.example/issuer"),
    ("ISSUER_DATABASE_URL", "sqlite:///"),
    ("ISSUER_DATABASE_URL", "instance/issuer.db"),
    ("ISSUER_SIGNING_ALG", "HS256"),
    ("ISSUER_SIGNING_ALG", "none"),
    ("ISSUER_SIGNING_ALG", "ES512"),
    ("ISSUER_ACCESS_TOKEN_TTL", "abc"),
    ("ISSUER_ACCESS_TOKEN_TTL", "0"),
    ("ISSUER_ACCESS_TOKEN_TTL", "-5"),
    ("ISSUER_ACCESS_TOKEN_TTL", "1.5"),
    ("ISSUER_REFRESH_TOKEN_TTL", "abc"),
    ("ISSUER_REFRESH_TOKEN_TTL", "0"),
    ("ISSUER_REFRESH_TOKEN_TTL", "-1"),
    ("ISSUER_REFRESH_TOKEN_TTL", "2592000.5"),
    ("ISSUER_REFRESH_REUSE_GRACE", "-1"),
    ("ISSUER_REFRESH_REUSE_GRACE", "x"),
    ("ISSUER_REFRESH_REUSE_GRACE", "nan"),
    ("ISSUER_LOGIN_RETRY_WINDOW", "-1"),
    ("ISSUER_LOGIN_RETRY_WINDOW", "x"),
    ("ISSUER_LEEWAY", "31"),
    ("ISSUER_LEEWAY", "-1"),
    ("ISSUER_LEEWAY", "x"),
    ("ISSUER_RATELIMIT_LOGIN", "lots"),
    ("ISSUER_RATELIMIT_REFRESH", "lots"),
    ("ISSUER_RATELIMIT_STORAGE_URI", "ftp://x"),
    ("ISSUER_RATELIMIT_STORAGE_URI", "memory"),
    ("ISSUER_PROXY_HOPS", "-1"),
    ("ISSUER_PROXY_HOPS", "x"),
    ("ISSUER_WECHAT_API_BASE", "ftp://api.weixin.qq.com"),
    ("ISSUER_WECHAT_API_BASE", "api.weixin.qq.com"),
    ("ISSUER_WECHAT_TIMEOUT", "0"),
    ("ISSUER_WECHAT_TIMEOUT", "-1"),
    ("ISSUER_WECHAT_TIMEOUT", "x"),
    ("ISSUER_WECHAT_TIMEOUT", "nan"),
    ("ISSUER_JWKS_MAX_AGE", "-1"),
    ("ISSUER_JWKS_MAX_AGE", "x"),
    ("ISSUER_KEY_ROTATION_DAYS", "-1"),
    ("ISSUER_KEY_ROTATION_DAYS", "x"),
    ("ISSUER_METRICS", "maybe"),
    ("ISSUER_METRICS", "2"),
    ("ISSUER_METRICS", ""),
    ("ISSUER_DATA_KEY", "not base64 at all!"),
    ("ISSUER_DATA_KEY", base64.b64encode(bytes(range(16))).decode()),
    ("ISSUER_DATA_KEY", base64.b64encode(bytes(range(33))).decode()),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_setting_names_its_variable_in_one_line(name: str, value: str) -> None:
    message = config_error({**BASE, name: value})
    assert name in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("leeway", 31), ("signing_alg", "none"), ("access_token_ttl", "1.5"), ("env", "prod")],
)
def test_invalid_override_names_its_variable(name: str, value: Any) -> None:
    message = config_error(BASE, {name: value})
    assert f"ISSUER_{name.upper()}" in message


def test_invalid_value_in_the_file_names_variable_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "leeway = 31\n")
    message = config_error({**BASE, "ISSUER_CONFIG": str(path)})
    assert "ISSUER_LEEWAY" in message
    assert str(path) in message


def test_data_key_error_does_not_echo_the_key() -> None:
    short_key = base64.b64encode(b"sixteen byte key").decode()
    message = config_error({**BASE, "ISSUER_DATA_KEY": short_key})
    assert short_key not in message


# -- the rate-limit storage URI: checked whole at start-up, never echoed (it may hold a password)

STORAGE_PASSWORD = "s3cret-redis-pw"
INVALID_STORAGE_URIS = [
    "memcached://127.0.0.1:11211",  # a storage issuer does not ship the client of
    "mongodb://127.0.0.1:27017",
    "redis+sentinel://127.0.0.1:26379/issuer",
    "valkey://127.0.0.1:6379",
    "memory://elsewhere",
    f"redis//:{STORAGE_PASSWORD}@db7.example:6379",  # no "://"
    f"redis://:{STORAGE_PASSWORD}@",  # no host
    f"redis://:{STORAGE_PASSWORD}@db7.example:port/0",
    f"redis://:{STORAGE_PASSWORD}@db7.example:65536/0",
    f"redis://:{STORAGE_PASSWORD}@db7.example:0/0",
    f"redis://:{STORAGE_PASSWORD}@[::1/0",  # unparsable host
    f"redis://:{STORAGE_PASSWORD}@db7.example:6379/zero",
    f"redis://:{STORAGE_PASSWORD}@db7.example:6379/0/1",
    f"redis://:{STORAGE_PASSWORD}@db7.example:6379/0?socket_timeout=soon",
    f"redis://:{STORAGE_PASSWORD}@db7.example:6379/0?no_such_option=1",
    f"redis://:{STORAGE_PASSWORD}@db7.example:6379/0#frag",
    f"rediss://:{STORAGE_PASSWORD}@:6380",
    f"redis+unix://:{STORAGE_PASSWORD}@",  # no socket path
]


@pytest.mark.parametrize("uri", INVALID_STORAGE_URIS)
def test_bad_storage_uri_is_refused_in_one_line_without_echoing_it(uri: str) -> None:
    message = config_error({**BASE, "ISSUER_RATELIMIT_STORAGE_URI": uri})
    assert message.startswith("ISSUER_RATELIMIT_STORAGE_URI: ")
    assert STORAGE_PASSWORD not in message
    assert "db7" not in message


@pytest.mark.parametrize(
    "uri",
    [
        "memory://",
        f"redis://:{STORAGE_PASSWORD}@cache.internal:6379/0",
        "redis://issuer:pw@cache.internal/15",  # an ACL user; port 6379 by default
        "rediss://cache.internal:6380",
        "redis://[::1]:6379/",
        "redis://cache.internal:6379/0?socket_timeout=0.5&socket_connect_timeout=0.5",
        "redis+unix:///run/redis/redis.sock?db=1",
    ],
)
def test_good_storage_uri_is_taken_as_written(uri: str) -> None:
    assert load({**BASE, "ISSUER_RATELIMIT_STORAGE_URI": uri}).ratelimit_storage_uri == uri


def test_settings_repr_hides_the_storage_uri() -> None:
    uri = f"redis://:{STORAGE_PASSWORD}@cache.internal:6379/0"
    assert STORAGE_PASSWORD not in repr(load({**BASE, "ISSUER_RATELIMIT_STORAGE_URI": uri}))


# -- the database URL: a PostgreSQL URL is parsed by libpq at start-up, never echoed

DATABASE_PASSWORD = "pg-s3cret/pw"
QUOTED_PASSWORD = "pg-s3cret%2Fpw"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://issuer@db.example/issuer",
        "postgres://issuer@db.example:5433/issuer",
        f"postgresql://issuer:{QUOTED_PASSWORD}@db.example/issuer?sslmode=require",
        "postgresql://issuer@db1.example,db2.example/issuer?target_session_attrs=read-write",
        "postgresql:///issuer?host=/run/postgresql",
        "postgresql://issuer@[::1]/issuer?options=-c%20statement_timeout%3D2000",
    ],
)
def test_postgresql_urls_are_taken_as_written(url: str) -> None:
    assert load({**BASE, "ISSUER_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://issuer:{QUOTED_PASSWORD}@db7.example/issuer?no_such_option=1",
        f"postgresql://issuer:{QUOTED_PASSWORD}@[::1/issuer",  # libpq echoes this URL
        f"postgresql://issuer:{QUOTED_PASSWORD}%zz@db7.example/issuer",
        f"postgres://issuer:{QUOTED_PASSWORD}@db7.example/issuer?sslmode",
    ],
)
def test_a_bad_postgresql_url_is_refused_without_its_password(url: str) -> None:
    message = config_error({**BASE, "ISSUER_DATABASE_URL": url})
    assert message.startswith("ISSUER_DATABASE_URL: ")
    assert "PostgreSQL URL" in message
    assert QUOTED_PASSWORD not in message
    assert DATABASE_PASSWORD not in message


@pytest.mark.parametrize(
    "url", [f"issuer:{DATABASE_PASSWORD}@db7.example/issuer", f"{DATABASE_PASSWORD}@db7.example"]
)
def test_a_database_url_without_a_scheme_is_not_echoed(url: str) -> None:
    message = config_error({**BASE, "ISSUER_DATABASE_URL": url})
    assert "no URL scheme" in message
    assert DATABASE_PASSWORD not in message
    assert "db7" not in message


def test_settings_repr_hides_the_database_url() -> None:
    url = f"postgresql://issuer:{QUOTED_PASSWORD}@db.example/issuer"
    text = repr(load({**BASE, "ISSUER_DATABASE_URL": url}))
    assert QUOTED_PASSWORD not in text
    assert DATABASE_PASSWORD not in text


def test_an_unreachable_postgresql_stops_start_up_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://issuer:{QUOTED_PASSWORD}@127.0.0.1:{port}/issuer"
    config = {
        "keys_dir": str(tmp_path / "keys"),
        "database_url": url,
        "url": "https://login.example",
        "apps": [{"appid": APPID, "secret": SECRET}],
    }
    with pytest.raises(StartupError) as caught:
        create_app(config, environ={})
    message = str(caught.value)
    assert message.startswith("ISSUER_DATABASE_URL: cannot open the database: ")
    assert "refused" in message
    assert "\n" not in message
    assert QUOTED_PASSWORD not in message
    assert DATABASE_PASSWORD not in message


# -- WeChat apps


def test_production_without_an_app_names_the_appid_variable() -> None:
    assert "ISSUER_WECHAT_APPID" in config_error({})
    assert "ISSUER_WECHAT_APPID" in config_error({"ISSUER_ENV": "production"})


def test_appid_without_secret_names_the_secret_variable() -> None:
    assert "ISSUER_WECHAT_SECRET" in config_error({"ISSUER_WECHAT_APPID": APPID})


def test_secret_without_appid_names_the_appid_variable() -> None:
    assert "ISSUER_WECHAT_APPID" in config_error({"ISSUER_WECHAT_SECRET": SECRET})


@pytest.mark.parametrize(
    "appid",
    [
        "wx123",
        "wx0123456789abcdeg",
        "wx0123456789abcdef0",
        "gh_0123456789abcd",
        "WX0123456789abcdef",
    ],
)
def test_malformed_appid_is_refused(appid: str) -> None:
    message = config_error({"ISSUER_WECHAT_APPID": appid, "ISSUER_WECHAT_SECRET": SECRET})
    assert "ISSUER_WECHAT_APPID" in message


def test_malformed_appid_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[[apps]]\nappid = "wx123"\nsecret = "s"\n')
    message = config_error({"ISSUER_CONFIG": str(path)})
    assert str(path) in message
    assert "wx123" in message


def test_duplicate_appid_in_file_and_environment_is_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'[[apps]]\nappid = "{APPID}"\nsecret = "other"\n')
    message = config_error({**BASE, "ISSUER_CONFIG": str(path)})
    assert APPID in message


def test_duplicate_appid_in_the_file_is_refused(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        f'[[apps]]\nappid = "{APPID2}"\nsecret = "a"\n\n'
        f'[[apps]]\nappid = "{APPID2}"\nsecret = "b"\n',
    )
    assert APPID2 in config_error({"ISSUER_CONFIG": str(path)})


def test_environment_app_is_added_to_the_file_apps(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'[[apps]]\nappid = "{APPID2}"\nsecret = "file-secret"\n')
    settings = load({**BASE, "ISSUER_CONFIG": str(path)})
    assert {(app.appid, app.secret) for app in settings.apps} == {
        (APPID, SECRET),
        (APPID2, "file-secret"),
    }


# -- defaults (SPEC §7)


DEFAULTS = [
    ("env", "production"),
    ("database_url", "sqlite:///instance/issuer.db"),
    ("keys_dir", Path("keys")),
    ("signing_alg", "ES256"),
    ("access_token_ttl", 900),
    ("refresh_token_ttl", 2_592_000),
    ("refresh_reuse_grace", 10),
    ("login_retry_window", 10),
    ("leeway", 5),
    ("ratelimit_login", "60/minute"),
    ("ratelimit_refresh", "120/minute"),
    ("ratelimit_storage_uri", "memory://"),
    ("proxy_hops", 0),
    ("wechat_api_base", "https://api.weixin.qq.com"),
    ("wechat_timeout", 5),
    ("jwks_max_age", 300),
    ("key_rotation_days", 30),
    ("metrics", False),
    ("data_key", None),
    ("emulate_wechat", False),
]


@pytest.mark.parametrize(("name", "expected"), DEFAULTS)
def test_default_matches_the_spec(name: str, expected: object) -> None:
    assert getattr(load(BASE), name) == expected


def test_the_default_url_serves_development_only() -> None:
    # Production must name itself (below); development keeps the default.
    settings = load({"ISSUER_ENV": "development"})
    assert settings.url == "http://127.0.0.1:8000"
    assert settings.audience == "http://127.0.0.1:8000"


def test_environment_app_is_the_only_app_by_default() -> None:
    settings = load(BASE)
    assert [(app.appid, app.secret, app.kind) for app in settings.apps] == [
        (APPID, SECRET, "miniprogram")
    ]
    assert settings.app(APPID) is settings.apps[0]
    assert settings.app(APPID2) is None


def test_audience_follows_the_url_unless_set() -> None:
    assert load({**BASE, "ISSUER_URL": "https://login.example"}).audience == "https://login.example"
    settings = load({**BASE, "ISSUER_URL": "https://login.example", "ISSUER_AUDIENCE": "api"})
    assert settings.audience == "api"


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("ISSUER_ACCESS_TOKEN_TTL", "60", "access_token_ttl", 60),
        ("ISSUER_REFRESH_REUSE_GRACE", "0", "refresh_reuse_grace", 0),
        ("ISSUER_REFRESH_REUSE_GRACE", "2.5", "refresh_reuse_grace", 2.5),
        ("ISSUER_LOGIN_RETRY_WINDOW", "0", "login_retry_window", 0),
        ("ISSUER_LEEWAY", "30", "leeway", 30),
        ("ISSUER_LEEWAY", "0", "leeway", 0),
        ("ISSUER_KEY_ROTATION_DAYS", "0", "key_rotation_days", 0),
        ("ISSUER_SIGNING_ALG", "EdDSA", "signing_alg", "EdDSA"),
        ("ISSUER_METRICS", "1", "metrics", True),
        ("ISSUER_METRICS", "True", "metrics", True),
        ("ISSUER_METRICS", " on ", "metrics", True),
        ("ISSUER_METRICS", "0", "metrics", False),
        ("ISSUER_METRICS", "no", "metrics", False),
        ("ISSUER_DATABASE_URL", "sqlite:////var/lib/issuer.db", "database_url", None),
        ("ISSUER_RATELIMIT_STORAGE_URI", "redis://cache:6379/0", "ratelimit_storage_uri", None),
        (
            "ISSUER_DATA_KEY",
            base64.b64encode(bytes(range(32))).decode(),
            "data_key",
            bytes(range(32)),
        ),
        (
            "ISSUER_DATA_KEY",
            base64.urlsafe_b64encode(b"\xff" * 32).decode(),
            "data_key",
            b"\xff" * 32,
        ),
    ],
)
def test_valid_values_are_parsed(name: str, value: str, field: str, expected: object) -> None:
    environ = {**BASE, name: value, "ISSUER_METRICS_TOKEN": METRICS_TOKEN}
    assert getattr(load(environ), field) == (value if expected is None else expected)


def test_unknown_issuer_variable_is_reported_not_fatal() -> None:
    settings = load({**BASE, "ISSUER_ACCES_TOKEN_TTL": "60"})
    assert settings.access_token_ttl == 900
    assert any("ISSUER_ACCES_TOKEN_TTL" in warning for warning in settings.warnings)


# -- the ISSUER_CONFIG file


def test_file_sets_settings_and_apps(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        f"""
url = "https://login.example"
access_token_ttl = 600
refresh_reuse_grace = 2.5
signing_alg = "EdDSA"
ratelimit_login = "5/second"

[[apps]]
appid = "{APPID2}"
secret = "mini-secret"

[[apps]]
appid = "{APPID3}"
secret = "oa-secret"
kind = "officialaccount"
""",
    )
    settings = load({"ISSUER_CONFIG": str(path)})
    assert settings.url == "https://login.example"
    assert settings.audience == "https://login.example"
    assert settings.access_token_ttl == 600
    assert settings.refresh_reuse_grace == 2.5
    assert settings.signing_alg == "EdDSA"
    assert settings.ratelimit_login == "5/second"
    assert [(app.appid, app.secret, app.kind) for app in settings.apps] == [
        (APPID2, "mini-secret", "miniprogram"),
        (APPID3, "oa-secret", "officialaccount"),
    ]


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("false", False), ('"on"', True)])
def test_file_sets_metrics_as_a_toml_boolean(tmp_path: Path, text: str, expected: bool) -> None:
    path = write_toml(tmp_path, f"metrics = {text}\n")
    environ = {**BASE, "ISSUER_CONFIG": str(path), "ISSUER_METRICS_TOKEN": METRICS_TOKEN}
    assert load(environ).metrics is expected


def test_malformed_metrics_in_the_file_names_variable_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'metrics = "sometimes"\n')
    message = config_error({**BASE, "ISSUER_CONFIG": str(path)})
    assert "ISSUER_METRICS" in message
    assert str(path) in message


def test_environment_wins_over_the_file_and_overrides_over_both(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "leeway = 3\naccess_token_ttl = 600\njwks_max_age = 60\n")
    environ = {
        **BASE,
        "ISSUER_CONFIG": str(path),
        "ISSUER_LEEWAY": "7",
        "ISSUER_JWKS_MAX_AGE": "90",
    }
    settings = load(environ, {"jwks_max_age": 120})
    assert settings.access_token_ttl == 600  # file only
    assert settings.leeway == 7  # environment over file
    assert settings.jwks_max_age == 120  # override over environment


@pytest.mark.parametrize(
    ("toml_value", "expected"),
    [
        ("12345678901234567890123456789012", "12345678901234567890123456789012"),
        ("123456", "123456"),
        ('"00123456"', "00123456"),
    ],
)
def test_all_digit_secret_arrives_as_a_string(
    tmp_path: Path, toml_value: str, expected: str
) -> None:
    path = write_toml(tmp_path, f'[[apps]]\nappid = "{APPID2}"\nsecret = {toml_value}\n')
    (app,) = load({"ISSUER_URL": "https://login.example", "ISSUER_CONFIG": str(path)}).apps
    assert app.secret == expected
    assert isinstance(app.secret, str)


def test_all_digit_secret_as_an_integer_override_arrives_as_a_string() -> None:
    settings = load(
        {"ISSUER_URL": "https://login.example"},
        {"wechat_appid": APPID, "wechat_secret": 12345678901234567890},
    )
    assert settings.apps[0].secret == "12345678901234567890"


def test_secret_env_reads_the_given_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The variable exists only in the environ handed to load_settings, as in create_app(environ=).
    monkeypatch.delenv("MINI_APP_SECRET", raising=False)
    path = write_toml(tmp_path, f'[[apps]]\nappid = "{APPID2}"\nsecret_env = "MINI_APP_SECRET"\n')
    settings = load(
        {
            "ISSUER_URL": "https://login.example",
            "ISSUER_CONFIG": str(path),
            "MINI_APP_SECRET": "from-environ",
        }
    )
    assert settings.apps[0].secret == "from-environ"


def test_secret_env_naming_an_unset_variable_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSET_MINI_APP_SECRET", raising=False)
    path = write_toml(
        tmp_path, f'[[apps]]\nappid = "{APPID2}"\nsecret_env = "UNSET_MINI_APP_SECRET"\n'
    )
    assert "UNSET_MINI_APP_SECRET" in config_error({"ISSUER_CONFIG": str(path)})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("acess_token_ttl = 600\n", "acess_token_ttl"),
        ("config = 'other.toml'\n", "config"),
        (f'[[apps]]\nappid = "{APPID2}"\nsecret = "s"\nsecrett = "t"\n', "secrett"),
        (f'[[apps]]\nappid = "{APPID2}"\nsecret = "s"\nkind = "game"\n', "kind"),
        (f'[[apps]]\nappid = "{APPID2}"\n', "secret"),
        ('apps = "wx0123456789abcdef"\n', "apps"),
    ],
)
def test_bad_content_in_the_file_is_refused(tmp_path: Path, text: str, named: str) -> None:
    path = write_toml(tmp_path, text)
    assert named in config_error({"ISSUER_CONFIG": str(path)})


def test_unknown_top_level_key_names_issuer_config(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "acess_token_ttl = 600\n")
    assert "ISSUER_CONFIG" in config_error({**BASE, "ISSUER_CONFIG": str(path)})


@pytest.mark.parametrize("text", ["leeway = \n", "[[apps]\n", "leeway = 5\nleeway = 6\n"])
def test_invalid_toml_names_issuer_config(tmp_path: Path, text: str) -> None:
    path = write_toml(tmp_path, text)
    message = config_error({**BASE, "ISSUER_CONFIG": str(path)})
    assert "ISSUER_CONFIG" in message
    assert str(path) in message


def test_missing_file_names_issuer_config(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    message = config_error({**BASE, "ISSUER_CONFIG": str(missing)})
    assert "ISSUER_CONFIG" in message
    assert str(missing) in message


# -- development mode


@pytest.mark.parametrize(
    ("url", "api_base"),
    [
        (None, "http://127.0.0.1:8000/_wechat"),
        ("http://localhost:5000", "http://localhost:5000/_wechat"),
        ("http://localhost:5000/", "http://localhost:5000/_wechat"),
    ],
)
def test_development_without_an_app_emulates_wechat(url: str | None, api_base: str) -> None:
    environ = {"ISSUER_ENV": "development"}
    if url is not None:
        environ["ISSUER_URL"] = url
    settings = load(environ)
    assert settings.development
    assert settings.emulate_wechat is True
    assert settings.wechat_api_base == api_base
    # One mini-program; web login adds the emulator's official account beside it.
    (app,) = [app for app in settings.apps if app.kind == "miniprogram"]
    assert app.appid
    assert app.secret


def test_development_app_secret_is_not_a_fixed_placeholder() -> None:
    first = load({"ISSUER_ENV": "development"}).apps[0]
    second = load({"ISSUER_ENV": "development"}).apps[0]
    assert first.secret != second.secret


def test_development_never_emulates_a_configured_app() -> None:
    # The emulator would answer for the real appid, with its secret, to whoever reaches it.
    message = config_error({**BASE, "ISSUER_ENV": "development"})
    assert message.startswith("ISSUER_WECHAT_API_BASE")
    assert APPID in message
    assert SECRET not in message


def test_development_never_emulates_an_app_of_the_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, f'env = "development"\n[[apps]]\nappid = "{APPID2}"\nsecret = "s-{SECRET}"\n'
    )
    message = config_error({"ISSUER_CONFIG": str(path)})
    assert message.startswith("ISSUER_WECHAT_API_BASE")
    assert APPID2 in message


def test_development_with_an_api_base_and_no_app_is_refused() -> None:
    message = config_error(
        {"ISSUER_ENV": "development", "ISSUER_WECHAT_API_BASE": "http://127.0.0.1:9/wechat"}
    )
    assert "ISSUER_WECHAT_APPID" in message


def test_development_with_an_api_base_uses_it() -> None:
    base = "http://127.0.0.1:9/wechat"
    settings = load({**BASE, "ISSUER_ENV": "development", "ISSUER_WECHAT_API_BASE": base})
    assert settings.emulate_wechat is False
    assert settings.wechat_api_base == base


# -- production names itself: ISSUER_URL is the iss of every token


def test_production_without_an_explicit_url_is_refused() -> None:
    environ = {name: value for name, value in BASE.items() if name != "ISSUER_URL"}
    assert config_error(environ).startswith("ISSUER_URL: must be set in production")


def test_production_url_from_the_file_counts_as_explicit(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'url = "https://login.example"\n')
    environ = {name: value for name, value in BASE.items() if name != "ISSUER_URL"}
    assert load({**environ, "ISSUER_CONFIG": str(path)}).url == "https://login.example"


@pytest.mark.parametrize(
    "url",
    [
        "http://login.example",
        "http://10.0.0.5:8000",
        "http://0.0.0.0:8000",
        "http://127.0.0.1.example.com",
        "http://localhost.example.com:8000",
    ],
)
def test_production_refuses_plain_http_off_loopback(url: str) -> None:
    message = config_error({**BASE, "ISSUER_URL": url})
    assert message.startswith("ISSUER_URL: must be https:// in production")


@pytest.mark.parametrize(
    "url",
    [
        "https://login.example",
        "https://login.example:8443/issuer",
        "http://127.0.0.1:8000",
        "http://127.8.9.10",
        "http://localhost:8000",
        "http://LOCALHOST",
        "http://[::1]:8000",
    ],
)
def test_production_takes_https_and_loopback_http(url: str) -> None:
    assert load({**BASE, "ISSUER_URL": url}).url == url


def test_development_keeps_the_default_url_and_any_http_url() -> None:
    assert load({"ISSUER_ENV": "development"}).url == "http://127.0.0.1:8000"
    lan = load({"ISSUER_ENV": "development", "ISSUER_URL": "http://devbox.lan:8000"})
    assert lan.url == "http://devbox.lan:8000"


# -- metrics are read with a token only


def test_metrics_without_a_token_are_refused() -> None:
    message = config_error({**BASE, "ISSUER_METRICS": "1"})
    assert message.startswith("ISSUER_METRICS_TOKEN: must be set when ISSUER_METRICS is on")


@pytest.mark.parametrize("token", ["short", "x" * 31, "a" * 20 + " " + "b" * 20])
def test_a_weak_metrics_token_is_refused_without_echoing_it(token: str) -> None:
    message = config_error({**BASE, "ISSUER_METRICS": "1", "ISSUER_METRICS_TOKEN": token})
    assert message.startswith("ISSUER_METRICS_TOKEN")
    assert token.strip() not in message


def test_the_metrics_token_stays_out_of_the_repr() -> None:
    settings = load({**BASE, "ISSUER_METRICS": "1", "ISSUER_METRICS_TOKEN": METRICS_TOKEN})
    assert settings.metrics_token == METRICS_TOKEN
    assert METRICS_TOKEN not in repr(settings)


def test_production_never_emulates() -> None:
    settings = load({**BASE, "ISSUER_ENV": "production"})
    assert settings.emulate_wechat is False
    assert settings.wechat_api_base == "https://api.weixin.qq.com"


# -- start-up and secrets


@pytest.mark.parametrize(
    ("bad", "variable"),
    [
        ({"leeway": 31}, "ISSUER_LEEWAY"),
        ({"signing_alg": "none"}, "ISSUER_SIGNING_ALG"),
        ({"database_url": "postgresql://db.example/issuer?bogus=1"}, "ISSUER_DATABASE_URL"),
        ({"data_key": "c2hvcnQ="}, "ISSUER_DATA_KEY"),
        ({"apps": []}, "ISSUER_WECHAT_APPID"),
    ],
)
def test_create_app_stops_before_touching_anything(
    tmp_path: Path, bad: dict[str, Any], variable: str
) -> None:
    keys_dir = tmp_path / "keys"
    database = tmp_path / "issuer.db"
    config: dict[str, Any] = {
        "keys_dir": str(keys_dir),
        "database_url": f"sqlite:///{database}",
        "url": "https://login.example",
        "apps": [{"appid": APPID, "secret": SECRET}],
        **bad,
    }
    with pytest.raises(StartupError) as caught:
        create_app(config, environ={})
    assert isinstance(caught.value, ConfigError)
    message = str(caught.value)
    assert "\n" not in message
    assert variable in message
    assert not keys_dir.exists()
    assert not database.exists()


def test_secrets_never_appear_in_the_repr_of_settings(tmp_path: Path) -> None:
    file_secret = "file-secret-7d1c0b3a2f"
    digit_secret = 98765432109876543210987654321
    data_key = bytes(range(100, 132))
    path = write_toml(
        tmp_path,
        f'[[apps]]\nappid = "{APPID2}"\nsecret = "{file_secret}"\n\n'
        f'[[apps]]\nappid = "{APPID3}"\nsecret = {digit_secret}\n',
    )
    environ = {
        **BASE,
        "ISSUER_CONFIG": str(path),
        "ISSUER_DATA_KEY": base64.b64encode(data_key).decode(),
    }
    settings = load(environ)
    assert settings.data_key == data_key
    for text in (repr(settings), str(settings), repr(settings.apps)):
        assert APPID in text  # the repr is there and shows the apps ...
        for secret in (SECRET, file_secret, str(digit_secret), environ["ISSUER_DATA_KEY"]):
            assert secret not in text  # ... but none of their secrets
        assert repr(data_key) not in text
