"""The operator CLI (SPEC §9), run in-process with click's CliRunner on files in tmp_path.

Rows are made by a real app (on the same database and keys directory) logging users in
through its test client against the loopback WeChat emulator. The commands that work on the
database run on SQLite and on PostgreSQL (``stores``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask

from issuer import create_app
from issuer.cli import main
from issuer.logs import configure_logging
from issuer.wechat.emulator import WeChatEmulator

from .conftest import APPID
from .pgserver import PostgresServer

COMMANDS = [
    [],
    ["dev"],
    ["keys"],
    ["keys", "init"],
    ["keys", "list"],
    ["keys", "rotate"],
    ["keys", "revoke"],
    ["data-key"],
    ["data-key", "rotate"],
    ["data-key", "drop-unused"],
    ["db", "upgrade"],
    ["prune"],
    ["users"],
    ["users", "show"],
    ["users", "revoke"],
]


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def cli_env(keys_dir: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith("ISSUER_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("FLASK_RUN_FROM_CLI", raising=False)  # FlaskGroup sets it
    return {
        "ISSUER_ENV": "development",
        "ISSUER_KEYS_DIR": str(keys_dir),
        "ISSUER_DATABASE_URL": database_url,
    }


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each command's app logs to the runner's stderr, which is closed afterwards."""
    yield
    configure_logging(json_lines=True)
    logging.getLogger("issuer").setLevel(logging.INFO)


@pytest.fixture
def run(cli_env: dict[str, str]) -> Callable[..., Result]:
    """``run("keys", "list", env={...})``: the command's result; output is stdout + stderr."""

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(main, list(args), env={**cli_env, **(env or {})})

    return invoke


def ok(result: Result) -> str:
    """What a command that succeeded printed (stdout: its logs and audit lines go to stderr)."""
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def audit_lines(result: Result) -> list[dict[str, Any]]:
    """The command's audit lines (JSON on stderr)."""
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "issuer.audit"]


def one_line_failure(result: Result) -> str:
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def key_table(run: Callable[..., Result]) -> dict[str, str]:
    """``keys list`` as kid -> state."""
    lines = ok(run("keys", "list")).strip().splitlines()
    assert lines[0].split()[:3] == ["kid", "alg", "state"]
    return {line.split()[0]: line.split()[2] for line in lines[1:]}


def active_kid(table: dict[str, str]) -> str:
    (kid,) = (kid for kid, state in table.items() if state == "active")
    return kid


@pytest.fixture
def issuer_app(settings_for: Callable[..., dict[str, Any]], keys_dir: Path) -> Flask:
    """A serving app on the CLI's database and keys directory, talking to loopback WeChat."""
    app = create_app(settings_for(keys_dir=str(keys_dir)), environ={})
    app.config["TESTING"] = True
    app.extensions["issuer"].keys.check_interval = 0
    return app


@pytest.fixture
def log_in(issuer_app: Flask, wechat: WeChatEmulator) -> Callable[[str], dict[str, Any]]:
    client = issuer_app.test_client()

    def do(user: str) -> dict[str, Any]:
        response = client.post("/auth/login", json={"code": wechat.mint_code(APPID, user)})
        assert response.status_code == 200, response.get_json()
        body: dict[str, Any] = response.get_json()
        return body

    return do


# -- help


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "-")
def test_every_command_has_help_with_nothing_configured(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("ISSUER_", "FLASK_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [*command, "--help"])
    output = ok(result)
    assert "Usage:" in output
    assert result.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_flasks_development_commands_and_debug_flag_are_not_offered(
    run: Callable[..., Result],
) -> None:
    listed = ok(run("--help"))
    for name in ("run", "shell", "routes"):
        assert not re.search(rf"^\s+{name}\b", listed, re.MULTILINE), listed
        assert run(name).exit_code == 2
    for flag in ("--debug", "--app"):
        assert flag not in listed
        assert run(flag, "dev").exit_code == 2


# -- signing keys


def test_keys_init_makes_one_active_key_and_list_shows_it(
    run: Callable[..., Result], keys_dir: Path
) -> None:
    result = run("keys", "init")
    ok(result)
    table = key_table(run)
    assert list(table.values()) == ["active"]
    assert (keys_dir / f"signing-{active_kid(table)}.pem").exists()
    (line,) = audit_lines(result)
    assert line["message"] == "keys init"
    assert line["kid"] == active_kid(table)
    data_key = (keys_dir / f"data-{line['data_kid']}.key").read_text().strip()
    assert data_key not in result.output
    line = one_line_failure(run("keys", "init"))
    assert "already holds keys" in line


def test_read_only_commands_create_nothing(
    run: Callable[..., Result], keys_dir: Path, tmp_path: Path
) -> None:
    database = tmp_path / "elsewhere" / "issuer.db"
    line = one_line_failure(run("keys", "list"))
    assert "holds no keys" in line
    assert not keys_dir.exists()
    env = {"ISSUER_DATABASE_URL": f"sqlite:///{database}"}
    line = one_line_failure(run("users", "show", "usr_x", env=env))
    assert "ISSUER_DATABASE_URL" in line
    assert not database.parent.exists()
    # Nor on an existing directory: not even a lock file.
    keys_dir.mkdir()
    one_line_failure(run("keys", "list"))
    assert list(keys_dir.iterdir()) == []


def test_keys_rotate_publishes_a_next_key_and_now_promotes_it(run: Callable[..., Result]) -> None:
    ok(run("keys", "init"))
    first = active_kid(key_table(run))

    result = run("keys", "rotate")
    output = ok(result)
    (new,) = re.findall(r"new key (\S+)", output)
    (line,) = audit_lines(result)
    assert (line["message"], line["kid"], line["now"]) == ("keys rotate", new, False)
    assert line["who"]
    assert line["time"]
    table = key_table(run)
    assert table == {first: "active", new: "next"}

    urgent_output = ok(run("keys", "rotate", "--now"))
    (urgent,) = re.findall(r"new key (\S+)", urgent_output)
    table = key_table(run)
    # The unsigned next key was replaced; the old active key is retired, still published.
    assert table == {first: "retired", urgent: "active"}


def test_keys_revoke_the_active_key_keeps_signing_with_another(
    run: Callable[..., Result], keys_dir: Path
) -> None:
    ok(run("keys", "init"))
    first = active_kid(key_table(run))
    output = ok(run("keys", "revoke", first))
    assert first in output
    table = key_table(run)
    assert active_kid(table) != first
    assert table[first] == "revoked"
    assert not (keys_dir / f"signing-{first}.pem").exists()


def test_keys_revoke_an_unknown_kid_fails_in_one_line(run: Callable[..., Result]) -> None:
    ok(run("keys", "init"))
    line = one_line_failure(run("keys", "revoke", "no-such-kid"))
    assert "no-such-kid" in line


def test_a_corrupt_key_directory_fails_every_command_in_one_line(
    run: Callable[..., Result], keys_dir: Path
) -> None:
    ok(run("keys", "init"))
    (keys_dir / "keyring.json").write_text("{not json")
    for command in (["keys", "list"], ["keys", "rotate"], ["prune"]):
        line = one_line_failure(run(*command))
        assert "keyring.json" in line
    assert (keys_dir / "keyring.json").read_text() == "{not json"


# -- data keys


@pytest.mark.stores
def test_data_key_rotate_reseals_existing_rows_and_drops_the_old_key(
    run: Callable[..., Result],
    log_in: Callable[[str], dict[str, Any]],
    issuer_app: Flask,
    keys_dir: Path,
) -> None:
    sessions = [log_in(user) for user in ("alice", "bob")]
    store = issuer_app.extensions["issuer"].store
    (old_kid,) = store.sealed_kid_counts()
    stored = sum(store.sealed_kid_counts().values())
    assert stored == 4  # two session keys, two session secrets

    output = ok(run("data-key", "rotate"))

    (new_kid,) = re.findall(r"new data key (\S+);", output)
    assert re.search(rf"\b{stored} stored secrets re-sealed", output), output
    assert store.sealed_kid_counts() == {new_kid: stored}
    assert sorted(path.name for path in keys_dir.glob("data-*.key")) == [f"data-{new_kid}.key"]
    assert new_kid != old_kid

    # The serving app follows: its sessions refresh, its users log in again.
    client = issuer_app.test_client()
    for body in sessions:
        refreshed = client.post("/auth/refresh", json={"refresh_token": body["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.get_json()
    assert log_in("alice")["is_new_user"] is False


def test_data_key_rotate_refuses_when_the_key_comes_from_the_environment(
    run: Callable[..., Result], keys_dir: Path
) -> None:
    ok(run("keys", "init"))
    files = sorted(path.name for path in keys_dir.iterdir())
    data_key = base64.b64encode(os.urandom(32)).decode()
    line = one_line_failure(run("data-key", "rotate", env={"ISSUER_DATA_KEY": data_key}))
    assert "ISSUER_DATA_KEY" in line
    assert data_key not in line
    assert sorted(path.name for path in keys_dir.iterdir()) == files


# -- database


@pytest.mark.stores
def test_db_upgrade_reports_the_schema_version(run: Callable[..., Result]) -> None:
    output = ok(run("db", "upgrade"))
    assert re.search(r"version \d+", output), output
    assert ok(run("db", "upgrade")) == output


@pytest.mark.parametrize(
    "command", [["db", "upgrade"], ["prune"], ["users", "show", "usr_x"]], ids=" ".join
)
def test_a_wrong_database_password_fails_in_one_line_without_it(
    run: Callable[..., Result], postgres_server: PostgresServer, command: list[str]
) -> None:
    password = "not-the/password"
    url = postgres_server.url(password=password)
    line = one_line_failure(run(*command, env={"ISSUER_DATABASE_URL": url}))
    assert "ISSUER_DATABASE_URL" in line
    assert "password authentication failed" in line
    assert password not in line
    assert "not-the%2Fpassword" not in line


@pytest.mark.stores
def test_prune_removes_a_logged_out_session(
    run: Callable[..., Result],
    log_in: Callable[[str], dict[str, Any]],
    issuer_app: Flask,
) -> None:
    gone = log_in("alice")
    kept = log_in("bob")
    client = issuer_app.test_client()
    assert (
        client.post("/auth/logout", json={"refresh_token": gone["refresh_token"]}).status_code
        == 204
    )

    output = ok(run("prune"))
    assert re.search(r"\b1 sessions\b", output), output
    assert re.search(r"\b0 sessions\b", ok(run("prune")))
    refreshed = client.post("/auth/refresh", json={"refresh_token": kept["refresh_token"]})
    assert refreshed.status_code == 200


# -- users


@pytest.mark.stores
def test_users_show_prints_identities_and_live_sessions_without_secrets(
    run: Callable[..., Result],
    log_in: Callable[[str], dict[str, Any]],
    wechat: WeChatEmulator,
) -> None:
    body = log_in("alice")
    log_in("alice")
    output = ok(run("users", "show", body["user_id"]))
    shown = json.loads(output)
    openid, unionid = wechat.identity(APPID, "alice")
    assert shown["user_id"] == body["user_id"]
    assert shown["unionid"] == unionid
    assert [(item["appid"], item["openid"]) for item in shown["identities"]] == [(APPID, openid)]
    assert shown["live_sessions"] == 2
    assert "session_key" not in output
    assert "secret" not in output
    session_key = wechat.session_key(APPID, openid)
    assert session_key is not None
    assert session_key not in output
    assert body["refresh_token"] not in output


@pytest.mark.stores
def test_users_show_an_unknown_user_fails_in_one_line(run: Callable[..., Result]) -> None:
    ok(run("db", "upgrade"))  # `users show` reads only: it makes no database
    line = one_line_failure(run("users", "show", "no-such-user"))
    assert "no-such-user" in line


@pytest.mark.parametrize(
    ("command", "what"), [(("keys", "revoke"), "kid"), (("users", "show"), "user")]
)
def test_an_id_that_starts_with_a_dash_is_an_id_not_an_option(run, command, what):
    # kids are base64url: about one in 64 begins with "-".
    ok(run("keys", "init"))
    ok(run("db", "upgrade"))
    line = one_line_failure(run(*command, "-Abc_123"))
    assert "-Abc_123" in line
    assert what in line
    assert "No such option" not in line
