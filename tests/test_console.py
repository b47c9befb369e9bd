"""The development console (``/_console``): served only when issuer plays WeChat itself, under
a strict Content-Security-Policy, and clicked through in a real headless chromium.

The browser test drives Debian's ``/usr/bin/chromium`` with ``playwright-core`` from npm
(installed once into ``tests/browser/node_modules``, git-ignored; it never downloads a
browser). Screenshots go to the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from issuer.web.console import CONTENT_SECURITY_POLICY, _script_safe_json
from tests.conftest import ROOT, require_node

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
NPM_TIMEOUT = 300  # seconds; a first install on a slow network
RUN_TIMEOUT = 120  # seconds; the click-through takes about ten


def config_of(page: str) -> dict[str, object]:
    found = re.search(r'<script type="application/json" id="config">(.*?)</script>', page, re.S)
    assert found is not None, page
    parsed: dict[str, object] = json.loads(found.group(1))
    return parsed


def test_the_console_is_served_in_development_under_a_strict_policy(dev_server):
    page = requests.get(dev_server + "/_console", timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["Cache-Control"] == "no-store"
    policy = dict(
        item.strip().split(" ", 1) for item in CONTENT_SECURITY_POLICY.split(";") if item.strip()
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # no inline script, no eval
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert config_of(page.text) == {
        "issuer": dev_server,
        "appid": "wxde000000000000de",
        "h5": {"client_id": "dev-h5", "redirect_uri": dev_server + "/_wechat/dev/web-done"},
        "pc": {"client_id": "dev-pc"},
    }
    # No inline script: every <script> either carries data or names a file of the page.
    for tag in re.findall(r"<script[^>]*>", page.text):
        assert 'type="application/json"' in tag or 'src="/_console/' in tag, tag
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        asset = requests.get(f"{dev_server}/_console/{name}", timeout=5)
        assert asset.status_code == 200
        assert asset.headers["Content-Type"].startswith(kind)
    missing = requests.get(dev_server + "/_console/../config.py", timeout=5)
    assert missing.status_code == 404
    other = requests.get(dev_server + "/_console/index.html", timeout=5)
    assert other.status_code == 404
    assert other.json()["error"] == "not_found"


def test_production_has_no_console(client):
    for path in ("/_console", "/_console/console.js", "/_console/console.css"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json["error"] == "not_found"


def test_development_against_a_real_wechat_has_no_console(app_factory, wechat_url):
    # A configured app reaches WeChat through ISSUER_WECHAT_API_BASE: no emulator, so no page
    # that plays the emulator's phone.
    app = app_factory(env="development", url="http://127.0.0.1:8000", wechat_api_base=wechat_url)
    assert app.test_client().get("/_console").status_code == 404


def test_the_page_config_stays_inert_inside_its_script_element():
    hostile = {"issuer": "</script><script>alert(1)</script>", "h5": "<!-- & -->"}
    text = _script_safe_json(hostile)
    assert "<" not in text
    assert ">" not in text
    assert "&" not in text
    assert json.loads(text) == hostile


def playwright_core() -> Path:
    """playwright-core at the version tests/browser/package.json pins, installed once."""
    version = json.loads((BROWSER_DIR / "package.json").read_text())["devDependencies"][
        "playwright-core"
    ]
    installed = BROWSER_DIR / "node_modules" / "playwright-core" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != version:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                "npm is not on PATH: the console's browser test needs it; make test installs it"
            )
        command = [npm, "install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund",
                   "--loglevel=error", f"playwright-core@{version}"]  # fmt: skip
        result = subprocess.run(
            command, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return installed.parent


@pytest.mark.slow
def test_the_console_in_a_real_browser(dev_server, tmp_path):
    """Mini-program login (the pair decoded, /me, refresh, decrypt, phone, profile), the H5
    login through the emulator's authorize page, and the scan login with both halves on the
    page, clicked in chromium; screenshots in tmp_path."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: make test installs Debian's chromium")
    node = require_node(18, "the console's browser test")
    playwright_core()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    result = subprocess.run(
        [node, str(BROWSER_DIR / "console.mjs")],
        cwd=BROWSER_DIR,
        env={**os.environ, "ISSUER_TEST_URL": dev_server, "SCREENSHOTS": str(shots)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, output
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown["h5"] == "dev-h5"
    assert shown["pc"] == "dev-pc"
    assert shown["consoleErrors"] == [], output
    taken = sorted(path.name for path in shots.iterdir())
    assert taken == [
        "1-miniprogram.png",
        "2-h5-authorize.png",
        "3-h5-done.png",
        "4-scan-scanned.png",
        "5-scan-confirmed.png",
    ]
    for name in taken:
        assert (shots / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
