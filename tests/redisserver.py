"""A throwaway Redis for the tests: ``redis-server`` on 127.0.0.1 and a free port, in a
temporary directory, with a password and no persistence; stopped and removed after the run.

Fixtures (imported by ``conftest.py``):

- ``redis_server``: one server for the whole run;
- ``redis_url``: its URI (password included), with every database flushed before the test, so
  each test starts from an empty keyspace;
- ``redis_factory``: ``redis_factory()`` starts a server of the test's own, which the test may
  stop, start again on the same port, or freeze (SIGSTOP) to play an outage; stopped after it.

``redis-server`` comes from Debian's ``redis-server`` package, which ``make test`` installs:
when it is missing the tests that need it fail, saying so; they never skip.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.processes import free_port, stop_process

START_TIMEOUT = 10


def redis_server_binary() -> str:
    """The path of ``redis-server``; the test fails (never skips) when it is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH: the Redis rate-limit tests need it; "
            "make test installs it (Debian's redis-server package)"
        )
    return binary


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, configured by a file in ``directory``.

    The password lives in that file, not on the command line, where ``ps`` would show it.
    """

    def __init__(self, directory: Path, *, databases: int = 16) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.databases = databases
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket (it listens there as well as on its port)."""
        return self.directory / "redis.sock"

    def url(self, db: int = 0, *, password: str | None = None, query: str = "") -> str:
        """``redis://:password@127.0.0.1:port/db`` (the server's password unless given)."""
        secret = self.password if password is None else password
        userinfo = f":{secret}@" if secret else ""
        return f"redis://{userinfo}127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            password=self.password,
            socket_timeout=2,
            socket_connect_timeout=2,
        )

    def start(self) -> RedisServer:
        """Start (or start again, on the same port) and wait until it answers PING."""
        config = self.directory / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"unixsocket {self.socket_path}",
                    "unixsocketperm 700",
                    f"dir {self.directory}",
                    'save ""',  # no snapshots ...
                    "appendonly no",  # ... and no append-only file: nothing outlives a stop
                    f"requirepass {self.password}",
                    f"databases {self.databases}",
                    "daemonize no",
                    f"logfile {self.log_path}",
                    "",
                ]
            )
        )
        config.chmod(0o600)
        self.process = subprocess.Popen(
            [redis_server_binary(), str(config)],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        with self.client() as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited:\n{self.log()}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"redis-server did not answer:\n{self.log()}")
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (thawing it first if frozen); its data is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a stopped process would not see SIGTERM
        stop_process(self.process, timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def stored_keys(self, pattern: str = "*") -> list[str]:
        with self.client() as client:
            return sorted(key.decode() for key in client.scan_iter(match=pattern))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    directory = tmp_path_factory.mktemp("redis")
    server = RedisServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URI (database 0), every database empty."""
    redis_server.flush()
    return redis_server.url()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``redis_factory(**options)``: a started server of this test's own; stopped after it."""
    started: list[RedisServer] = []

    def start(**options: int) -> RedisServer:
        directory = tmp_path / f"redis-{len(started)}"
        directory.mkdir()
        server = RedisServer(directory, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
