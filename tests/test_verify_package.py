"""issuer-verify (clients/python) installed alone, as a downstream service installs it.

A copy of clients/python is installed with pip into an empty virtualenv; that venv's own
interpreter, in a subprocess run outside the repository, verifies the tokens of a live issuer
whose ``iss`` is its own loopback URL (so the default JWKS URL is the one it derives), refuses
forgeries, and shows that importing ``issuer_verify`` loads nothing of the server: not issuer,
Flask, redis, limits or requests, none of which is even installed. Then the ``flask`` extra is
added and the decorator answers a live token and a missing one.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.conftest import APPID, ROOT

pytestmark = pytest.mark.slow

CLIENT = ROOT / "clients" / "python"
SERVER_PARTS = ("issuer", "flask", "werkzeug", "redis", "limits", "flask_limiter", "requests")


def run(command: list[str], cwd: Path, timeout: float = 600) -> str:
    """Run with this environment minus anything that would let the repository's packages in."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        and not name.startswith(("FLASK_", "ISSUER_"))
    }
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def verify_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An empty virtualenv with ``pip install clients/python`` (from a copy, so that nothing
    outside clients/python can take part); its python and the copy."""
    root = tmp_path_factory.mktemp("verify-venv")
    source = root / "issuer-verify"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(source)], cwd=root)
    return python, source


class LateApp:
    """A WSGI app chosen after the server is bound: issuer must know its own URL first."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture
def own_url_issuer(app_factory: Callable[..., Flask]) -> Iterator[tuple[Flask, str]]:
    """An issuer served on loopback whose ISSUER_URL (``iss``, ``aud``) is that very URL."""
    late = LateApp()
    server = make_server("127.0.0.1", 0, late, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    late.app = app_factory(url=url)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    yield late.app, url
    server.shutdown()
    server.server_close()


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


VERIFY_SCRIPT = """
import importlib.metadata, importlib.util, json, sys

import issuer_verify

parts = json.loads(sys.argv[2])
def loaded():
    return sorted(name for name in sys.modules if name.split(".")[0] in parts)

after_import = loaded()
args = json.loads(sys.argv[1])
verifier = issuer_verify.AccessTokenVerifier(args["issuer"])
claims = verifier.verify(args["token"])
refused = {}
for name, token in args["forged"].items():
    try:
        verifier.verify(token)
        refused[name] = None
    except issuer_verify.InvalidAccessToken as error:
        refused[name] = str(error)
try:
    import issuer_verify.flask
    flask_extra = "importable"
except ImportError as error:
    flask_extra = [error.name, str(error)]
print(json.dumps({
    "after_import": after_import,
    "after_verify": loaded(),
    "installed": sorted(
        dist.metadata["Name"].lower().replace("_", "-")
        for dist in importlib.metadata.distributions()
    ),
    "claims": claims,
    "refused": refused,
    "fetches": verifier.jwks.fetches,
    "flask_extra": flask_extra,
    "module": issuer_verify.__file__,
}))
"""

FLASK_SCRIPT = """
import json, sys

from flask import Flask, g
from issuer_verify import AccessTokenVerifier
from issuer_verify.flask import require_access_token

issuer, token = sys.argv[1:3]
api = Flask("downstream")

@api.get("/orders")
@require_access_token(AccessTokenVerifier(issuer))
def orders():
    return {"user": g.access_token["sub"]}

client = api.test_client()
ok = client.get("/orders", headers={"Authorization": "Bearer " + token})
missing = client.get("/orders")
print(json.dumps({
    "ok": [ok.status_code, ok.get_json()],
    "missing": [missing.status_code, missing.headers.get("WWW-Authenticate"),
                missing.get_json()],
}))
"""


def test_issuer_verify_installs_alone_and_verifies_a_live_issuer(
    verify_venv, own_url_issuer, wechat, tmp_path
):
    python, source = verify_venv
    app, url = own_url_issuer
    client = app.test_client()
    response = client.post("/auth/login", json={"code": wechat.mint_code(APPID, "alice")})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    token = body["access_token"]
    key = app.extensions["issuer"].keys().active
    now = int(time.time())
    claims = jwt.decode(token, options={"verify_signature": False})

    def signed(changes: dict[str, Any], drop: str | None = None) -> str:
        forged = {name: value for name, value in {**claims, **changes}.items() if name != drop}
        return jwt.encode(
            forged, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"}
        )

    header, _, signature = token.split(".")
    forged = {
        "payload tampered": f"{header}.{b64({**claims, 'sub': 'someone-else'})}.{signature}",
        "iat in the future": signed({"iat": now + 60, "exp": now + 960}),
        "no sid": signed({}, drop="sid"),
        "other issuer": signed({"iss": "http://evil.test"}),
    }
    argument = json.dumps({"issuer": url, "token": token, "forged": forged})
    # Outside the repository, so that its issuer/ directory is not on sys.path.
    output = run([str(python), "-c", VERIFY_SCRIPT, argument, json.dumps(SERVER_PARTS)], tmp_path)
    result = json.loads(output)

    assert result["module"].startswith(str(python.parent.parent)), result["module"]
    assert result["after_import"] == [], "importing issuer_verify loaded server modules"
    assert result["after_verify"] == []
    installed = set(result["installed"])
    assert {"issuer-verify", "pyjwt", "cryptography"} <= installed
    for server_part in ("issuer", "flask", "werkzeug", "redis", "limits", "requests"):
        assert server_part not in installed, installed
    # The decorator needs the extra, nothing else does; the error says what to install.
    missing, message = result["flask_extra"]
    assert missing == "flask"
    assert "issuer-verify[flask]" in message

    assert result["claims"]["sub"] == body["user_id"]
    assert result["claims"]["iss"] == url
    assert result["claims"]["client_id"] == APPID
    assert result["fetches"] == 1  # the JWKS at the URL derived from the issuer
    assert all(result["refused"].values()), result["refused"]
    assert "not valid yet" in result["refused"]["iat in the future"]

    # The flask extra adds the decorator.
    run([str(python), "-m", "pip", "install", "--quiet", f"{source}[flask]"], tmp_path)
    result = json.loads(run([str(python), "-c", FLASK_SCRIPT, url, token], tmp_path))
    assert result["ok"] == [200, {"user": body["user_id"]}]
    status, challenge, error = result["missing"]
    assert (status, challenge, error["error"]) == (401, "Bearer", "invalid_token")
