"""The browser client of web login (clients/web) against a live development issuer, under
Node's own test runner (``fetch`` and WebCrypto as a browser has them)."""

from __future__ import annotations

import os
import re
import subprocess

from tests.conftest import ROOT, require_node

CLIENT_DIR = ROOT / "clients" / "web"


def test_web_client_against_a_live_issuer(dev_server: str) -> None:
    node = require_node(18, "node --test for the web client")
    files = sorted(str(path) for path in (CLIENT_DIR / "test").glob("*.test.mjs"))
    assert files
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=CLIENT_DIR,
        env={**os.environ, "ISSUER_TEST_URL": dev_server},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.MULTILINE)
    assert passed is not None
    assert int(passed.group(1)) == 5
