"""The start-up line: what a start serves with (environment, URL, apps, database, rate-limit
storage, signing kid), once, and never a secret."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from issuer import create_app, log_startup
from issuer.config import load_settings
from issuer.logs import redact_url
from tests.conftest import APPID, SECRET

PG_PASSWORD = "pg-pass-9f8e7d"
REDIS_PASSWORD = "redis-pass-6c5b4a"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///instance/issuer.db", "sqlite:///instance/issuer.db"),
        ("sqlite:////var/lib/issuer/issuer.db", "sqlite:////var/lib/issuer/issuer.db"),
        ("memory://", "memory://"),
        (f"postgresql://issuer:{PG_PASSWORD}@db:5432/issuer", "postgresql://issuer:***@db:5432/issuer"),
        (f"postgres://issuer:{PG_PASSWORD}@db/x?sslmode=require", "postgres://issuer:***@db/x?sslmode=require"),
        (f"postgresql://db/x?user=i&password={PG_PASSWORD}", "postgresql://db/x?user=i&password=***"),
        (f"postgresql://i:{PG_PASSWORD}@db/x?sslpassword=k{PG_PASSWORD}", "postgresql://i:***@db/x?sslpassword=***"),
        (f"redis://:{REDIS_PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"rediss://default:{REDIS_PASSWORD}@[::1]:6380/0", "rediss://default:***@[::1]:6380/0"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        (f"redis://u:p@ss{REDIS_PASSWORD}@cache:6379/0", "redis://u:***@cache:6379/0"),
    ],
)  # fmt: skip
def test_urls_are_logged_without_their_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_line_names_what_runs_and_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(
        {
            "url": "https://login.example",
            "database_url": f"postgresql://issuer:{PG_PASSWORD}@db:5432/issuer",
            "ratelimit_storage_uri": f"redis://:{REDIS_PASSWORD}@cache:6379/0",
            "proxy_hops": 1,
            "apps": [
                {"appid": APPID, "secret": SECRET},
                {
                    "appid": "wx2222222222222222",
                    "secret": "oa-" + SECRET,
                    "kind": "officialaccount",
                },
            ],
        },
        environ={},
    )
    logger = logging.getLogger("issuer.test-startup")
    with caplog.at_level(logging.INFO, logger="issuer"):
        log_startup(logger, settings, "kid-123")
    (record,) = caplog.records
    line = record.getMessage()
    for part in (
        "env=production",
        "url=https://login.example",
        f"{APPID} (miniprogram)",
        "wx2222222222222222 (officialaccount)",
        "database=postgresql://issuer:***@db:5432/issuer",
        "ratelimit_storage=redis://:***@cache:6379/0",
        "proxy_hops=1",
        "metrics=off",
        "signing_kid=kid-123",
    ):
        assert part in line, (part, line)
    for secret in (SECRET, PG_PASSWORD, REDIS_PASSWORD):
        assert secret not in line


def started_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("issuer started")]


def test_entry_points_log_it_once_and_other_uses_do_not(
    settings_for: Callable[..., dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="issuer"):
        app: Flask = create_app(settings_for(), environ={})  # a test, a CLI command
        assert started_lines(caplog) == []
        create_app(settings_for(), environ={}, entry="wsgi")
    (line,) = started_lines(caplog)
    kid = app.extensions["issuer"].keys().active.kid
    assert f"signing_kid={kid}" in line
    assert "url=https://issuer.test" in line
