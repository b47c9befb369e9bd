"""Mixed load against issuer under gunicorn for ten minutes: ``make soak``
(``python -m bench.soak``).

Not part of ``make test``. It shares the bench's pieces (:mod:`bench.servers`): the WeChat
stand-in in its own process, issuer (``wsgi:app``) under real gunicorn with the repo's
``gunicorn.conf.py`` (2 workers, rate limits out of reach, a temporary SQLite file and keys
directory). The load generator is Python, in its own process, with one keep-alive
``http.client`` connection per thread: unlike wrk, it follows each client's whole life.

Each connection cycles through a client's life: a login with a fresh ``wx.login`` code (minted
by the connection itself with the stand-in's key, a new test user each), then ``REFRESHES``
refreshes of its own chain each followed by a ``/me`` with its newest access token, then the
JWKS: 10 % login, 40 % refresh, 40 % /me, 10 % JWKS.

Counted: requests answered, 5xx answers (there must be none), other unexpected statuses, and
connection errors. The issuer workers' RSS (VmRSS) is sampled after the warm-up (30 s in) and
at the end, both under load. Exits 1 if any 5xx was answered or a worker's RSS grew by 10 % or
more, 130 when interrupted. Options: ``--minutes``, ``--connections``, ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from .run import gunicorn_model, interrupt
from .servers import APPID, REQUEST_TIMEOUT, Gunicorn, WeChatStandIn, issuer_env
from .wechat import HOST, mint_code

WARMUP = 30.0  # seconds of load before the first RSS sample
PROGRESS_EVERY = 60.0  # seconds between progress lines
REFRESHES = 4  # refreshes (each with a /me) per login
RSS_GROWTH_LIMIT = 0.10
KINDS = ("login", "refresh", "me", "jwks")
# Fresh interpreters: the load generator inherits nothing from this process.
SPAWN = multiprocessing.get_context("spawn")
USERS_PER_CONNECTION = 10**9  # connection n mints codes for users n * this + 0, 1, 2 ...


@dataclass(frozen=True)
class Job:
    issuer_port: int
    code_key: bytes
    connections: int
    duration: float


@dataclass(frozen=True)
class Tally:
    """Counts so far, by request kind. ``served`` is every HTTP answer, whatever its status."""

    elapsed: float
    served: dict[str, int]
    server_errors: dict[str, int]  # "kind status" -> count, 5xx only
    unexpected: dict[str, int]  # "kind status" -> count, other non-200 answers
    errors: dict[str, int]  # "kind ExceptionName" -> count: no HTTP answer


def soak(job: Job, report: Connection) -> Tally:
    """Mixed load for ``job.duration`` seconds; sends a :class:`Tally` on ``report`` at the
    warm-up mark and every ``PROGRESS_EVERY`` seconds, and returns the final one."""
    n = job.connections
    stop = threading.Event()
    served = [Counter[str]() for _ in range(n)]
    server_errors = [Counter[str]() for _ in range(n)]
    unexpected = [Counter[str]() for _ in range(n)]
    errors = [Counter[str]() for _ in range(n)]

    def connection(index: int) -> None:
        conn = http.client.HTTPConnection(HOST, job.issuer_port, timeout=REQUEST_TIMEOUT)

        def send(
            kind: str, method: str, path: str, payload: dict[str, str] | None, bearer: str = ""
        ) -> dict[str, object] | None:
            """One request on the kept-alive connection; the JSON answer if it was a 200."""
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            body = None if payload is None else json.dumps(payload).encode()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as error:
                conn.close()  # the next request opens a new connection
                errors[index][f"{kind} {type(error).__name__}"] += 1
                return None
            served[index][kind] += 1
            if response.status != 200:
                bucket = server_errors if response.status >= 500 else unexpected
                bucket[index][f"{kind} {response.status}"] += 1
                return None
            return json.loads(data) if kind != "jwks" else {}

        logins = 0
        while not stop.is_set():
            code = mint_code(job.code_key, APPID, index * USERS_PER_CONNECTION + logins)
            logins += 1
            pair = send("login", "POST", "/auth/login", {"code": code})
            if pair is None:
                continue
            refresh_token, access_token = str(pair["refresh_token"]), str(pair["access_token"])
            for _ in range(REFRESHES):
                if stop.is_set():
                    break
                pair = send("refresh", "POST", "/auth/refresh", {"refresh_token": refresh_token})
                if pair is not None:  # else keep the token: a retry inside the grace is fine
                    refresh_token = str(pair["refresh_token"])
                    access_token = str(pair["access_token"])
                send("me", "GET", "/me", None, access_token)
            if not stop.is_set():
                send("jwks", "GET", "/.well-known/jwks.json", None)
        conn.close()

    began = time.monotonic()
    ended: list[float] = []  # when the load was told to stop

    def tally() -> Tally:
        return Tally(
            elapsed=(ended[0] if ended else time.monotonic()) - began,
            served=dict(sum(served, Counter())),
            server_errors=dict(sum(server_errors, Counter())),
            unexpected=dict(sum(unexpected, Counter())),
            errors=dict(sum(errors, Counter())),
        )

    threads = [
        threading.Thread(target=connection, args=(index,), daemon=True) for index in range(n)
    ]
    for thread in threads:
        thread.start()
    marks = [WARMUP] + [
        PROGRESS_EVERY * step for step in range(1, math.ceil(job.duration / PROGRESS_EVERY))
    ]
    for mark in sorted(mark for mark in set(marks) if mark < job.duration):
        time.sleep(max(0.0, began + mark - time.monotonic()))
        report.send(("progress", tally()))
    time.sleep(max(0.0, began + job.duration - time.monotonic()))
    report.send(("end", tally()))  # the end RSS sample is taken under load, like the first
    ended.append(time.monotonic())
    stop.set()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT + 1)
    return tally()


def _load_generator(job: Job, pipe: Connection) -> None:
    """Child process: run the soak, send progress and then the final tally."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    pipe.send(("done", soak(job, pipe)))
    pipe.close()


# -- reporting


def progress_line(tally: Tally, rss: dict[int, float]) -> str:
    total = sum(tally.served.values())
    listed = ", ".join(f"{mb:.1f}" for mb in rss.values()) or "none found"
    return (
        f"{tally.elapsed:>5.0f} s  {total:>8} answered  {total / tally.elapsed:>6.0f} req/s  "
        f"5xx {sum(tally.server_errors.values())}  other {sum(tally.unexpected.values())}  "
        f"errors {sum(tally.errors.values())}  worker RSS MB: {listed}"
    )


def growth(start: dict[int, float], end: dict[int, float]) -> float:
    """The largest RSS growth of a worker sampled both times (the totals', if none was)."""
    common = [pid for pid in start if pid in end]
    if common:
        return max(end[pid] / start[pid] - 1 for pid in common)
    return sum(end.values()) / sum(start.values()) - 1 if start and end else math.nan


def report(final: Tally, rss_start: dict[int, float], rss_end: dict[int, float]) -> bool:
    """Print the report; True when it passes."""
    total = sum(final.served.values())
    print()
    print(f"duration     {final.elapsed:.0f} s")
    for kind in KINDS:
        count = final.served.get(kind, 0)
        share = count / total if total else 0.0
        print(f"{kind:<12} {count:>9} answered  {share:>4.0%}")
    print(f"total        {total:>9} answered  {total / final.elapsed:.0f} req/s")
    server_errors = sum(final.server_errors.values())
    unexpected = sum(final.unexpected.values())
    errors = sum(final.errors.values())
    print(f"5xx          {server_errors:>9}")
    print(f"other status {unexpected:>9}")
    print(f"conn errors  {errors:>9}")
    for label, counts in (
        ("5xx", final.server_errors),
        ("status", final.unexpected),
        ("error", final.errors),
    ):
        for kind, count in sorted(counts.items()):
            print(f"  {label}  {kind} x{count}")
    start_listed = ", ".join(f"{mb:.1f}" for mb in rss_start.values()) or "none found"
    end_listed = ", ".join(f"{mb:.1f}" for mb in rss_end.values()) or "none found"
    grew = growth(rss_start, rss_end)
    print(f"worker RSS   at {WARMUP:.0f} s: {start_listed} MB;  at the end: {end_listed} MB")
    if set(rss_start) != set(rss_end):
        print("  the worker pids changed between the samples (a worker restarted)")
    print(f"RSS growth   {grew:+.1%} (limit {RSS_GROWTH_LIMIT:.0%})")
    passed = server_errors == 0 and not grew >= RSS_GROWTH_LIMIT and not math.isnan(grew)
    print("PASS" if passed else "FAIL")
    return passed


# -- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Mixed load against issuer under gunicorn; fails on any 5xx or on worker "
        f"RSS growth of {RSS_GROWTH_LIMIT:.0%} or more.",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (log, database)"
    )
    args = parser.parse_args(argv)
    if args.minutes * 60 <= WARMUP or args.connections < 1:
        parser.error(f"--minutes must exceed the {WARMUP:.0f} s warm-up; --connections >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    print(
        f"issuer soak: {os.cpu_count()} CPUs, gunicorn {gunicorn_model()}, "
        f"{args.connections} connections, {args.minutes:g} min "
        f"(RSS sampled at {WARMUP:.0f} s and at the end), Python {sys.version.split()[0]}",
        flush=True,
    )
    try:
        with contextlib.ExitStack() as stack:
            work = Path(tempfile.mkdtemp(prefix="issuer-soak-"))
            if args.keep:
                print(f"temporary directory: {work}")
            else:
                stack.callback(shutil.rmtree, work, ignore_errors=True)
            passed = run(args, work, stack)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    return 0 if passed else 1


def run(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> bool:
    secret = secrets.token_hex(16)
    wechat = WeChatStandIn(secret, secrets.token_bytes(32), work / "wechat.log")
    stack.callback(wechat.stop)
    wechat.start()
    issuer = Gunicorn(
        "issuer",
        "wsgi:app",
        env=issuer_env(work, "issuer", wechat.url, secret, work / "issuer.db"),
        ready_path="/readyz",
        log_path=work / "issuer.log",
    )
    stack.callback(issuer.stop)
    issuer.start()
    issuer.wait_ready()

    job = Job(
        issuer_port=issuer.port,
        code_key=wechat.code_key,
        connections=args.connections,
        duration=args.minutes * 60,
    )
    receiver, sender = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(target=_load_generator, args=(job, sender), name="load-generator")
    process.start()
    stack.callback(_reap, process)
    sender.close()

    rss_start: dict[int, float] = {}
    rss_end: dict[int, float] = {}
    final: Tally | None = None
    while final is None:
        if not receiver.poll(PROGRESS_EVERY + 2 * REQUEST_TIMEOUT + 30):
            raise TimeoutError("the load generator stopped reporting")
        try:
            kind, tally = receiver.recv()
        except EOFError:
            raise RuntimeError("the load generator died") from None
        if kind == "done":
            final = tally
            break
        rss = issuer.worker_rss_mb()
        if not rss_start:
            rss_start = rss
        if kind == "end":
            rss_end = rss
        print(progress_line(tally, rss), flush=True)
    process.join(REQUEST_TIMEOUT)
    issuer.check_alive()
    passed = report(final, rss_start, rss_end)
    with open(issuer.log_path, errors="replace") as log:
        tracebacks = sum("Traceback" in line for line in log)
    if tracebacks:
        print(f"issuer log: {tracebacks} tracebacks (see {issuer.log_path} with --keep)")
    return passed


def _reap(process: BaseProcess) -> None:
    """Kill the load generator if it is still running (interrupted, or stuck)."""
    if process.is_alive():
        process.kill()
        process.join()


if __name__ == "__main__":
    sys.exit(main())
