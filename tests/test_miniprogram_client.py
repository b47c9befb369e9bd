"""The mini-program client (clients/miniprogram) against a live development issuer, and as
the npm package a team installs.

The JavaScript tests run under Node's own test runner; this wraps them so that ``make test``
covers the client too. Node is required: CI installs it, and a client nobody runs rots.
The package test packs the client as ``npm publish`` would, installs the tarball into an
empty project, loads it both ways (``require`` and ``import``), and compiles a TypeScript
consumer against its hand-written types with ``tsc --noEmit --strict``. TypeScript comes from
the npm registry at the version package.json pins, installed once into the client's own
(git-ignored) ``node_modules``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_node

CLIENT_DIR = ROOT / "clients" / "miniprogram"
NODE_TIMEOUT = 30  # seconds; the whole run takes about one
NPM_TIMEOUT = 300  # seconds; a first TypeScript install on a slow network
PACKAGE = json.loads((CLIENT_DIR / "package.json").read_text())


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


def npm(*args: str, cwd: Path) -> str:
    """Run npm; its output on success, the test failed with its output otherwise."""
    program = shutil.which("npm")
    if program is None:
        pytest.fail(
            "npm is not on PATH: the mini-program package test needs it; make test installs it"
        )
    command = [program, *args, "--no-audit", "--no-fund", "--loglevel=error"]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def typescript_compiler() -> Path:
    """tsc at the version package.json pins, installed into the client's node_modules once."""
    version = PACKAGE["devDependencies"]["typescript"]
    home = CLIENT_DIR / "node_modules" / "typescript"
    installed = home / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != version:
        npm("install", "--no-save", "--no-package-lock", f"typescript@{version}", cwd=CLIENT_DIR)
    return home / "bin" / "tsc"


def test_the_npm_package_installs_loads_both_ways_and_its_types_check(tmp_path):
    node = node_binary()
    tsc = typescript_compiler()
    packed = json.loads(npm("pack", "--json", "--pack-destination", str(tmp_path), cwd=CLIENT_DIR))
    files = {entry["path"] for entry in packed[0]["files"]}
    assert {"issuer.js", "issuer.mjs", "issuer.d.ts", "issuer.d.mts"} <= files
    assert {"package.json", "README.md", "CHANGELOG.md"} <= files
    assert not any(path.startswith(("test/", "node_modules/")) for path in files)
    assert "private" not in PACKAGE
    for entry in ("main", "module", "types"):
        assert PACKAGE[entry] in files, entry

    project = tmp_path / "app"
    project.mkdir()
    (project / "package.json").write_text('{"name": "app", "private": true}')
    npm("install", "--no-package-lock", str(tmp_path / packed[0]["filename"]), cwd=project)
    name = PACKAGE["name"]
    loads = {
        "require": [
            node,
            "-e",
            f"const c = require('{name}'); console.log(c.VERSION, typeof c.createClient)",
        ],
        "import": [
            node,
            "--input-type=module",
            "-e",
            f"import c, {{ createClient, VERSION }} from '{name}';"
            "console.log(VERSION, typeof createClient, c.createClient === createClient)",
        ],
    }
    expected = {
        "require": f"{PACKAGE['version']} function",
        "import": f"{PACKAGE['version']} function true",
    }
    for how, command in loads.items():
        result = subprocess.run(
            command, cwd=project, capture_output=True, text=True, timeout=NODE_TIMEOUT, check=False
        )
        assert result.stdout.strip() == expected[how], f"{how}: {result.stdout}{result.stderr}"

    for source in (CLIENT_DIR / "test" / "types").iterdir():
        shutil.copy(source, project / source.name)
    result = subprocess.run(
        [node, str(tsc), "--noEmit", "--strict", "-p", str(project / "tsconfig.json")],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"tsc found type errors:\n{result.stdout}{result.stderr}"
