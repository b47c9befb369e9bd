"""Fixtures: a real loopback WeChat (the emulator on its own port), apps on real SQLite files,
live servers (threaded Werkzeug, or real gunicorn), and a controllable clock.

Test keys are generated per test session into a temporary directory, never read from keys/.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, make_server

from issuer import create_app
from issuer.wechat.emulator import WeChatEmulator
from tests.pgserver import postgres_server  # noqa: F401
from tests.processes import free_port, stop_process
from tests.redisserver import redis_factory, redis_server, redis_url  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
APPID = "wx1111111111111111"
APPID2 = "wx2222222222222222"
SECRET = secrets.token_hex(16)
SECRET2 = "12345678901234567890123456789012"  # all digits: must stay a string


def all_at_once(calls: Sequence[Callable[[], Any]], timeout: float = 30) -> list[Any]:
    """Run every call in a thread of its own, all released together by a barrier.

    :returns: per call, what it returned or the exception it raised.
    """
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait(timeout=timeout)
        try:
            outcomes[index] = calls[index]()
        except BaseException as error:  # reported to the caller, not lost in the thread
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * timeout)
    return outcomes


def require_node(minimum: int, purpose: str) -> str:
    """The path of ``node``, at least version ``minimum``; the test fails (never skips) when
    it is missing or older: ``make test`` installs it."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            f"node is not on PATH: {purpose} needs Node.js {minimum}+; make test installs it"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()
    match = re.fullmatch(r"v(\d+)\..*", version)
    if match is None or int(match.group(1)) < minimum:
        pytest.fail(f"{node} is {version or 'unknown'}: {purpose} needs Node.js {minimum}+")
    return node


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ServerThread:
    """A WSGI app on a loopback port, served by a threaded Werkzeug server."""

    def __init__(self, app: Any) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll interval: shutdown() waits up to one interval, 0.5 s by default.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[tuple[WeChatEmulator, str]]:
    emulator = WeChatEmulator({APPID: SECRET, APPID2: SECRET2})
    server = ServerThread(emulator.app)
    yield emulator, server.url
    server.stop()


@pytest.fixture
def wechat(emulator_server: tuple[WeChatEmulator, str]) -> Iterator[WeChatEmulator]:
    """The loopback WeChat, with no faults pending and an empty call log."""
    emulator, _ = emulator_server
    emulator.clear_faults()
    emulator.calls.clear()
    yield emulator
    emulator.clear_faults()


@pytest.fixture
def wechat_url(emulator_server: tuple[WeChatEmulator, str]) -> str:
    return emulator_server[1]


@pytest.fixture(scope="session")
def session_keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- the database: SQLite by default; both backends for tests marked `stores`

BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stores: run the test once per database backend (SQLite and PostgreSQL)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``stores`` that uses the database (``database_url``, directly or through
    the app fixtures) runs on each backend; every other test keeps SQLite alone."""
    if metafunc.definition.get_closest_marker("stores") and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS)


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's empty database: a SQLite file in tmp_path, or a fresh schema of the
    session's throwaway PostgreSQL (started only when a test needs it)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'issuer.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    with server.fresh_schema() as url:
        yield url


@pytest.fixture
def settings_for(
    tmp_path: Path, wechat_url: str, session_keys_dir: Path, database_url: str
) -> Callable[..., dict[str, Any]]:
    """Settings for a test app: loopback WeChat, the test's database, session keys."""

    def build(**overrides: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "env": "production",
            "url": "https://issuer.test",
            "database_url": database_url,
            "keys_dir": str(session_keys_dir),
            "wechat_api_base": wechat_url,
            "wechat_timeout": 2,
            "apps": [{"appid": APPID, "secret": SECRET}],
            "ratelimit_login": "10000/minute",
            "ratelimit_refresh": "10000/minute",
            "ratelimit_me": "10000/minute",
            "ratelimit_wechat": "10000/minute",
            "ratelimit_wechat_user": "10000/minute",
            "ratelimit_wechat_app": "10000/minute",
            # Read only when a test turns metrics on (``metrics=True``).
            "metrics_token": secrets.token_urlsafe(32),
        }
        config.update(overrides)
        return config

    return build


@pytest.fixture
def app_factory(
    settings_for: Callable[..., dict[str, Any]], clock: FakeClock
) -> Callable[..., Flask]:
    """``app_factory(**settings)``: an app with the test settings plus these overrides."""

    def build(**overrides: Any) -> Flask:
        app = create_app(settings_for(**overrides), clock=clock, environ={})
        app.config["TESTING"] = True
        return app

    return build


@pytest.fixture
def app(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def login(client: FlaskClient, wechat: WeChatEmulator) -> Callable[..., dict[str, Any]]:
    """``login(user="alice")``: a fresh wx.login code for the user, exchanged; the body."""

    def do(user: str | None = None, appid: str = APPID, **fields: Any) -> dict[str, Any]:
        code = wechat.mint_code(appid, user)
        response = client.post("/auth/login", json={"code": code, **fields})
        assert response.status_code == 200, response.get_json()
        body: dict[str, Any] = response.get_json()
        return body

    return do


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The test app on a real loopback port."""
    server = ServerThread(app)
    yield server.url
    server.stop()


@pytest.fixture
def self_named_server(app_factory: Callable[..., Flask]) -> Iterator[str]:
    """A live issuer whose ``ISSUER_URL`` is its own loopback address, as in production: the
    ``iss`` of its tokens and the endpoints its discovery document names are what a client
    reaches."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = make_server("127.0.0.1", port, app_factory(url=url), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    yield url
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def dev_server(tmp_path: Path, session_keys_dir: Path) -> Iterator[str]:
    """A development-mode issuer (embedded WeChat emulator) on a real loopback port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(
        {
            "env": "development",
            "url": url,
            "database_url": f"sqlite:///{tmp_path / 'dev.db'}",
            "keys_dir": str(session_keys_dir),
        },
        environ={},
    )
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()
    server.server_close()


# -- real gunicorn


class Gunicorn:
    """A real gunicorn master running ``wsgi:app`` with the repo's gunicorn.conf.py.

    Its output goes to a file (a pipe nobody reads would fill up and stall the server).
    """

    def __init__(self, env: dict[str, str], log_path: Path, *, workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ISSUER_")},
            **env,
            "WEB_CONCURRENCY": str(workers),
            "ISSUER_BIND": f"127.0.0.1:{self.port}",
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Gunicorn:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: one killpg can take master and workers down at once.
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 30) -> Gunicorn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.output()}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"gunicorn not ready:\n{self.output()}")

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> str:
        if self.process is not None:
            stop_process(self.process, timeout=15)
        return self.output()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def gunicorn_env(tmp_path: Path, wechat_url: str) -> dict[str, str]:
    """Environment for a production issuer under gunicorn, on files in tmp_path."""
    return {
        "ISSUER_URL": "https://issuer.test",
        "ISSUER_DATABASE_URL": f"sqlite:///{tmp_path / 'issuer.db'}",
        "ISSUER_KEYS_DIR": str(tmp_path / "keys"),
        "ISSUER_WECHAT_API_BASE": wechat_url,
        "ISSUER_WECHAT_APPID": APPID,
        "ISSUER_WECHAT_SECRET": SECRET,
        "ISSUER_RATELIMIT_LOGIN": "10000/minute",
        "ISSUER_RATELIMIT_REFRESH": "10000/minute",
        "ISSUER_RATELIMIT_ME": "10000/minute",
        "ISSUER_RATELIMIT_WECHAT": "10000/minute",
        "ISSUER_RATELIMIT_WECHAT_USER": "10000/minute",
        "ISSUER_RATELIMIT_WECHAT_APP": "10000/minute",
    }


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """``gunicorn(env, workers=2)``: a started, ready gunicorn; stopped after the test."""
    started: list[Gunicorn] = []

    def start(env: dict[str, str], *, workers: int = 2, ready: bool = True) -> Gunicorn:
        log_path = tmp_path / f"gunicorn-{len(started)}.log"
        server = Gunicorn(env, log_path, workers=workers).start()
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in started:
        server.stop()
