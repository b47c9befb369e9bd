"""Real gunicorn masters (gthread workers, ``preload_app``) running ``wsgi:app``.

What only a multi-process server shows: refresh-token spending that stays atomic across
worker processes (SPEC §3), exactly one signing key when several masters start on one empty
keys directory (SPEC §4), tokens that verify across instances sharing keys and database,
start-up that stops with one line naming a bad setting (SPEC §7), and production logs that are
JSON lines carrying no secret (SPEC §2, §10).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, SECRET, Gunicorn, all_at_once
from tests.workers import sessions_across_workers, worker_pids

pytestmark = pytest.mark.slow

StartGunicorn = Callable[..., Gunicorn]
TIMEOUT = 10


def log_in(server: Gunicorn, wechat: WeChatEmulator, user: str, **headers: str) -> dict[str, Any]:
    code = wechat.mint_code(APPID, user)
    response = requests.post(
        server.url + "/auth/login", json={"code": code}, headers=headers, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refresh(server: Gunicorn, refresh_token: str) -> requests.Response:
    return requests.post(
        server.url + "/auth/refresh", json={"refresh_token": refresh_token}, timeout=TIMEOUT
    )


def race_refresh(server: Gunicorn, refresh_token: str, n: int) -> list[requests.Response]:
    """``n`` threads on connections held by different workers release one refresh together."""
    sessions = sessions_across_workers(server, n)
    answers = all_at_once(
        [
            functools.partial(
                session.post,
                server.url + "/auth/refresh",
                json={"refresh_token": refresh_token},
                timeout=TIMEOUT,
            )
            for session in sessions
        ],
        timeout=TIMEOUT,
    )
    for session in sessions:
        session.close()
    responses = [answer for answer in answers if isinstance(answer, requests.Response)]
    assert len(responses) == n, answers
    return responses


def published_kids(server: Gunicorn) -> list[str]:
    response = requests.get(server.url + "/.well-known/jwks.json", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return [key["kid"] for key in response.json()["keys"]]


# -- 1. concurrent refresh of one token across worker processes


N_RACERS = 16


def test_concurrent_refresh_without_grace_rotates_exactly_once(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str], wechat: WeChatEmulator
) -> None:
    server = gunicorn({**gunicorn_env, "ISSUER_REFRESH_REUSE_GRACE": "0"}, workers=2)
    first = log_in(server, wechat, "racer-no-grace")

    responses = race_refresh(server, first["refresh_token"], N_RACERS)

    winners = [r for r in responses if r.status_code == 200]
    losers = [r for r in responses if r.status_code != 200]
    assert len(winners) == 1, [(r.status_code, r.text) for r in responses]
    for response in losers:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_grant", response.text
    # With no grace, a second spend of the token is reuse: the whole session is revoked,
    # including the successor the winner received (SPEC §3, RFC 9700 §4.14.2).
    successor = winners[0].json()["refresh_token"]
    assert successor != first["refresh_token"]
    late = refresh(server, successor)
    assert late.status_code == 400, late.text
    assert late.json()["error"] == "invalid_grant"


def test_concurrent_refresh_within_grace_never_forks_the_chain(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str], wechat: WeChatEmulator
) -> None:
    server = gunicorn(gunicorn_env, workers=2)  # default grace: 10 s
    first = log_in(server, wechat, "racer-grace")

    responses = race_refresh(server, first["refresh_token"], N_RACERS)

    assert [r.status_code for r in responses] == [200] * N_RACERS, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    successors = {body["refresh_token"] for body in bodies}
    assert len(successors) == 1, "the refresh chain forked"
    (successor,) = successors
    assert successor != first["refresh_token"]
    # Each answer carries a fresh access token (a new jti) for the one successor.
    assert len({body["access_token"] for body in bodies}) == N_RACERS
    assert all(body["user_id"] == first["user_id"] for body in bodies)
    assert not any(body["is_new_user"] for body in bodies)

    again = refresh(server, successor)
    assert again.status_code == 200, again.text
    assert again.json()["refresh_token"] not in (successor, first["refresh_token"])


# -- 2. several masters on one empty keys directory make exactly one key


def key_files(keys_dir: Path) -> list[Path]:
    return sorted(
        [*keys_dir.glob("signing-*.pem"), *keys_dir.glob("data-*.key"), keys_dir / "keyring.json"]
    )


# Python start-up and imports take a few hundred milliseconds, varying by more than an ES256
# key takes to make: masters merely launched together would seldom overlap at the key files.
# This ``sitecustomize`` (found through PYTHONPATH, in the servers only) is a barrier at the
# start of ``KeyDirectory.load``: each master checks in and waits for all the others, so they
# all look at the empty directory within a millisecond. Nothing else in the server changes.
KEY_RACE_SITECUSTOMIZE = """
import os
import time
from pathlib import Path

import issuer.keys

_load = issuer.keys.KeyDirectory.load
_barrier = Path(os.environ["KEY_RACE_BARRIER"])
_parties = int(os.environ["KEY_RACE_PARTIES"])


def load(self, *args, **kwargs):
    (_barrier / f"arrived-{os.getpid()}").touch()
    deadline = time.monotonic() + 20
    while len(list(_barrier.glob("arrived-*"))) < _parties and time.monotonic() < deadline:
        time.sleep(0.0005)
    return _load(self, *args, **kwargs)


issuer.keys.KeyDirectory.load = load
"""
MASTERS = 3


def test_masters_starting_together_make_exactly_one_signing_key(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str], tmp_path: Path
) -> None:
    keys_dir = Path(gunicorn_env["ISSUER_KEYS_DIR"])
    keys_dir.mkdir(mode=0o700)
    assert not any(keys_dir.iterdir())
    sync = tmp_path / "sync"
    sync.mkdir()
    (sync / "sitecustomize.py").write_text(KEY_RACE_SITECUSTOMIZE)
    race_env = {
        **gunicorn_env,
        "PYTHONPATH": str(sync),
        "KEY_RACE_BARRIER": str(sync),
        "KEY_RACE_PARTIES": str(MASTERS),
    }

    servers = [gunicorn(race_env, workers=2, ready=False) for _ in range(MASTERS)]
    for server in servers:
        server.wait_ready()
    assert len(list(sync.glob("arrived-*"))) == MASTERS, "the masters did not meet"

    signing_files = list(keys_dir.glob("signing-*.pem"))
    assert len(signing_files) == 1, sorted(path.name for path in keys_dir.iterdir())
    manifest = json.loads((keys_dir / "keyring.json").read_text())
    kids = [entry["kid"] for entry in manifest["signing"]]
    assert len(kids) == 1, manifest
    (kid,) = kids
    assert signing_files[0].name == f"signing-{kid}.pem"
    assert len(list(keys_dir.glob("data-*.key"))) == 1
    assert not list(keys_dir.glob(".*.tmp")), "a temporary key file was left behind"

    for server in servers:
        for _ in range(4):  # several requests, so both workers are likely asked
            assert published_kids(server) == [kid]

    for path in key_files(keys_dir):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path.name} has mode {mode:o}"

    for server in servers:
        server.stop()
    restarted = gunicorn(gunicorn_env, workers=2)
    assert published_kids(restarted) == [kid]
    assert len(list(keys_dir.glob("signing-*.pem"))) == 1


# -- 3. instances sharing keys and database accept each other's tokens


def test_token_from_one_instance_verifies_at_another(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str], wechat: WeChatEmulator
) -> None:
    server_a = gunicorn(gunicorn_env, workers=2)
    server_b = gunicorn(gunicorn_env, workers=2)
    assert published_kids(server_a) == published_kids(server_b)

    pair = log_in(server_a, wechat, "roamer")
    me = requests.get(
        server_b.url + "/me",
        headers={"Authorization": f"Bearer {pair['access_token']}"},
        timeout=TIMEOUT,
    )
    assert me.status_code == 200, me.text
    assert me.json()["user_id"] == pair["user_id"]

    # The refresh chain lives in the shared database: B rotates what A issued.
    rotated = refresh(server_b, pair["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["user_id"] == pair["user_id"]


# -- 4. a bad setting stops start-up at once, with one line naming it


def assert_refuses_to_start(gunicorn: StartGunicorn, env: dict[str, str], setting: str) -> None:
    started = time.monotonic()
    server = gunicorn(env, workers=2, ready=False)
    try:
        status = server.wait_exit(timeout=15)
    except Exception:
        pytest.fail(f"gunicorn did not exit on a bad {setting}:\n{server.stop()}")
    elapsed = time.monotonic() - started
    output = server.output()
    assert status != 0, output
    assert elapsed < 10, f"took {elapsed:.1f} s to give up"
    assert any(setting in line for line in output.splitlines()), output
    assert "Traceback" not in output, output


def test_malformed_setting_stops_startup_with_one_line(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str]
) -> None:
    assert_refuses_to_start(
        gunicorn, {**gunicorn_env, "ISSUER_ACCESS_TOKEN_TTL": "abc"}, "ISSUER_ACCESS_TOKEN_TTL"
    )


def test_production_without_an_app_stops_startup_with_one_line(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str]
) -> None:
    env = {
        name: value
        for name, value in gunicorn_env.items()
        if name not in ("ISSUER_WECHAT_APPID", "ISSUER_WECHAT_SECRET")
    }
    assert_refuses_to_start(gunicorn, env, "ISSUER_WECHAT_APPID")


# -- 5. production logs: JSON lines, and never a secret


GUNICORN_ERROR_LINE = re.compile(r"^\[[^\]]+\] \[\d+\] \[[A-Z]+\] ")
GUNICORN_ACCESS_LINE = re.compile(r'^127\.0\.0\.1 "[A-Z]+ /')


def test_production_logs_are_json_lines_without_secrets(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str], wechat: WeChatEmulator
) -> None:
    # The secret looked for below is the one the server runs with (one conftest module).
    assert gunicorn_env["ISSUER_WECHAT_SECRET"] == SECRET
    server = gunicorn(gunicorn_env, workers=2)
    code = wechat.mint_code(APPID, "careful-user")
    login = requests.post(
        server.url + "/auth/login",
        json={"code": code},
        headers={"X-Request-ID": "login-req-1"},
        timeout=TIMEOUT,
    )
    assert login.status_code == 200, login.text
    pair = login.json()
    me = requests.get(
        server.url + "/me",
        headers={"Authorization": f"Bearer {pair['access_token']}"},
        timeout=TIMEOUT,
    )
    assert me.status_code == 200, me.text
    openid = me.json()["openid"]
    session_key = wechat.session_key(APPID, openid)
    assert session_key
    rotated = refresh(server, pair["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    successor = rotated.json()
    logout = requests.post(
        server.url + "/auth/logout",
        json={"refresh_token": successor["refresh_token"]},
        timeout=TIMEOUT,
    )
    assert logout.status_code == 204, logout.text

    output = server.stop()  # every line flushed
    lines = [line for line in output.splitlines() if line.strip()]
    json_lines = [line for line in lines if line.startswith("{")]
    assert json_lines, output
    entries = []
    for line in json_lines:
        entry = json.loads(line)  # a partial or multi-line entry would fail here
        assert isinstance(entry, dict), line
        entries.append(entry)
    # Nothing else: issuer lines are never plain text next to gunicorn's own lines.
    others = [
        line
        for line in lines
        if not line.startswith("{")
        and not GUNICORN_ERROR_LINE.match(line)
        and not GUNICORN_ACCESS_LINE.match(line)
    ]
    assert not others, others
    # issuer's lines, and gunicorn's own (which are JSON too: gunicorn.conf.py).
    loggers = {entry.get("logger", "") for entry in entries}
    assert all(name.startswith(("issuer", "gunicorn.error")) for name in loggers), loggers
    assert any(name.startswith("issuer") for name in loggers), loggers
    assert any(entry.get("request_id") == "login-req-1" for entry in entries), entries

    secrets = {
        "app secret": SECRET,
        "login code": code,
        "session_key": session_key,
        "access token": pair["access_token"],
        "refresh token": pair["refresh_token"],
        "second access token": successor["access_token"],
        "rotated refresh token": successor["refresh_token"],
    }
    for name, value in secrets.items():
        assert value not in output, f"the {name} is in the log"


def test_variables_of_the_repos_gunicorn_conf_are_not_reported_as_unknown(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str]
) -> None:
    # gunicorn.conf.py reads ISSUER_BIND and ISSUER_THREADS: they are not ignored, and a
    # start-up warning saying so sends the operator hunting for a mistake that is not there.
    server = gunicorn({**gunicorn_env, "ISSUER_THREADS": "4"}, workers=1)
    output = server.stop()
    warnings = [line for line in output.splitlines() if "unknown setting ISSUER_" in line]
    assert not warnings, warnings


# -- 6. gunicorn's own lines are JSON too, and one start-up line says what runs


def json_entries(output: str) -> list[dict[str, Any]]:
    """Every non-empty line of the output, parsed: any line that is not a JSON object fails."""
    entries = []
    for line in output.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n{output}")
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def test_every_line_at_start_worker_kill_and_shutdown_is_json(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str]
) -> None:
    server = gunicorn(gunicorn_env, workers=2)
    (killed, *_) = sorted(worker_pids(server))
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while killed in worker_pids(server) or len(worker_pids(server)) < 2:
        assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
        time.sleep(0.05)
    server.wait_ready()
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    output = server.output()
    entries = json_entries(output)
    gunicorn_lines = [entry["message"] for entry in entries if entry["logger"] == "gunicorn.error"]
    # What the lines are about: gunicorn's start, the kill, the new worker, the shutdown.
    for expected in ("Listening at", "Booting worker", "Shutting down"):
        assert any(expected in line for line in gunicorn_lines), (expected, gunicorn_lines)
    assert any(str(killed) in line and "SIGKILL" in line for line in gunicorn_lines), output
    assert sum("Booting worker" in line for line in gunicorn_lines) >= 3, gunicorn_lines
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)


def test_one_start_up_line_in_the_master_names_what_runs_and_no_secret(
    gunicorn: StartGunicorn, gunicorn_env: dict[str, str], tmp_path: Path
) -> None:
    server = gunicorn(gunicorn_env, workers=2)
    kid = published_kids(server)[0]
    output = server.stop()
    messages = [entry["message"] for entry in json_entries(output)]
    started = [index for index, text in enumerate(messages) if "issuer started" in text]
    assert len(started) == 1, messages  # once, not once per worker ...
    booting = [index for index, text in enumerate(messages) if "Booting worker" in text]
    assert started[0] < booting[0], messages  # ... by the master, before the fork
    line = messages[started[0]]
    for part in (
        "env=production",
        "url=https://issuer.test",
        f"{APPID} (miniprogram)",
        f"database=sqlite:///{tmp_path / 'issuer.db'}",
        "ratelimit_storage=memory://",
        f"signing_kid={kid}",
    ):
        assert part in line, (part, line)
    assert SECRET not in output
