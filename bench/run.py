"""Throughput of issuer against a bare-Flask floor, load from wrk: ``make bench``
(``python -m bench``).

Method. Everything runs on this machine, in this one run, on loopback:

- the WeChat stand-in (:mod:`bench.wechat`) in its own process, answering ``jscode2session``
  at once, or after 100 ms for the latency scenario;
- the *floor* (:mod:`bench.floor`): bare Flask under real gunicorn with the repo's
  ``gunicorn.conf.py``, answering bodies of the sizes issuer answers (measured first);
- issuer (``wsgi:app``) under the same gunicorn settings, twice: on an empty SQLite file, and
  on a copy of a cached file holding a million users and sessions (:mod:`bench.bigdb`);
- ``wrk`` with the Lua scripts of ``bench/lua/``, one connection per wrk thread.

Inputs that must be fresh are made before the clock starts: login codes (a file per
connection, half for new users and half for users who logged in before), refresh chains
(one per connection, logged in before the first run; each run continues where the last one
stopped, and right after each run the bench settles every chain with one untimed refresh, so
an answer wrk abandoned at the end cannot turn into a reuse outside the grace), Bearer tokens
(one per connection) and ETags.

Each scenario runs once untimed (``--warmup`` seconds), then ``--rounds`` times for
``--duration`` seconds; every other round runs the list backwards, so a slow drift of the
machine lands on floor and issuer alike. The table shows medians over the rounds, and each
issuer figure as a ratio: to its own floor (refresh and login to the token-shaped floor, ``/me``
and the JWKS to floors of their sizes), the 100 ms login to its latency bound (connections /
latency), refresh on a million users to refresh on the empty database. A ratio is taken round
by round -- each scenario against its baseline of the same round, at most a minute apart --
and the median of those is shown. The ratio is the number to watch: absolute req/s depend on
the machine and on what else runs on it. Targets are reported, never asserted. The JSON (every
round, the medians, the ratios) goes to ``--json``, by default a new file in the temporary
directory, named at the end.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .bigdb import FILLER_DATA_KEY, cached_database, default_cache_dir
from .servers import (
    APPID,
    GUNICORN_CONF,
    ROOT,
    SYNC_WORKERS,
    WORKERS,
    Gunicorn,
    WeChatStandIn,
    call,
    issuer_env,
    server_env,
)
from .wechat import mint_code
from .wrk import WrkMissing, WrkRun, run_wrk, wrk_version

RSS_TARGET_MB = 60.0
RETURNING_SHARE = 0.5  # of login codes, the share for users who logged in before
# Bearer tokens are renewed (by new logins, untimed) before they come near the access token
# lifetime (900 s by default): a long run must not measure 401s.
BEARER_REUSE = 300.0
BOUND = "latency bound"
Server = Literal["floor", "floor-sync", "issuer", "issuer-1m"]


@dataclass(frozen=True)
class Scenario:
    """One kind of load: where it goes, with which script, and what it is compared with."""

    name: str
    label: str
    server: Server
    path: str
    script: Literal["get.lua", "codes.lua", "chain.lua", "mix.lua"]
    expect: int = 200
    header: Literal["bearer", "etag"] | None = None
    wide: bool = False  # --latency-connections instead of --connections
    wechat_latency: bool = False  # WeChat answers after --wechat-latency
    baseline: str | None = None  # the scenario (or BOUND) its ratio is to
    target: float | None = None
    zero_errors: bool = False  # the target also asks for no error at all
    same: str | None = None  # the floor under issuer's own gunicorn settings, also shown
    p99_target: float | None = None  # ms; the target also asks for this p99 at most
    returning: float = RETURNING_SHARE  # of login codes, the share for users seen before


FLOOR_TOKEN = Scenario(
    name="floor token",
    label="floor: parse JSON, answer a token-sized JSON",
    server="floor",
    path="/floor/token",
    script="chain.lua",
)
FLOOR_ME = Scenario(
    name="floor me",
    label="floor: a /me-sized JSON",
    server="floor",
    path="/floor/me",
    script="get.lua",
    header="bearer",
)
FLOOR_JWKS = Scenario(
    name="floor jwks",
    label="floor: JWKS-sized bytes + ETag",
    server="floor",
    path="/floor/jwks",
    script="get.lua",
)
FLOOR_JWKS_304 = Scenario(
    name="floor jwks 304",
    label="floor: the same, If-None-Match (304)",
    server="floor",
    path="/floor/jwks",
    script="get.lua",
    expect=304,
    header="etag",
)
# The same routes on plain sync workers: the fastest bare Flask serves here, and what every
# issuer ratio is taken to (the floors above, under issuer's own settings, are shown beside).
SYNC_FLOOR_TOKEN = Scenario(
    name="sync floor token",
    label="sync floor: a token-sized JSON",
    server="floor-sync",
    path="/floor/token",
    script="chain.lua",
)
SYNC_FLOOR_ME = Scenario(
    name="sync floor me",
    label="sync floor: a /me-sized JSON",
    server="floor-sync",
    path="/floor/me",
    script="get.lua",
    header="bearer",
)
SYNC_FLOOR_JWKS = Scenario(
    name="sync floor jwks",
    label="sync floor: JWKS-sized bytes + ETag",
    server="floor-sync",
    path="/floor/jwks",
    script="get.lua",
)
SYNC_FLOOR_JWKS_304 = Scenario(
    name="sync floor jwks 304",
    label="sync floor: the same, 304",
    server="floor-sync",
    path="/floor/jwks",
    script="get.lua",
    expect=304,
    header="etag",
)
REFRESH = Scenario(
    name="refresh",
    label="refresh (a chain per connection)",
    server="issuer",
    path="/auth/refresh",
    script="chain.lua",
    baseline="sync floor token",
    same="floor token",
    target=0.5,
    p99_target=50.0,
)
REFRESH_1M = Scenario(
    name="refresh 1M",
    label="refresh, 1 M users + sessions in the DB",
    server="issuer-1m",
    path="/auth/refresh",
    script="chain.lua",
    baseline="refresh",
    target=0.9,
)
ME = Scenario(
    name="me",
    label="/me (a Bearer per connection)",
    server="issuer",
    path="/me",
    script="get.lua",
    header="bearer",
    baseline="sync floor me",
    same="floor me",
    target=0.6,
)
JWKS = Scenario(
    name="jwks",
    label="JWKS",
    server="issuer",
    path="/.well-known/jwks.json",
    script="get.lua",
    baseline="sync floor jwks",
    same="floor jwks",
    target=0.85,
)
JWKS_304 = Scenario(
    name="jwks 304",
    label="JWKS, If-None-Match (304)",
    server="issuer",
    path="/.well-known/jwks.json",
    script="get.lua",
    expect=304,
    header="etag",
    baseline="sync floor jwks 304",
    same="floor jwks 304",
    target=0.85,
)
LOGIN = Scenario(
    name="login",
    label="login (WeChat 0 ms; new + returning users)",
    server="issuer",
    path="/auth/login",
    script="codes.lua",
    baseline="sync floor token",
    same="floor token",
    target=0.25,
    p99_target=50.0,
)
LOGIN_1M = Scenario(
    name="login 1M",
    label="login of returning users, 1 M users in the DB",
    server="issuer-1m",
    path="/auth/login",
    script="codes.lua",
    baseline="login",
    returning=1.0,
)
LOGIN_SLOW = Scenario(
    name="login slow",
    label="login, WeChat 100 ms, 64 connections",
    server="issuer",
    path="/auth/login",
    script="codes.lua",
    wide=True,
    wechat_latency=True,
    baseline=BOUND,
    target=0.9,
    zero_errors=True,
)
MIX = Scenario(
    name="mix",
    label="mix: 10% login, 40% refresh, 40% /me, 10% JWKS",
    server="issuer",
    path="",
    script="mix.lua",
    p99_target=50.0,
)
MIX_SLOW = Scenario(
    name="mix slow",
    label="the mix, WeChat 100 ms, 64 connections",
    server="issuer",
    path="",
    script="mix.lua",
    wide=True,
    wechat_latency=True,
    baseline="mix",
    target=0.9,
    zero_errors=True,
)

# Each floor next to the scenarios compared with it; odd rounds run this backwards.
ROUND: tuple[Scenario, ...] = (SYNC_FLOOR_TOKEN, FLOOR_TOKEN, REFRESH, REFRESH_1M, LOGIN)
ROUND += (LOGIN_1M, SYNC_FLOOR_ME, FLOOR_ME, ME, SYNC_FLOOR_JWKS, FLOOR_JWKS, JWKS)
ROUND += (SYNC_FLOOR_JWKS_304, FLOOR_JWKS_304, JWKS_304, LOGIN_SLOW, MIX, MIX_SLOW)
TABLE: tuple[Scenario, ...] = (SYNC_FLOOR_TOKEN, SYNC_FLOOR_ME, SYNC_FLOOR_JWKS)
TABLE += (SYNC_FLOOR_JWKS_304, FLOOR_TOKEN, FLOOR_ME, FLOOR_JWKS, FLOOR_JWKS_304, REFRESH)
TABLE += (REFRESH_1M, ME, JWKS, JWKS_304, LOGIN, LOGIN_1M, LOGIN_SLOW, MIX, MIX_SLOW)
BY_NAME = {scenario.name: scenario for scenario in ROUND}


@dataclass
class Bench:
    """The servers of one run and what carries over from one wrk run to the next."""

    args: argparse.Namespace
    work: Path
    wechat: WeChatStandIn
    servers: dict[str, Gunicorn]
    chains: dict[str, list[str]] = field(default_factory=dict)
    bearers: list[str] = field(default_factory=list)
    etags: dict[str, str] = field(default_factory=dict)
    users: int = 0  # test users minted so far; codes for returning users pick among them
    first_user: int = 0  # the first of the bench's own (those below are the large DB's)
    # Which users log in again: a mix, not a secret (and the same mix in every run).
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311
    bearers_at: float = 0.0  # when the Bearer tokens were issued (monotonic)
    latency: float = 0.0
    results: dict[str, list[WrkRun]] = field(default_factory=dict)
    warmups: dict[str, WrkRun] = field(default_factory=dict)
    cpu_used: float = 0.0  # of the last run, ms per answer
    # Server CPU (master and workers, user + system) per answer of each timed run, ms.
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)

    def connections(self, scenario: Scenario) -> int:
        return int(self.args.latency_connections if scenario.wide else self.args.connections)

    # -- inputs

    def codes(self, count: int, *, returning: float, known: int = 0) -> list[str]:
        """``count`` fresh codes; a ``returning`` share of them for users seen before (among
        the first ``known`` test users when given: the large database holds them all)."""
        codes = []
        for _ in range(count):
            if known and self.rng.random() < returning:
                user = self.rng.randrange(known)
            elif self.users > self.first_user and self.rng.random() < returning:
                user = self.rng.randrange(self.first_user, self.users)
            else:
                user, self.users = self.users, self.users + 1
            codes.append(mint_code(self.wechat.code_key, APPID, user))
        return codes

    def log_in(self, server: str, count: int) -> list[dict[str, Any]]:
        """``count`` logins of new users (untimed): their token responses."""
        port = self.servers[server].port
        bodies = []
        for code in self.codes(count, returning=0.0):
            status, _, body = call(port, "POST", "/auth/login", {"code": code})
            if status != 200:
                raise RuntimeError(f"{server}: a login before the runs answered {status}: {body!r}")
            bodies.append(json.loads(body))
        return bodies

    def settle(self, scenario: Scenario, tokens: list[str]) -> list[str]:
        """One untimed refresh per chain right after a run (see the module docstring)."""
        port = self.servers[scenario.server].port
        settled = []
        for token in tokens:
            status, _, body = call(port, "POST", "/auth/refresh", {"refresh_token": token})
            if status != 200:
                raise RuntimeError(f"{scenario.name}: a chain broke ({status}): {body[:300]!r}")
            settled.append(json.loads(body)["refresh_token"])
        return settled

    def code_budget(self, scenario: Scenario, seconds: float) -> int:
        """Codes per connection for a run: twice the best rate seen, plus a margin."""
        seen = [run.rate(200) for run in self.results.get(scenario.name, [])]
        if scenario.name in self.warmups:
            seen.append(self.warmups[scenario.name].rate(200))
        rate = max(seen, default=0.0) or 2000.0
        return int(2 * rate * seconds / self.connections(scenario)) + 50

    # -- runs

    def run(self, scenario: Scenario, seconds: int) -> WrkRun:
        server = self.servers[scenario.server]
        connections = self.connections(scenario)
        latency = self.args.wechat_latency if scenario.wechat_latency else 0.0
        if latency != self.latency:
            self.wechat.set_latency(latency)
            self.latency = latency
        inputs: list[list[str]] | None = None
        header: tuple[str, str | None] | None = None
        known = self.args.users if scenario.server == "issuer-1m" else 0
        if scenario.script in ("codes.lua", "mix.lua"):
            per = self.code_budget(scenario, seconds)
            if scenario.script == "mix.lua":
                per = per // 5 + 50  # one request in ten is a login: twice that, and a margin
            codes = self.codes(per * connections, returning=scenario.returning, known=known)
            inputs = [codes[index::connections] for index in range(connections)]
        elif scenario.script == "chain.lua":
            inputs = [[token] for token in self.chains[scenario.name][:connections]]
        uses_bearers = scenario.header == "bearer" or scenario.script == "mix.lua"
        if uses_bearers and time.monotonic() - self.bearers_at > BEARER_REUSE:
            wanted = max(self.args.connections, self.args.latency_connections)
            self.bearers = [body["access_token"] for body in self.log_in("issuer", wanted)]
            self.bearers_at = time.monotonic()
        if scenario.header == "bearer":
            inputs = [[f"Bearer {token}"] for token in self.bearers[:connections]]
            header = ("Authorization", None)
        if scenario.script == "mix.lua":
            assert inputs is not None
            chains = self.chains[scenario.name][:connections]
            bearers = self.bearers[:connections]
            inputs = [
                [chain, f"Bearer {bearer}", *codes]
                for chain, bearer, codes in zip(chains, bearers, inputs, strict=True)
            ]
        elif scenario.header == "etag":
            header = ("If-None-Match", self.etags[scenario.server])
        cpu_before = server.cpu_seconds()
        run = run_wrk(
            scenario.script,
            server.url + scenario.path,
            connections=connections,
            duration=seconds,
            work=self.work / "wrk",
            inputs=inputs,
            header=header,
            log=self.work / "wrk.log",
        )
        server.check_alive()  # errors from a dead server would mean nothing
        self.cpu_used = (server.cpu_seconds() - cpu_before) * 1000 / max(1, run.answers)
        if scenario.script in ("chain.lua", "mix.lua"):
            tokens = run.states
            if not scenario.server.startswith("floor"):
                tokens = self.settle(scenario, tokens)
            self.chains[scenario.name] = tokens
        return run


# -- reporting


@dataclass(frozen=True)
class Row:
    """A scenario's medians over its rounds, and how it fares against its target."""

    scenario: Scenario
    rate: float
    p50: float
    p99: float
    errors: int
    rates: list[float]
    ratio: float | None  # the median of the rounds' ratios
    ratios: list[float]
    of: str
    met: bool | None
    exhausted: bool
    same: float | None  # the median ratio to the floor under issuer's own settings
    cpu_ms: float | None  # server CPU per answer, median over the rounds


def rows(bench: Bench) -> list[Row]:
    medians = {
        name: statistics.median(run.rate(BY_NAME[name].expect) for run in runs)
        for name, runs in bench.results.items()
    }
    table = []
    for scenario in TABLE:
        runs = bench.results.get(scenario.name)
        if not runs:
            continue
        rate = medians[scenario.name]
        errors = sum(run.errors(scenario.expect) for run in runs)
        ratios: list[float] = []
        of = ""
        if scenario.baseline == BOUND:
            bound = bench.args.latency_connections / bench.args.wechat_latency
            ratios, of = (
                [run.rate(scenario.expect) / bound for run in runs],
                f"{bound:.0f} req/s bound",
            )
        elif scenario.baseline in bench.results:
            # Round by round: a floor ran next to its scenarios, so what the machine was doing
            # then (other work, drift) weighs on both sides of each ratio alike.
            baseline = BY_NAME[scenario.baseline]
            ratios = [
                run.rate(scenario.expect) / base.rate(baseline.expect)
                for run, base in zip(runs, bench.results[scenario.baseline], strict=True)
                if base.rate(baseline.expect) > 0
            ]
            of = scenario.baseline
        ratio = statistics.median(ratios) if ratios else None
        same = None
        if scenario.same in bench.results:
            floor = BY_NAME[scenario.same]
            same_ratios = [
                run.rate(scenario.expect) / base.rate(floor.expect)
                for run, base in zip(runs, bench.results[scenario.same], strict=True)
                if base.rate(floor.expect) > 0
            ]
            same = statistics.median(same_ratios) if same_ratios else None
        p99 = statistics.median(run.latency_ms["p99"] for run in runs)
        met = None
        if ratio is not None and scenario.target is not None:
            met = ratio >= scenario.target and not (scenario.zero_errors and errors)
        if scenario.p99_target is not None:
            met = (met is not False) and p99 <= scenario.p99_target
        cpu = bench.cpu_ms.get(scenario.name)
        table.append(
            Row(
                scenario=scenario,
                rate=rate,
                p50=statistics.median(run.latency_ms["p50"] for run in runs),
                p99=p99,
                errors=errors,
                rates=[run.rate(scenario.expect) for run in runs],
                ratio=ratio,
                ratios=ratios,
                of=of,
                met=met,
                exhausted=any(run.exhausted for run in runs),
                same=same,
                cpu_ms=statistics.median(cpu) if cpu else None,
            )
        )
    return table


def print_table(table: list[Row], rss: dict[str, dict[int, float]]) -> None:
    header = (
        f"{'scenario':<42} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7} "
        f"{'CPU ms':>6} {'ratio':>6}  {'of':<18} {'target':>12} {'met?':>4} {'same':>5}"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in table:
        targets = []
        if row.scenario.target is not None:
            targets.append(
                f">={row.scenario.target:g}" + (" +0" if row.scenario.zero_errors else "")
            )
        if row.scenario.p99_target is not None:
            targets.append(f"p99<={row.scenario.p99_target:g}")
        target = " ".join(targets)
        met = "" if row.met is None else ("yes" if row.met else "NO")
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
        same = "" if row.same is None else f"{row.same:.2f}"
        cpu = "" if row.cpu_ms is None else f"{row.cpu_ms:.2f}"
        short = " *" if row.exhausted else ""
        print(
            f"{row.scenario.label:<42} {row.rate:>7.0f} {row.p50:>7.1f} {row.p99:>7.1f} "
            f"{row.errors:>7} {cpu:>6} {ratio:>6}  {row.of:<18} {target:>12} {met:>4} "
            f"{same:>5}{short}".rstrip()
        )
    worst = max((mb for mb in rss["issuer"].values()), default=float("nan"))
    listed = ", ".join(f"{mb:.1f}" for mb in rss["issuer"].values()) or "none found"
    met = "yes" if worst <= RSS_TARGET_MB else "NO"
    print(
        f"{'issuer worker RSS after the runs, MB':<42} {listed:>38} "
        f"{'':>6}  {'':<18} {f'<={RSS_TARGET_MB:g}':>12} {met:>4}"
    )
    for name in ("issuer-1m", "floor", "floor-sync"):
        listed = ", ".join(f"{mb:.1f}" for mb in rss[name].values()) or "none found"
        print(f"{name + ' worker RSS after the runs, MB':<42} {listed:>31}")
    print(
        "non-2xx: answers other than the expected status (304 in the If-None-Match rows) "
        "plus requests with no answer, over all timed rounds; CPU ms: the server's CPU "
        "(master and workers, user + system) per answer; ratio: to the floor on sync "
        "workers; same: to the floor under issuer's own gunicorn settings"
    )
    if any(row.exhausted for row in table):
        print("* a connection ran out of login codes before the end: that rate is understated")


def report_json(
    bench: Bench, table: list[Row], rss: dict[str, dict[int, float]], setup: dict[str, Any]
) -> dict[str, Any]:
    def run_json(run: WrkRun, expect: int) -> dict[str, Any]:
        return {
            "rate": round(run.rate(expect), 1),
            "duration_s": run.duration,
            "answers": run.answers,
            "statuses": {str(status): count for status, count in sorted(run.statuses.items())},
            "socket_errors": run.socket_errors,
            "latency_ms": run.latency_ms,
            "exhausted_connections": run.exhausted,
        }

    return {
        **setup,
        "scenarios": {
            row.scenario.name: {
                "label": row.scenario.label,
                "server": row.scenario.server,
                "path": row.scenario.path,
                "connections": bench.connections(row.scenario),
                "expect": row.scenario.expect,
                "median": {
                    "rate": round(row.rate, 1),
                    "p50_ms": row.p50,
                    "p99_ms": row.p99,
                },
                "errors": row.errors,
                "cpu_ms_per_request": None if row.cpu_ms is None else round(row.cpu_ms, 3),
                "round_cpu_ms": [round(ms, 3) for ms in bench.cpu_ms.get(row.scenario.name, [])],
                "p99_target_ms": row.scenario.p99_target,
                "ratio_same_settings": None if row.same is None else round(row.same, 3),
                "ratio": None if row.ratio is None else round(row.ratio, 3),
                "round_ratios": [round(ratio, 3) for ratio in row.ratios],
                "ratio_of": row.of or None,
                "target": row.scenario.target,
                "met": row.met,
                "rounds": [
                    run_json(run, row.scenario.expect) for run in bench.results[row.scenario.name]
                ],
                "warmup": (
                    run_json(bench.warmups[row.scenario.name], row.scenario.expect)
                    if row.scenario.name in bench.warmups
                    else None
                ),
            }
            for row in table
        },
        "worker_rss_mb": {name: list(sizes.values()) for name, sizes in rss.items()},
        "rss_target_mb": RSS_TARGET_MB,
    }


# -- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput of issuer under gunicorn against a bare-Flask floor, load "
        "from wrk, same machine, same run. Reported, never asserted.",
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds timed per run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each scenario")
    parser.add_argument("--warmup", type=int, default=1, help="untimed seconds per scenario")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument(
        "--latency-connections", type=int, default=64, help="connections of the slow login"
    )
    parser.add_argument(
        "--wechat-latency", type=float, default=0.1, help="WeChat's latency in the slow login, s"
    )
    parser.add_argument("--users", type=int, default=1_000_000, help="users in the large DB")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenario names (with their baselines): "
        + ", ".join(scenario.name for scenario in TABLE),
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="where the large database is built once and kept (default: %(default)s)",
    )
    parser.add_argument(
        "--db-dir",
        type=Path,
        default=None,
        help="where issuer's databases live during the run (default: the temporary "
        "directory; /dev/shm takes the disk's fsync out of the figures)",
    )
    parser.add_argument("--json", type=Path, default=None, help="where the JSON report goes")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, databases)"
    )
    args = parser.parse_args(argv)
    if (
        args.duration < 1
        or args.rounds < 1
        or args.warmup < 0
        or args.connections < 1
        or args.latency_connections < 1
        or args.wechat_latency <= 0
        or args.users < 1
    ):
        parser.error("durations, rounds, connections, latency and users must be positive")
    unknown = {name.strip() for name in args.only.split(",") if name.strip()} - set(BY_NAME)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def selected(args: argparse.Namespace) -> tuple[Scenario, ...]:
    """The scenarios to run, in round order: ``--only`` and what they are compared with."""
    wanted = {name.strip() for name in args.only.split(",") if name.strip()} or set(BY_NAME)
    while True:
        more = {
            BY_NAME[name].baseline
            for name in wanted
            if BY_NAME[name].baseline in BY_NAME and BY_NAME[name].baseline not in wanted
        }
        if not more:
            break
        wanted |= {name for name in more if name is not None}
    return tuple(scenario for scenario in ROUND if scenario.name in wanted)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def gunicorn_model() -> str:
    """The worker model the repo's gunicorn.conf.py picks with the servers' environment.

    Read in a child process: the file may act on import (hooks, directories) and reads
    ``os.environ``, which here is the caller's, not the servers'.
    """
    probe = (
        "import runpy, sys; conf = runpy.run_path(sys.argv[1]); "
        "print(conf.get('worker_class', 'sync'), conf.get('threads', 1))"
    )
    result = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [sys.executable, "-c", probe, str(GUNICORN_CONF)],
        cwd=ROOT,
        env=server_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        worker_class, threads = result.stdout.split()
    except ValueError:
        return "unknown (gunicorn.conf.py did not load)"
    return f"{worker_class}, {WORKERS} workers x {threads} threads"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        version = wrk_version()
    except WrkMissing as error:
        print(error, file=sys.stderr)
        return 2
    model = gunicorn_model()
    print(
        f"issuer bench: {os.cpu_count()} CPUs, gunicorn {model}, {args.connections} "
        f"connections ({args.latency_connections} for the slow login), {args.rounds} rounds x "
        f"{args.duration} s (+{args.warmup} s warm-up), {version}, "
        f"Python {sys.version.split()[0]}",
        flush=True,
    )
    json_path = args.json or Path(tempfile.gettempdir()) / time.strftime(
        "issuer-bench-%Y%m%d-%H%M%S.json"
    )
    setup = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "wrk": version,
        "gunicorn": model,
        "connections": args.connections,
        "latency_connections": args.latency_connections,
        "wechat_latency_s": args.wechat_latency,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "large_db_users": args.users,
        "db_dir": str(args.db_dir) if args.db_dir else None,
    }
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            work = Path(tempfile.mkdtemp(prefix="issuer-bench-"))
            if args.keep:
                print(f"temporary directory: {work}")
            else:
                stack.callback(shutil.rmtree, work, ignore_errors=True)
            document = run(args, work, stack.callback, setup)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\ntotal {time.monotonic() - started:.0f} s; JSON: {json_path}")
    return 0


def _commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607 -- git from PATH, read-only
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout.strip() or None
    return None


def run(
    args: argparse.Namespace,
    work: Path,
    on_exit: Callable[..., object],
    setup: dict[str, Any],
) -> dict[str, Any]:
    """Start everything (each stopped by ``on_exit``), run the rounds, print the table."""
    scenarios = selected(args)
    names = {scenario.name for scenario in scenarios}
    data = work
    if args.db_dir is not None:
        data = Path(tempfile.mkdtemp(prefix="issuer-bench-", dir=args.db_dir))
        if args.keep:
            print(f"databases: {data}")
        else:
            on_exit(shutil.rmtree, data, ignore_errors=True)
    big = None
    if names & {"refresh 1M", "login 1M"}:
        cached = cached_database(args.cache_dir, args.users, APPID)
        big = data / "issuer-1m.db"
        shutil.copyfile(cached, big)  # runs write to it: the cached file stays as built

    secret = secrets.token_hex(16)
    wechat = WeChatStandIn(secret, secrets.token_bytes(32), work / "wechat.log")
    on_exit(wechat.stop)
    wechat.start()

    servers = {
        "issuer": Gunicorn(
            "issuer",
            "wsgi:app",
            env=issuer_env(work, "issuer", wechat.url, secret, data / "issuer.db"),
            ready_path="/readyz",
            log_path=work / "issuer.log",
        )
    }
    if big is not None:
        # Issuer starts beside a database that holds sealed data only with the keys that
        # sealed it: the filler's data key (above) and signing keys, here the first issuer's,
        # copied once it has made them.
        on_exit(servers["issuer"].stop)
        servers["issuer"].start().wait_ready()
        shutil.copytree(work / "issuer-keys", work / "issuer-1m-keys", ignore=_worker_reports)
        servers["issuer-1m"] = Gunicorn(
            "issuer-1m",
            "wsgi:app",
            env={
                **issuer_env(work, "issuer-1m", wechat.url, secret, big),
                # The key the filler rows name: without it, issuer rightly refuses the file.
                "ISSUER_DATA_KEY": base64.b64encode(FILLER_DATA_KEY).decode(),
            },
            ready_path="/readyz",
            log_path=work / "issuer-1m.log",
        )
    for server in servers.values():
        if server.process is None:  # not started above
            on_exit(server.stop)
            server.start()
    for server in servers.values():
        server.wait_ready()

    bench = Bench(args=args, work=work, wechat=wechat, servers=servers)
    n, wide = args.connections, args.latency_connections
    # The large database's users are test users 0 .. users-1: the bench's own start after.
    bench.users = bench.first_user = args.users if big is not None else 0
    bench.chains["refresh"] = [body["refresh_token"] for body in bench.log_in("issuer", n)]
    bench.bearers = [body["access_token"] for body in bench.log_in("issuer", max(n, wide))]
    bench.bearers_at = time.monotonic()
    if "mix" in names:
        bench.chains["mix"] = [body["refresh_token"] for body in bench.log_in("issuer", n)]
    if "mix slow" in names:
        bench.chains["mix slow"] = [body["refresh_token"] for body in bench.log_in("issuer", wide)]
    if big is not None:
        bench.chains["refresh 1M"] = [
            body["refresh_token"] for body in bench.log_in("issuer-1m", n)
        ]

    # The floor answers bodies of issuer's sizes: measure them, then start it.
    port = servers["issuer"].port
    code = bench.codes(1, returning=0.0)[0]
    token_bytes = len(call(port, "POST", "/auth/login", {"code": code})[2])
    me = call(port, "GET", "/me", headers={"Authorization": f"Bearer {bench.bearers[0]}"})[2]
    _, jwks_headers, jwks = call(port, "GET", "/.well-known/jwks.json")
    bench.etags["issuer"] = jwks_headers["ETag"]
    sizes = {"token": token_bytes, "me": len(me), "jwks": len(jwks)}
    floor = Gunicorn(
        "floor",
        "bench.floor:app",
        env={f"BENCH_FLOOR_{kind.upper()}_BYTES": str(size) for kind, size in sizes.items()},
        ready_path="/floor/me",
        log_path=work / "floor.log",
    )
    servers["floor"] = floor
    on_exit(floor.stop)
    floor.start().wait_ready()
    bench.etags["floor"] = call(floor.port, "GET", "/floor/jwks")[1]["ETag"]
    bench.chains["floor token"] = ["rt_" + "B" * 70] * n
    floor_sync = Gunicorn(
        "floor-sync",
        "bench.floor:app",
        env=floor.env_given,
        ready_path="/floor/me",
        log_path=work / "floor-sync.log",
        argv=SYNC_WORKERS,
    )
    servers["floor-sync"] = floor_sync
    on_exit(floor_sync.stop)
    floor_sync.start().wait_ready()
    bench.etags["floor-sync"] = call(floor_sync.port, "GET", "/floor/jwks")[1]["ETag"]
    bench.chains["sync floor token"] = ["rt_" + "B" * 70] * n
    setup["body_bytes"] = sizes

    if args.warmup:
        print(f"warm-up: {args.warmup} s of each scenario, untimed", flush=True)
        for scenario in scenarios:
            bench.warmups[scenario.name] = bench.run(scenario, args.warmup)
    for number in range(args.rounds):
        order = scenarios if number % 2 == 0 else scenarios[::-1]
        for scenario in order:
            outcome = bench.run(scenario, args.duration)
            bench.results.setdefault(scenario.name, []).append(outcome)
            bench.cpu_ms.setdefault(scenario.name, []).append(bench.cpu_used)
            print(
                f"round {number + 1}/{args.rounds}  {scenario.label:<42} "
                f"{outcome.rate(scenario.expect):>7.0f} req/s  "
                f"p99 {outcome.latency_ms['p99']:>6.1f} ms  CPU {bench.cpu_used:.2f} ms/req  "
                f"non-2xx {outcome.errors(scenario.expect)}",
                flush=True,
            )
    rss = {name: server.worker_rss_mb() for name, server in servers.items()}
    rss.setdefault("issuer-1m", {})
    table = rows(bench)
    print_table(table, rss)
    return report_json(bench, table, rss, setup)


if __name__ == "__main__":
    sys.exit(main())


def _worker_reports(folder: str, names: list[str]) -> list[str]:
    """What a copy of a key directory leaves out: the reports of the processes serving it."""
    return ["workers"] if "workers" in names else []
