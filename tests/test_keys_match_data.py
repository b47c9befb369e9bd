"""Key material must match the data (SPEC §7): a start whose data keys cannot open what the
database holds stops with one line, and never mints keys beside a database that has data.
SQLite and PostgreSQL (``stores``)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from issuer import StartupError, create_app
from issuer.keys.matching import check_value

from .conftest import FakeClock

pytestmark = pytest.mark.stores

Start = Callable[..., Flask]


@pytest.fixture
def start(settings_for: Callable[..., dict[str, Any]], clock: FakeClock) -> Start:
    def build(keys_dir: Path, **overrides: Any) -> Flask:
        app = create_app(settings_for(keys_dir=str(keys_dir), **overrides), clock=clock, environ={})
        app.config["TESTING"] = True
        return app

    return build


def refusal(start: Start, keys_dir: Path, **overrides: Any) -> str:
    with pytest.raises(StartupError) as caught:
        start(keys_dir, **overrides)
    message = str(caught.value)
    assert "\n" not in message
    assert "ISSUER_KEYS_DIR" in message
    assert "do not match the data" in message
    return message


def test_an_empty_keys_dir_beside_a_database_with_data_refuses_and_creates_nothing(
    start: Start, tmp_path: Path, login: Callable[..., dict[str, Any]], app: Flask
) -> None:
    login("alice")  # `app` (on the session's keys) now holds sealed rows
    empty = tmp_path / "not-the-keys"
    refusal(start, empty)
    assert not empty.exists()
    (empty).mkdir()
    refusal(start, empty)
    assert list(empty.iterdir()) == []


def test_another_deployments_keys_refuse(
    start: Start, tmp_path: Path, login: Callable[..., dict[str, Any]], app: Flask
) -> None:
    login("alice")
    other = tmp_path / "other-keys"
    start(other, database_url=f"sqlite:///{tmp_path / 'other.db'}")  # its own deployment
    message = refusal(start, other)
    assert "which neither ISSUER_KEYS_DIR nor ISSUER_DATA_KEY holds" in message


def test_a_lost_data_key_variable_refuses(
    start: Start, tmp_path: Path, wechat: Any, database_url: str
) -> None:
    keys_dir = tmp_path / "keys"
    data_key = base64.b64encode(os.urandom(32)).decode()
    app = start(keys_dir, data_key=data_key)
    response = app.test_client().post(
        "/auth/login", json={"code": wechat.mint_code("wx1111111111111111", "alice")}
    )
    assert response.status_code == 200, response.get_json()
    start(keys_dir, data_key=data_key)  # the same variable: fine
    message = refusal(start, keys_dir)  # the variable lost
    assert data_key not in message


def test_a_check_value_that_does_not_open_refuses(start: Start, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    app = start(keys_dir)
    store = app.extensions["issuer"].store
    (kid,) = store.data_key_checks()
    store.drop_data_key_check(kid)
    store.add_data_key_check(kid, check_value(os.urandom(32), kid), 0.0)
    message = refusal(start, keys_dir)
    assert "does not open its check value" in message


def test_first_start_records_a_check_value_not_the_key(start: Start, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    app = start(keys_dir)
    ring = app.extensions["issuer"].keys()
    checks = app.extensions["issuer"].store.data_key_checks()
    assert set(checks) == {ring.active_data_kid}
    assert ring.data_keys[ring.active_data_kid] not in checks[ring.active_data_kid]
    start(keys_dir)  # and a restart on the same keys matches


def test_readyz_reports_keys_that_stopped_matching(start: Start, tmp_path: Path) -> None:
    app = start(tmp_path / "keys")
    client = app.test_client()
    assert client.get("/readyz").get_json()["checks"]["keys_match_data"] == "ok"
    # Another process made a data key this one's directory does not hold.
    app.extensions["issuer"].store.add_data_key_check(
        "unknownkid000000", check_value(os.urandom(32), "unknownkid000000"), 0.0
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["keys_match_data"] == "no"
    assert "data keys do not match" in response.get_json()["error_description"]
