"""Which worker of a real gunicorn holds which client connection (Linux ``/proc``).

Tests that must reach two different workers -- racing refreshes, limits counted per worker,
metrics summed across workers, keys published by every worker -- open keep-alive connections
and ask the kernel which worker process holds the server side of each.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Gunicorn

TIMEOUT = 10


def worker_pids(server: Gunicorn) -> set[int]:
    """The master's children: its live workers."""
    assert server.process is not None
    master = server.process.pid
    return set(map(int, Path(f"/proc/{master}/task/{master}/children").read_text().split()))


def socket_owners(server: Gunicorn) -> dict[str, int]:
    """Socket inode -> the pid of the worker holding it."""
    owners: dict[str, int] = {}
    for pid in worker_pids(server):
        with contextlib.suppress(FileNotFoundError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owners[target[len("socket:[") : -1]] = pid
    return owners


def server_sockets(server: Gunicorn) -> Iterator[tuple[int, bool, str]]:
    """Each TCP socket on the server's port: (client port, established, inode)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == server.port:
            yield int(fields[2].rsplit(":", 1)[1], 16), fields[3] == "01", fields[9]


def worker_of(server: Gunicorn, connection: http.client.HTTPConnection) -> int:
    """The pid of the gunicorn worker holding the server side of ``connection``."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    inodes = [inode for port, _, inode in server_sockets(server) if port == client_port]
    assert inodes, "connection not found in /proc/net/tcp"
    owners = socket_owners(server)
    for inode in inodes:
        if inode in owners:
            return owners[inode]
    raise AssertionError(f"no worker of {server.process and server.process.pid} holds {inodes}")


def connection_owners(server: Gunicorn) -> collections.Counter[int]:
    """How many established client connections each worker process of ``server`` holds."""
    owners = socket_owners(server)
    return collections.Counter(
        owners[inode]
        for _, established, inode in server_sockets(server)
        if established and inode in owners
    )


@contextlib.contextmanager
def connections_to_two_workers(server: Gunicorn) -> Iterator[tuple[Any, Any]]:
    """Two keep-alive connections held by different worker processes."""
    opened: list[http.client.HTTPConnection] = []
    held: dict[int, http.client.HTTPConnection] = {}
    try:
        for _ in range(100):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
            opened.append(connection)  # all kept open, so the next one may go elsewhere
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            held.setdefault(worker_of(server, connection), connection)
            if len(held) == 2:
                break
        else:
            pytest.fail(f"100 connections, all held by worker {list(held)}")
        first, second = held.values()
        yield first, second
    finally:
        for connection in opened:
            connection.close()


def sessions_across_workers(server: Gunicorn, n: int) -> list[requests.Session]:
    """``n`` keep-alive connections, held by at least two worker processes between them."""
    for _ in range(20):
        sessions = [requests.Session() for _ in range(n)]
        barrier = threading.Barrier(n)

        def connect(session: requests.Session, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(timeout=TIMEOUT)
            session.get(server.url + "/healthz", timeout=TIMEOUT).raise_for_status()

        threads = [threading.Thread(target=connect, args=(session,)) for session in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=2 * TIMEOUT)
        owners = connection_owners(server)
        if len(owners) >= 2 and sum(owners.values()) == n:
            return sessions
        # A worker still booting (gunicorn spawns them a little apart), or the kernel
        # handed every connection to one worker: try again.
        for session in sessions:
            session.close()
        time.sleep(0.1)
    pytest.fail(f"could not spread {n} connections over two workers: {owners}")
