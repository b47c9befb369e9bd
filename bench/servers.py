"""The processes a load run talks to: real gunicorn masters with the repo's ``gunicorn.conf.py``
(issuer, the floor) and the WeChat stand-in, each on a free loopback port, each with its
output in a file (a pipe nobody reads would fill up and stall it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from .wechat import HOST

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
WORKERS = 2
# gunicorn's command line wins over its config file: the sync-worker floor's settings.
SYNC_WORKERS = ("--worker-class", "sync", "--threads", "1")
REQUEST_TIMEOUT = 10.0
APPID = "wx1111111111111111"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def call(
    port: int,
    method: str,
    path: str,
    payload: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (set-up and checks only, never timed)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    body = None if payload is None else json.dumps(payload).encode()
    sent = {**(headers or {})}
    if body is not None:
        sent["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def server_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of every server: this process's without its ``ISSUER_*`` settings
    (``ISSUER_THREADS`` excepted: it applies to all servers alike), plus ``env``, with
    :data:`WORKERS` workers."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ISSUER_", "BENCH_")) or key == "ISSUER_THREADS"
    }
    return {**inherited, **env, "WEB_CONCURRENCY": str(WORKERS)}


class Gunicorn:
    """A real gunicorn master with the repo's ``gunicorn.conf.py`` and :func:`server_env`."""

    def __init__(
        self,
        name: str,
        app: str,
        *,
        env: dict[str, str],
        ready_path: str,
        log_path: Path,
        argv: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.port = free_port()
        self.ready_path = ready_path
        self.log_path = log_path
        self.env_given = env
        self.argv = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), *argv, app]
        self.env = {**server_env(env), "ISSUER_BIND": f"{HOST}:{self.port}"}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Gunicorn:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 -- our own interpreter and arguments
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name}: gunicorn exited:\n{self.tail()}")

    def wait_ready(self, timeout: float = 60) -> Gunicorn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if call(self.port, "GET", self.ready_path)[0] == 200:
                    return self
            except (OSError, http.client.HTTPException):
                pass  # not listening yet
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: gunicorn not ready:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return children_of(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU so far of the master and its workers (live ones: a worker that
        exited takes its time with it, which a run without restarts never sees)."""
        assert self.process is not None
        total = 0.0
        for pid in (self.process.pid, *self.worker_pids()):
            with contextlib.suppress(OSError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        return total

    def worker_rss_mb(self) -> dict[int, float]:
        """VmRSS in MB of each worker (the master's children), by pid."""
        sizes = {}
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):  # a worker that just exited
                sizes[pid] = rss_mb(pid)
        return sizes


def issuer_env(
    work: Path, name: str, wechat_url: str, secret: str, database: Path
) -> dict[str, str]:
    """Environment of an issuer on ``database`` with keys in ``work``, WeChat at
    ``wechat_url``, and rate limits out of reach (they would measure the limit, not issuer)."""
    return {
        "ISSUER_URL": "http://127.0.0.1:8000",  # production names itself; loopback takes http
        "ISSUER_DATABASE_URL": f"sqlite:///{database}",
        "ISSUER_KEYS_DIR": str(work / f"{name}-keys"),
        "ISSUER_WECHAT_API_BASE": wechat_url,
        "ISSUER_WECHAT_APPID": APPID,
        "ISSUER_WECHAT_SECRET": secret,
        "ISSUER_RATELIMIT_LOGIN": "100000000/minute",
        "ISSUER_RATELIMIT_REFRESH": "100000000/minute",
        "ISSUER_RATELIMIT_ME": "100000000/minute",
        "ISSUER_RATELIMIT_WECHAT": "100000000/minute",
        "ISSUER_RATELIMIT_WECHAT_USER": "100000000/minute",
        "ISSUER_RATELIMIT_WECHAT_APP": "100000000/minute",
    }


class WeChatStandIn:
    """:mod:`bench.wechat` in its own process (so it shares no GIL with anything measured)."""

    def __init__(self, secret: str, code_key: bytes, log_path: Path) -> None:
        self.secret = secret
        self.code_key = code_key
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 30) -> WeChatStandIn:
        env = {
            **os.environ,
            "BENCH_WECHAT_APPID": APPID,
            "BENCH_WECHAT_SECRET": self.secret,
            "BENCH_WECHAT_CODE_KEY": self.code_key.hex(),
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.wechat"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        line = _read_line(self.process.stdout, timeout)
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the WeChat stand-in did not start: {line!r}")
        self.port = int(line)
        return self

    def set_latency(self, seconds: float) -> None:
        status, _, body = call(self.port, "POST", f"/bench/latency?seconds={seconds}")
        if status != 200:
            raise RuntimeError(f"the WeChat stand-in refused its latency: {body[:200]!r}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _read_line(stream: IO[bytes], timeout: float) -> str:
    """The first line of a child's stdout, waiting at most ``timeout`` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline().decode(errors="replace")


def children_of(parent: int) -> list[int]:
    """The pids whose parent is ``parent``, from /proc/<pid>/stat."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            children.append(int(entry.name))
    return sorted(children)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan
