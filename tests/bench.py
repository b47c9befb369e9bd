"""Throughput of issuer against a bare-Flask floor: ``make bench`` (``python -m tests.bench``).

Method. Everything runs on this machine, in this one run, on loopback:

- a WeChat emulator (:class:`issuer.emulator.WeChatEmulator`) on its own port, served by a
  threaded Werkzeug server in its own process, answering at once (0 ms);
- a *floor*: a bare Flask app with two routes under real gunicorn with the repo's
  ``gunicorn.conf.py`` (gthread, same workers and threads), written to a temporary directory.
  ``POST /floor/refresh`` parses a small JSON body and answers a token-sized JSON;
  ``GET /floor/static`` answers a fixed small JSON. The floor is what Flask, gunicorn, the
  kernel's loopback and this load generator cost before issuer does any work;
- issuer itself (``wsgi:app``) under the same gunicorn settings, on a temporary SQLite file and
  keys directory, talking to the emulator, with rate limits set out of reach;
- a load generator in its own process (so it shares no GIL with the servers): one keep-alive
  ``http.client`` connection per thread, hammering for a fixed window after a short warm-up.

Inputs are minted before the clock starts: each login needs a fresh ``wx.login`` code (minted
at the emulator's ``/dev/wx.login``, a new test user each), each refresh the token the previous
refresh returned (every connection walks its own refresh chain, carried across rounds).

Each scenario runs ``--rounds`` times; each round interleaves floor and issuer scenarios and
every other round runs them in reverse order, so slow drift of the machine lands on both
sides. The table shows medians, and each issuer scenario as a ratio of its floor: refresh
against floor-refresh, the rest against floor-static. The ratio is the number to watch: the
absolute req/s depend on the machine, on the load generator sharing its CPUs (its ``client
CPU`` column is the share of one core it used), and drift 10-20 % between minutes.
Performance is reported, never asserted.

Options: ``--duration`` (timed seconds per run), ``--connections``, ``--rounds``, ``--warmup``,
``--keep`` (keep the temporary directory with both servers' logs and the database). Both
servers run ``WEB_CONCURRENCY=2``; ``ISSUER_THREADS``, when set, applies to both.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

from tests.conftest import APPID, ROOT, SECRET, free_port

HOST = "127.0.0.1"
WORKERS = 2
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
REQUEST_TIMEOUT = 10.0
# Fresh interpreters: the emulator and the load generator inherit nothing from this process.
SPAWN = multiprocessing.get_context("spawn")

Feed = Literal["none", "codes", "chain"]

# The floor app, written to a temporary directory as floor.py and served as ``floor:app``.
FLOOR_APP = '''\
"""Bare Flask: what a request costs before any issuer work."""

import json

from flask import Flask, Response, request

app = Flask(__name__)

# The shape of issuer's token response, ~700 bytes.
TOKEN = {
    "access_token": "eyJ" + "A" * 457,
    "token_type": "Bearer",
    "expires_in": 900,
    "refresh_token": "rt_" + "B" * 70,
    "refresh_token_expires_in": 2592000,
    "user_id": "AOtD5DBmwerPSwzDjPkS3w",
    "is_new_user": False,
}
# A fixed ~250-byte JSON, the size of a one-key JWKS or a /me answer.
STATIC = json.dumps({"status": "ok", "app": "floor", "padding": "." * 208}).encode()


@app.post("/floor/refresh")
def floor_refresh() -> Response:
    fields = request.get_json(silent=True)
    if not isinstance(fields, dict) or not isinstance(fields.get("refresh_token"), str):
        return Response('{"error":"invalid_request"}', status=400, mimetype="application/json")
    return Response(json.dumps(TOKEN, separators=(",", ":")), mimetype="application/json")


@app.get("/floor/static")
def floor_static() -> Response:
    return Response(STATIC, mimetype="application/json")
'''
FLOOR_REFRESH_TOKEN = "rt_floor"  # any string: the floor answers with its own


# -- plain HTTP from this process (setup only, never timed)


def call(
    port: int,
    method: str,
    path: str,
    payload: dict[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes]:
    """One request; on ``connection`` when given (kept open), else on a new one."""
    conn = connection or http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    body = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if connection is None:
            conn.close()


# -- the WeChat emulator, in its own process


def _serve_emulator(appid: str, secret: str, pipe: Connection) -> None:
    """Child process: the emulator on a free loopback port, which it sends back."""
    from werkzeug.serving import make_server

    from issuer.emulator import WeChatEmulator

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    emulator = WeChatEmulator({appid: secret})
    server = make_server(HOST, 0, emulator.app, threaded=True)
    pipe.send(server.server_port)
    pipe.close()
    server.serve_forever()


class Emulator:
    """The WeChat emulator served by a threaded Werkzeug server in a separate process."""

    def __init__(self) -> None:
        self.port = 0
        self.process: multiprocessing.process.BaseProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 30) -> Emulator:
        receiver, sender = SPAWN.Pipe(duplex=False)
        self.process = SPAWN.Process(
            target=_serve_emulator, args=(APPID, SECRET, sender), name="wechat-emulator"
        )
        self.process.start()
        sender.close()
        if not receiver.poll(timeout):
            raise TimeoutError("the WeChat emulator did not start")
        self.port = receiver.recv()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()

    def mint_codes(self, count: int, threads: int = 8) -> list[str]:
        """``count`` one-time ``wx.login`` codes, each for a new random test user."""

        def batch(size: int) -> list[str]:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT)
            try:
                codes = []
                for _ in range(size):
                    status, body = call(
                        self.port, "POST", "/dev/wx.login", {"appid": APPID}, connection=conn
                    )
                    if status != 200:
                        raise RuntimeError(f"/dev/wx.login answered {status}: {body[:200]!r}")
                    codes.append(json.loads(body)["code"])
                return codes
            finally:
                conn.close()

        sizes = [
            count // threads + (1 if index < count % threads else 0) for index in range(threads)
        ]
        with ThreadPoolExecutor(threads) as pool:
            return [code for codes in pool.map(batch, sizes) for code in codes]


# -- real gunicorn masters


class GunicornServer:
    """A real gunicorn master with the repo's gunicorn.conf.py on a free loopback port.

    Its output goes to a file: a pipe nobody reads would fill up and stall the server.
    """

    def __init__(
        self,
        name: str,
        app: str,
        *,
        cwd: Path,
        env: dict[str, str],
        ready_path: str,
        log_path: Path,
        chdir: Path | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.ready_path = ready_path
        self.log_path = log_path
        self.cwd = cwd
        self.argv = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF)]
        if chdir is not None:
            self.argv += ["--chdir", str(chdir)]
        self.argv.append(app)
        # Both servers get the same settings: only ISSUER_THREADS passes through from here.
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("ISSUER_") or key == "ISSUER_THREADS"
        }
        self.env = {
            **inherited,
            **env,
            "WEB_CONCURRENCY": str(WORKERS),
            "ISSUER_BIND": f"{HOST}:{self.port}",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GunicornServer:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name}: gunicorn exited:\n{self.tail()}")

    def wait_ready(self, timeout: float = 30) -> GunicornServer:
        assert self.process is not None
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

    def worker_rss_mb(self) -> dict[int, float]:
        """VmRSS in MB of each worker (the master's children), by pid."""
        assert self.process is not None
        sizes = {}
        for pid in children_of(self.process.pid):
            with contextlib.suppress(OSError):  # a worker that just exited
                sizes[pid] = rss_mb(pid)
        return sizes


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


# -- the load generator, in its own process


@dataclass(frozen=True)
class Job:
    """One timed run: what to send, how hard, and the inputs minted for it."""

    scenario: str
    port: int
    method: str
    path: str
    feed: Feed  # none: the same request; codes: one login code each; chain: refresh chains
    connections: int
    warmup: float
    duration: float
    headers: dict[str, str] = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)  # one refresh token per connection


@dataclass(frozen=True)
class Outcome:
    """What a run measured. ``errors`` counts every non-200 answer, warm-up included."""

    scenario: str
    rate: float  # 200 answers per second in the timed window
    successes: int
    errors: int
    error_kinds: dict[str, int]
    window: float  # seconds actually measured (shorter when the login codes ran out)
    client_cpu: float  # load generator CPU time / window, in cores
    body_bytes: int
    exhausted: bool
    chains: list[str]


def hammer(job: Job) -> Outcome:
    """``job.connections`` threads, one keep-alive connection each, until the window ends."""
    n = job.connections
    stop = threading.Event()
    exhausted = threading.Event()  # out of login codes: the window ends early
    start = threading.Barrier(n + 1)
    ok = [0] * n
    bad = [0] * n
    kinds: list[Counter[str]] = [Counter() for _ in range(n)]
    sizes = [0] * n
    codes = deque(job.codes)
    chains = list(job.chains)
    headers = {**job.headers}
    if job.feed != "none":
        headers["Content-Type"] = "application/json"

    def body_for(index: int) -> bytes | None:
        if job.feed == "codes":
            return json.dumps({"code": codes.popleft()}).encode()
        if job.feed == "chain":
            return json.dumps({"refresh_token": chains[index]}).encode()
        return None

    def connection(index: int) -> None:
        conn = http.client.HTTPConnection(HOST, job.port, timeout=REQUEST_TIMEOUT)
        with contextlib.suppress(OSError):  # then the first request fails and is counted
            conn.connect()
        start.wait()
        while not stop.is_set():
            try:
                body = body_for(index)
            except IndexError:
                exhausted.set()
                break
            try:
                conn.request(job.method, job.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as error:
                conn.close()  # the next request opens a new connection
                bad[index] += 1
                kinds[index][type(error).__name__] += 1
                continue
            if response.status != 200:
                # A refresh chain keeps its token: a retry inside the reuse grace is safe.
                bad[index] += 1
                kinds[index][str(response.status)] += 1
                continue
            ok[index] += 1
            sizes[index] = len(data)
            if job.feed == "chain":
                chains[index] = json.loads(data)["refresh_token"]
        conn.close()

    threads = [
        threading.Thread(target=connection, args=(index,), daemon=True) for index in range(n)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    exhausted.wait(job.warmup)
    ok_before, began, cpu_before = sum(ok), time.perf_counter(), time.process_time()
    exhausted.wait(job.duration)
    ok_after, ended, cpu_after = sum(ok), time.perf_counter(), time.process_time()
    stop.set()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT + 1)
    window = ended - began
    return Outcome(
        scenario=job.scenario,
        rate=(ok_after - ok_before) / window if window > 0 else 0.0,
        successes=ok_after - ok_before,
        errors=sum(bad),
        error_kinds=dict(sum(kinds, Counter())),
        window=window,
        client_cpu=(cpu_after - cpu_before) / window if window > 0 else 0.0,
        body_bytes=max(sizes),
        exhausted=exhausted.is_set(),
        chains=chains,
    )


def _load_generator(job: Job, pipe: Connection) -> None:
    """Child process: run the job, send the outcome back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    pipe.send(hammer(job))
    pipe.close()


def run_job(job: Job) -> Outcome:
    """Run ``job`` in a fresh load-generator process and wait for its outcome."""
    receiver, sender = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(target=_load_generator, args=(job, sender), name="load-generator")
    process.start()
    sender.close()
    try:
        if not receiver.poll(job.warmup + job.duration + 2 * REQUEST_TIMEOUT + 30):
            raise TimeoutError(f"{job.scenario}: the load generator did not answer")
        outcome: Outcome = receiver.recv()
        process.join(REQUEST_TIMEOUT)
        return outcome
    finally:
        if process.is_alive():  # interrupted, or stuck
            process.kill()
            process.join()


# -- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    server: Literal["floor", "issuer"]
    method: str
    path: str
    feed: Feed
    floor: str | None = None  # the floor scenario it is compared with


FLOOR_STATIC = Scenario("floor static", "floor", "GET", "/floor/static", "none")
FLOOR_REFRESH = Scenario("floor refresh", "floor", "POST", "/floor/refresh", "chain")
JWKS = Scenario("issuer jwks", "issuer", "GET", "/.well-known/jwks.json", "none", "floor static")
ME = Scenario("issuer /me", "issuer", "GET", "/me", "none", "floor static")
REFRESH = Scenario("issuer refresh", "issuer", "POST", "/auth/refresh", "chain", "floor refresh")
LOGIN = Scenario("issuer login", "issuer", "POST", "/auth/login", "codes", "floor static")
# Floor and issuer interleaved; odd rounds run this backwards.
ROUND = (FLOOR_STATIC, JWKS, ME, FLOOR_REFRESH, REFRESH, LOGIN)
TABLE = (FLOOR_STATIC, FLOOR_REFRESH, REFRESH, ME, JWKS, LOGIN)
NOTES = {
    "issuer /me": "Bearer, the same token each time",
    "issuer refresh": "one refresh chain per connection",
    "issuer login": "WeChat at 0 ms, a new user each",
}


class Bench:
    """The servers of one run and the state carried between runs (refresh chains, a Bearer)."""

    def __init__(
        self,
        emulator: Emulator,
        floor: GunicornServer,
        issuer: GunicornServer,
        args: argparse.Namespace,
    ) -> None:
        self.emulator = emulator
        self.servers = {"floor": floor, "issuer": issuer}
        self.args = args
        self.chains: dict[str, list[str]] = {
            FLOOR_REFRESH.name: [FLOOR_REFRESH_TOKEN] * args.connections
        }
        self.bearer = ""
        self.results: dict[str, list[Outcome]] = {scenario.name: [] for scenario in ROUND}

    def log_in_sessions(self) -> None:
        """A refresh chain per connection and one access token for /me, before any clock."""
        port = self.servers["issuer"].port
        bodies = []
        for code in self.emulator.mint_codes(self.args.connections + 1):
            status, body = call(port, "POST", "/auth/login", {"code": code})
            if status != 200:
                raise RuntimeError(f"login before the runs answered {status}: {body[:300]!r}")
            bodies.append(json.loads(body))
        self.bearer = bodies.pop()["access_token"]
        self.chains[REFRESH.name] = [body["refresh_token"] for body in bodies]

    def login_codes_needed(self) -> int:
        """Codes for one login window: 1.5 x the best estimate of the rate, plus a margin."""
        window = self.args.warmup + self.args.duration
        for name in (LOGIN.name, REFRESH.name):  # a login costs more than a refresh
            if self.results[name]:
                rate = max(outcome.rate for outcome in self.results[name])
                return math.ceil(1.5 * rate * window) + 100 * self.args.connections
        return 20_000

    def run(self, scenario: Scenario) -> Outcome:
        codes: list[str] = []
        if scenario.feed == "codes":
            codes = self.emulator.mint_codes(self.login_codes_needed())
        job = Job(
            scenario=scenario.name,
            port=self.servers[scenario.server].port,
            method=scenario.method,
            path=scenario.path,
            feed=scenario.feed,
            connections=self.args.connections,
            warmup=self.args.warmup,
            duration=self.args.duration,
            headers={"Authorization": f"Bearer {self.bearer}"} if scenario is ME else {},
            codes=codes,
            chains=self.chains.get(scenario.name, []),
        )
        outcome = run_job(job)
        self.servers[scenario.server].check_alive()  # errors from a dead server mean nothing
        if scenario.feed == "chain":
            self.chains[scenario.name] = outcome.chains
        self.results[scenario.name].append(outcome)
        return outcome


# -- reporting


def report(bench: Bench, issuer: GunicornServer, floor: GunicornServer) -> None:
    medians = {
        name: statistics.median(outcome.rate for outcome in outcomes)
        for name, outcomes in bench.results.items()
    }
    header = (
        f"{'scenario':<16} {'req/s':>8} {'min-max':>13} {'errors':>6} {'ratio':>6} "
        f"{'of':<14} {'bytes':>5} {'client CPU':>10}  note"
    )
    print()
    print(header)
    print("-" * len(header))
    for scenario in TABLE:
        outcomes = bench.results[scenario.name]
        rates = [outcome.rate for outcome in outcomes]
        ratio = f"{medians[scenario.name] / medians[scenario.floor]:.2f}" if scenario.floor else ""
        short = " *" if any(outcome.exhausted for outcome in outcomes) else ""
        cpu = statistics.median(outcome.client_cpu for outcome in outcomes)
        print(
            f"{scenario.name:<16} {medians[scenario.name]:>8.0f} "
            f"{f'{min(rates):.0f}-{max(rates):.0f}':>13} "
            f"{sum(outcome.errors for outcome in outcomes):>6} {ratio:>6} "
            f"{scenario.floor or '':<14} {max(outcome.body_bytes for outcome in outcomes):>5} "
            f"{cpu:>9.0%}  {NOTES.get(scenario.name, '')}{short}".rstrip()
        )
    kinds: Counter[str] = Counter()
    for outcomes in bench.results.values():
        for outcome in outcomes:
            kinds.update({f"{outcome.scenario}: {k}": v for k, v in outcome.error_kinds.items()})
    for kind, count in sorted(kinds.items()):
        print(f"  errors  {kind} x{count}")
    if any(outcome.exhausted for outcomes in bench.results.values() for outcome in outcomes):
        print(
            "  * a window ended early: the login codes ran out; its rate is over the shorter window"
        )
    print()
    for name, server in (("issuer", issuer), ("floor", floor)):
        rss = server.worker_rss_mb()
        listed = ", ".join(f"{mb:.1f}" for mb in rss.values()) or "none found"
        print(f"{name} worker RSS after the runs (MB): {listed}")


# -- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Throughput of issuer under gunicorn against a bare-Flask floor, "
        "same machine, same run. Reported, never asserted.",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds timed per run")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each scenario")
    parser.add_argument("--warmup", type=float, default=0.5, help="untimed seconds per run")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, database)"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--duration > 0, --connections >= 1, --rounds >= 1, --warmup >= 0")
    return args


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    threads = os.environ.get("ISSUER_THREADS", "8")
    print(
        f"issuer bench: {os.cpu_count()} CPUs, gunicorn gthread {WORKERS} workers x {threads} "
        f"threads, {args.connections} connections, {args.rounds} rounds x {args.duration:g} s "
        f"(+{args.warmup:g} s warm-up), Python {sys.version.split()[0]}"
    )
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            work = Path(tempfile.mkdtemp(prefix="issuer-bench-"))
            if args.keep:
                print(f"temporary directory: {work}")
            else:
                stack.callback(shutil.rmtree, work, ignore_errors=True)
            run(args, work, stack.callback)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


def issuer_server(emulator: Emulator, work: Path) -> GunicornServer:
    """issuer (``wsgi:app``) on a SQLite file and keys in ``work``, rate limits out of reach."""
    return GunicornServer(
        "issuer",
        "wsgi:app",
        cwd=ROOT,
        env={
            "ISSUER_DATABASE_URL": f"sqlite:///{work / 'issuer.db'}",
            "ISSUER_KEYS_DIR": str(work / "keys"),
            "ISSUER_WECHAT_API_BASE": emulator.url,
            "ISSUER_WECHAT_APPID": APPID,
            "ISSUER_WECHAT_SECRET": SECRET,
            "ISSUER_RATELIMIT_LOGIN": "1000000/minute",
            "ISSUER_RATELIMIT_REFRESH": "1000000/minute",
        },
        ready_path="/readyz",
        log_path=work / "issuer.log",
    )


def run(args: argparse.Namespace, work: Path, on_exit: Callable[..., object]) -> None:
    """Start the servers (each stopped by ``on_exit``), run the rounds, print the table."""
    emulator = Emulator()
    on_exit(emulator.stop)
    emulator.start()

    floor_dir = work / "floor"
    floor_dir.mkdir()
    (floor_dir / "floor.py").write_text(FLOOR_APP)
    floor = GunicornServer(
        "floor",
        "floor:app",
        cwd=floor_dir,
        chdir=floor_dir,
        env={},
        ready_path="/floor/static",
        log_path=work / "floor.log",
    )
    issuer = issuer_server(emulator, work)
    for server in (floor, issuer):
        on_exit(server.stop)
        server.start()
    for server in (floor, issuer):
        server.wait_ready()

    bench = Bench(emulator, floor, issuer, args)
    bench.log_in_sessions()
    for number in range(args.rounds):
        order = ROUND if number % 2 == 0 else ROUND[::-1]
        for scenario in order:
            outcome = bench.run(scenario)
            print(
                f"round {number + 1}/{args.rounds}  {scenario.name:<16} {outcome.rate:>8.0f} req/s"
                f"  errors {outcome.errors}",
                flush=True,
            )
    report(bench, issuer, floor)


if __name__ == "__main__":
    sys.exit(main())
