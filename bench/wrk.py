"""Run ``wrk`` with one of the Lua scripts of ``bench/lua/`` and read back what it measured.

One connection per wrk thread: wrk gives each thread its own Lua state, so a connection's
inputs (its login codes, its refresh chain, its Bearer token) and its final state (the newest
token of its chain) live in that state alone. The inputs are written to files before wrk
starts -- nothing is minted while the clock runs -- and ``bench/lua/report.lua`` writes the
result as JSON: wrk's summary, latency percentiles (wrk's, corrected for coordinated
omission), a count per HTTP status, and each connection's final state.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).resolve().parent / "lua"


class WrkMissing(RuntimeError):
    """``wrk`` is not on PATH."""


def wrk_path() -> str:
    """:raises WrkMissing: with a sentence saying how to get it."""
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    return found


def wrk_version() -> str:
    result = subprocess.run(  # noqa: S603 -- wrk from PATH, fixed arguments
        [wrk_path(), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    # "wrk 4.1.0 [epoll] Copyright (C) 2012 Will Glozer": the version, without the notice.
    first = result.stdout.splitlines()[0] if result.stdout else "unknown"
    return first.partition(" Copyright")[0].strip()


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run measured."""

    duration: float  # seconds wrk ran
    answers: int  # HTTP answers received, whatever their status
    statuses: dict[int, int]
    socket_errors: dict[str, int]  # connect, read, write, timeout
    latency_ms: dict[str, float]  # mean, p50, p90, p99, max
    states: list[str]  # per connection, what the script left (a chain's newest token)
    exhausted: int  # connections that ran out of inputs before the end

    def ok(self, expect: int) -> int:
        return self.statuses.get(expect, 0)

    def rate(self, expect: int) -> float:
        """Answers with the expected status per second."""
        return self.ok(expect) / self.duration if self.duration > 0 else 0.0

    def errors(self, expect: int) -> int:
        """Answers of any other status, plus requests that got no answer."""
        unexpected = sum(count for status, count in self.statuses.items() if status != expect)
        return unexpected + sum(self.socket_errors.values())


def run_wrk(
    script: str,
    url: str,
    *,
    connections: int,
    duration: int,
    work: Path,
    inputs: Sequence[Sequence[str]] | None = None,
    header: tuple[str, str | None] | None = None,
    timeout: float = 10.0,
    log: Path | None = None,
) -> WrkRun:
    """Run ``bench/lua/<script>`` against ``url`` with ``connections`` connections.

    :param inputs: per connection, its input lines (``len(inputs) == connections``).
    :param header: (name, shared value); a connection's own value is its first input line.
    :raises subprocess.CalledProcessError: wrk failed; its output is in ``log``.
    """
    if inputs is not None and len(inputs) != connections:
        raise ValueError("one list of inputs per connection")
    work.mkdir(parents=True, exist_ok=True)
    prefix = work / "input"
    for old in work.glob("input.*"):
        old.unlink()
    for number, lines in enumerate(inputs or (), start=1):
        Path(f"{prefix}.{number}").write_text("".join(f"{line}\n" for line in lines))
    out = work / "wrk.json"
    out.unlink(missing_ok=True)
    env = {
        **os.environ,
        "BENCH_LUA_DIR": str(LUA_DIR),
        "BENCH_INPUT": str(prefix) if inputs is not None else "",
        "BENCH_WRK_OUT": str(out),
        "BENCH_HEADER": header[0] if header else "",
        "BENCH_HEADER_VALUE": (header[1] or "") if header else "",
    }
    argv = [
        wrk_path(),
        f"--threads={connections}",
        f"--connections={connections}",
        f"--duration={duration}s",
        f"--timeout={max(1, round(timeout))}s",
        f"--script={LUA_DIR / script}",
        url,
    ]
    with open(log or os.devnull, "ab") as sink:
        subprocess.run(  # noqa: S603 -- wrk from PATH, our own arguments
            argv,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=duration + timeout + 60,
            check=True,
        )
    try:
        report: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError) as error:
        raise RuntimeError(f"wrk wrote no report for {url} (see its log)") from error
    finally:
        for used in work.glob("input.*"):
            used.unlink()  # inputs carry tokens: gone as soon as they are spent
    errors = report["errors"]
    return WrkRun(
        duration=report["duration_us"] / 1e6,
        answers=report["requests"],
        statuses={int(status): count for status, count in report["statuses"].items()},
        socket_errors={name: errors[name] for name in ("connect", "read", "write", "timeout")},
        latency_ms={name: value / 1000 for name, value in report["latency_us"].items()},
        states=list(report["states"]),
        exhausted=report["exhausted"],
    )
