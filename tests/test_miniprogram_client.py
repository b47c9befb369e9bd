"""The mini-program client (clients/miniprogram/issuer.js) against a live development issuer.

The JavaScript tests run under Node's own test runner; this wraps them so that ``make test``
covers the client too. Node is required: CI installs it, and a client nobody runs rots.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from tests.conftest import ROOT, require_node

CLIENT_DIR = ROOT / "clients" / "miniprogram"
NODE_TIMEOUT = 30  # seconds; the whole run takes about one


def node_binary() -> str:
    return require_node(18, "node --test for the mini-program client")


def test_miniprogram_client_against_a_live_issuer(dev_server):
    node = node_binary()
    # Files, not the directory: Node 21+ no longer walks a directory given to --test.
    files = sorted(str(path) for path in (CLIENT_DIR / "test").glob("*.test.js"))
    assert files, f"no *.test.js in {CLIENT_DIR / 'test'}"
    command = [node, "--test", "--test-reporter=tap", *files]
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            cwd=CLIENT_DIR,
            env={**os.environ, "ISSUER_TEST_URL": dev_server},
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout
        pytest.fail(f"node --test took over {NODE_TIMEOUT} s; its output so far:\n{out or ''}")
    elapsed = time.monotonic() - started
    output = f"{' '.join(command)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, f"node --test exited {result.returncode}\n{output}"
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.MULTILINE)
    assert passed is not None, output
    assert int(passed.group(1)) > 0, output
    assert re.search(r"^# fail 0$", result.stdout, re.MULTILINE), output
    assert elapsed < NODE_TIMEOUT
