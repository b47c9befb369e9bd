"""Serving processes and key changes (SPEC §9): every change is seen by every worker within
seconds or the command says it was not, and a worker that cannot read the key ring fails
closed. Workers here are real processes holding a :class:`KeyManager` (a request is a call to
it), some under another user; key changes go through the ``issuer`` command.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from issuer.cli import main
from issuer.keys import KeyDirectory, KeyPolicy
from issuer.keys.ring import MANIFEST

from .processes import stop_process

NOBODY = 65534
POLICY = KeyPolicy("ES256", jwks_max_age=300, rotation_days=30, retired_lifetime=905)

# A worker: the key ring of one process, asked for before every "request". It prints one line
# per change of what it serves: the active kid and every published kid, or "unavailable".
WORKER = """
import os, sys, time
from pathlib import Path
from issuer.keys import KeyDirectory, KeyManager, KeyPolicy
from issuer.keys.manager import KeyRingUnavailable

policy = KeyPolicy("ES256", jwks_max_age=300, rotation_days=30, retired_lifetime=905)
uid = int(sys.argv[2])
if uid != os.geteuid():
    os.setgid(uid)
    os.setuid(uid)
keys = KeyManager(KeyDirectory(Path(sys.argv[1])), policy, check_interval=0.2, create=False)
last = None
while True:
    try:
        ring = keys()
        now = "serving " + ring.active.kid + " " + ",".join(sorted(k.kid for k in ring.keys))
    except KeyRingUnavailable:
        now = "unavailable"
    if now != last:
        print(now, flush=True)
        last = now
    time.sleep(0.05)
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switches users")


@pytest.fixture
def keys_dir() -> Iterator[Path]:
    """A key directory another user can reach (tmp_path's parents are private to root)."""
    parent = Path(tempfile.mkdtemp(prefix="issuer-keys-"))
    parent.chmod(0o755)
    yield parent / "keys"
    shutil.rmtree(parent)


@pytest.fixture
def env(keys_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith("ISSUER_"):
            monkeypatch.delenv(name)
    return {
        "ISSUER_ENV": "development",
        "ISSUER_KEYS_DIR": str(keys_dir),
        "ISSUER_DATABASE_URL": f"sqlite:///{tmp_path / 'issuer.db'}",
    }


@pytest.fixture
def issuer(env: dict[str, str]) -> Callable[..., Result]:
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env)

    return invoke


class Worker:
    def __init__(self, keys_dir: Path, uid: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(keys_dir), str(uid)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def next_line(self) -> str:
        """What it serves once that changes (a bound, not a timing: a hang fails the test)."""
        try:
            return self.lines.get(timeout=30)
        except queue.Empty:
            raise AssertionError("the worker printed nothing new") from None


@pytest.fixture
def start_worker(keys_dir: Path) -> Iterator[Callable[[int], Worker]]:
    started: list[Worker] = []

    def start(uid: int = os.geteuid()) -> Worker:
        worker = Worker(keys_dir, uid)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
        stop_process(worker.process, timeout=5)
        worker.reader.join(timeout=5)
        assert worker.process.stdout is not None
        worker.process.stdout.close()


def wait_for_report(keys_dir: Path, pid: int) -> dict[str, object]:
    """The worker's report once it has written one (it does at its first check)."""
    file = next(iter(keys_dir.glob(f"workers/*-{pid}.json")), None)
    deadline = time.monotonic() + 10
    while file is None and time.monotonic() < deadline:
        time.sleep(0.05)
        file = next(iter(keys_dir.glob(f"workers/*-{pid}.json")), None)
    assert file is not None, "the worker never reported"
    report: dict[str, object] = json.loads(file.read_text())
    return report


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_keys_revoke_waits_until_every_worker_serves_the_change(
    issuer: Callable[..., Result], keys_dir: Path, start_worker: Callable[..., Worker]
) -> None:
    ok(issuer("keys", "init"))
    workers = [start_worker(), start_worker()]
    first = workers[0].next_line().split()[1]
    for worker in workers[1:]:
        assert worker.next_line().split()[1] == first
    for worker in workers:
        wait_for_report(keys_dir, worker.pid)

    output = ok(issuer("keys", "revoke", first))

    assert "picked up by every serving process that reports here (2)" in output
    # And by then each of them had stopped serving the revoked key.
    for worker in workers:
        line = worker.next_line()
        assert line.startswith("serving ")
        assert first not in line


def test_a_worker_that_did_not_look_is_named_and_a_dead_one_forgotten(
    issuer: Callable[..., Result], keys_dir: Path, start_worker: Callable[..., Worker]
) -> None:
    ok(issuer("keys", "init"))
    idle, gone = start_worker(), start_worker()
    for worker in (idle, gone):
        worker.next_line()
        wait_for_report(keys_dir, worker.pid)
    os.kill(idle.pid, signal.SIGSTOP)  # alive, but looks at nothing
    stop_process(gone.process, timeout=5)

    result = issuer("keys", "rotate", "--wait", "1")

    output = ok(result)
    assert f"not confirmed: pid {idle.pid}" in output
    assert "picked up by 0 of 1 serving processes" in output
    assert str(gone.pid) not in output
    assert not list(keys_dir.glob(f"workers/*-{gone.pid}.json"))

    os.kill(idle.pid, signal.SIGCONT)
    assert "picked up by every serving process that reports here (1)" in ok(
        issuer("keys", "rotate")
    )


@needs_root
def test_a_key_ring_written_by_another_user_locks_workers_out_and_they_fail_closed(
    issuer: Callable[..., Result], keys_dir: Path, start_worker: Callable[..., Worker]
) -> None:
    """The reported incident: root rewrote the ring (mode 0600, owned by root); the workers
    could not read it and went on signing and verifying with the revoked key."""
    ok(issuer("keys", "init"))
    for path in [keys_dir, *keys_dir.iterdir()]:
        os.chown(path, NOBODY, NOBODY)
    worker = start_worker(NOBODY)
    active = worker.next_line().split()[1]
    wait_for_report(keys_dir, worker.pid)

    # What `sudo issuer keys revoke` used to do: write as root.
    directory = KeyDirectory(keys_dir)
    directory.revoke(active, POLICY)
    assert os.stat(keys_dir / MANIFEST).st_uid == 0

    assert worker.next_line() == "unavailable"  # never the revoked key again
    report = wait_for_report(keys_dir, worker.pid)
    deadline = time.monotonic() + 10
    while report.get("failure") is None and time.monotonic() < deadline:
        time.sleep(0.05)
        report = wait_for_report(keys_dir, worker.pid)
    assert "cannot read" in str(report["failure"])

    # Given the directory back, it serves again -- without the revoked key.
    for path in keys_dir.iterdir():
        os.chown(path, NOBODY, NOBODY)
    line = worker.next_line()
    assert line.startswith("serving ")
    assert active not in line


@needs_root
@pytest.mark.parametrize(
    "command",
    [
        ["keys", "rotate"],
        ["keys", "rotate", "--now"],
        ["keys", "revoke", "KID"],
        ["data-key", "rotate"],
        ["data-key", "drop-unused"],
        ["keys", "init"],
    ],
    ids=" ".join,
)
def test_key_changes_refuse_to_run_as_another_user_than_the_directory_owner(
    issuer: Callable[..., Result], keys_dir: Path, command: list[str]
) -> None:
    if command[0] != "keys" or command[1] != "init":
        ok(issuer("keys", "init"))
    keys_dir.mkdir(exist_ok=True)
    os.chown(keys_dir, NOBODY, NOBODY)
    before = {path.name: path.read_bytes() for path in keys_dir.iterdir() if path.is_file()}

    result = issuer(*[part.replace("KID", "x") for part in command])

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "belongs to nobody" in lines[0]
    assert "sudo -u nobody issuer" in lines[0]
    after = {path.name: path.read_bytes() for path in keys_dir.iterdir() if path.is_file()}
    assert after == before
