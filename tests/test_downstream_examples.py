"""The downstream examples (examples/downstream/) against a real issuer under gunicorn.

Both examples -- the Flask API on issuer_verify and the Node.js server on jose -- run as the
README tells you to run them, as separate processes that know nothing but ``ISSUER_URL``. The
issuer runs with ``ISSUER_JWKS_MAX_AGE=2`` so that key changes reach them within seconds, and
its keys are changed with the real ``issuer keys`` commands while everything keeps running:

- a login token is accepted by both, garbage and missing tokens are refused with RFC 6750 401s,
  and so is every forgery of SPEC §3 (signed with issuer's real key where that matters); a
  ``jku`` header is never followed;
- ``issuer keys rotate`` publishes the next key at once; ``issuer keys rotate --now`` makes a
  key that signs at once, and its tokens are accepted by both without restarting them;
- ``issuer keys revoke`` stops the old key's tokens in both once their cached JWKS expires;
- under load (a refresh-token chain against issuer, the newest access token verified at the
  Flask example, both in loops) both rotations cause no failed request at all;
- no gunicorn worker signs with a key that another worker does not publish yet.

Node.js 20+ and npm are required, as for the mini-program client: ``npm ci`` installs the
example's locked dependencies once per test session.
"""

from __future__ import annotations

import base64
import hmac
import http.client
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from issuer.keys import KeyDirectory, KeyPolicy
from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID, ROOT, Gunicorn, free_port, require_node
from tests.processes import stop_process
from tests.workers import connections_to_two_workers

pytestmark = pytest.mark.slow

EXAMPLES = ROOT / "examples" / "downstream"
NODE_DIR = EXAMPLES / "node"
MAX_AGE = 2  # ISSUER_JWKS_MAX_AGE for these tests
# Every issuer process looks at the key directory about once a second (KeyManager).
KEY_CHECK = 1.0
TIMEOUT = 10


# -- processes


def clean_environ() -> dict[str, str]:
    """This process's environment without what in-process Flask CLI tests leave behind:
    ``FLASK_RUN_FROM_CLI=true`` makes a child's ``app.run()`` return at once."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FLASK_", "WERKZEUG_", "ISSUER_"))
    }


def node_and_npm() -> tuple[str, str]:
    node = require_node(20, "the Node.js downstream example")
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not on PATH: the Node.js downstream example needs it")
    return node, npm


@pytest.fixture(scope="session")
def node_example() -> str:
    """``npm ci`` in examples/downstream/node (exactly package-lock.json), once per session;
    the node binary."""
    node, npm = node_and_npm()
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci in {NODE_DIR} failed:\n{result.stdout}\n{result.stderr}")
    return node


class Example:
    """One example server as a child process, its output in a file."""

    def __init__(self, name: str, command: list[str], cwd: Path, env: dict[str, str], log: Path):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                env={**clean_environ(), **env, "PORT": str(self.port)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, ready_line: str | None = None, timeout: float = 20) -> Example:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.process.returncode}:\n{self.output()}"
                )
            if ready_line is None or ready_line in self.output():
                try:
                    if requests.get(self.url + "/health", timeout=1).status_code == 200:
                        return self
                except requests.ConnectionError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready:\n{self.output()}")

    def orders(self, token: str | None, session: Any = requests) -> requests.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        response: requests.Response = session.get(
            self.url + "/orders", headers=headers, timeout=TIMEOUT
        )
        return response

    def stop(self) -> None:
        stop_process(self.process, timeout=10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    issuer: Gunicorn
    settings: dict[str, str]  # the issuer's ISSUER_* environment
    examples: list[Example] = field(default_factory=list)

    def cli(self, *args: str) -> str:
        """``issuer <args>`` with the issuer's own environment; its output."""
        command = [str(Path(sys.executable).with_name("issuer")), *args]
        result = subprocess.run(
            command,
            cwd=ROOT,
            env={**clean_environ(), **self.settings},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    def published_kids(self) -> list[str]:
        response = requests.get(self.issuer.url + "/.well-known/jwks.json", timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == f"public, max-age={MAX_AGE}"
        return [entry["kid"] for entry in response.json()["keys"]]

    def log_in(self, wechat: WeChatEmulator, user: str) -> dict[str, Any]:
        code = wechat.mint_code(APPID, user)
        response = requests.post(
            self.issuer.url + "/auth/login", json={"code": code}, timeout=TIMEOUT
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def flask(self) -> Example:
        example = Example(
            "flask example",
            [sys.executable, str(EXAMPLES / "flask_api.py")],
            ROOT,
            {"ISSUER_URL": self.issuer.url},
            self.issuer.log_path.with_name("flask-example.log"),
        )
        self.examples.append(example)
        return example.wait_ready()

    def node(self, node: str) -> Example:
        example = Example(
            "node example",
            [node, "server.mjs"],
            NODE_DIR,
            {"ISSUER_URL": self.issuer.url, "JWKS_MAX_AGE": str(MAX_AGE)},
            self.issuer.log_path.with_name("node-example.log"),
        )
        self.examples.append(example)
        return example.wait_ready("listening")

    def logs(self) -> str:
        parts = [f"--- issuer\n{self.issuer.output()[-4000:]}"]
        parts += [f"--- {example.name}\n{example.output()[-4000:]}" for example in self.examples]
        return "\n".join(parts)


@pytest.fixture
def stack(gunicorn_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    """A production issuer under gunicorn whose ``ISSUER_URL`` is its own real URL (the
    ``iss`` downstream services check), with a 2-second JWKS max-age."""
    server = Gunicorn(gunicorn_env, tmp_path / "issuer.log", workers=2)
    settings = {**gunicorn_env, "ISSUER_URL": server.url, "ISSUER_JWKS_MAX_AGE": str(MAX_AGE)}
    deployment = {name: server.env[name] for name in ("WEB_CONCURRENCY", "ISSUER_BIND")}
    server.env = {**clean_environ(), **settings, **deployment}
    stack = Stack(server.start(), settings)
    try:
        server.wait_ready()
        yield stack
    finally:
        for example in stack.examples:
            example.stop()
        server.stop()


def kid_of(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def eventually(
    check: Callable[[], bool], within: float, what: str, logs: Callable[[], str]
) -> float:
    """Poll ``check`` until it holds; the seconds it took. Fails after ``within`` seconds."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within} s: {what}\n{logs()}")
        time.sleep(0.1)


# -- the examples through a key's life


def test_both_examples_follow_rotation_and_revocation(stack, node_example, wechat):
    flask, node = stack.flask(), stack.node(node_example)
    examples = (flask, node)

    first = stack.log_in(wechat, "alice")
    old_token, old_kid = first["access_token"], kid_of(first["access_token"])
    for example in examples:
        response = example.orders(old_token)
        assert response.status_code == 200, (example.name, response.text)
        assert response.json()["user"] == first["user_id"]
        assert response.json()["app"] == APPID

        missing = example.orders(None)
        assert missing.status_code == 401, example.name
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert missing.json()["error"] == "invalid_token"
        for garbage in ("garbage", "a.b.c", old_token[:-4] + "AAAA"):
            bad = example.orders(garbage)
            assert bad.status_code == 401, (example.name, garbage, bad.text)
            assert bad.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
            assert bad.json()["error"] == "invalid_token"

    # The planned path: the next key is announced in the JWKS at once, long before it signs.
    output = stack.cli("keys", "rotate")
    announced = re.search(r"new key (\S+) published", output)
    assert announced is not None, output
    eventually(
        lambda: announced.group(1) in stack.published_kids(),
        KEY_CHECK + 1,
        "the announced next key is in the JWKS",
        stack.logs,
    )
    assert kid_of(stack.log_in(wechat, "alice")["access_token"]) == old_kid  # not signing yet

    # The emergency path: a key that signs at once.
    output = stack.cli("keys", "rotate", "--now")
    rotated = re.search(r"new key (\S+) signs from now", output)
    assert rotated is not None, output
    new_kid = rotated.group(1)
    new_token = ""

    def signs_with_new_key() -> bool:
        nonlocal new_token
        new_token = stack.log_in(wechat, "alice")["access_token"]
        return kid_of(new_token) == new_kid

    eventually(signs_with_new_key, KEY_CHECK + 1, "issuer signs with the new key", stack.logs)
    for example in examples:
        # Accepted without a restart: on its unknown kid, or at the latest when the cached
        # JWKS expires (max-age) and is fetched again.
        took = eventually(
            lambda example=example: example.orders(new_token).status_code == 200,
            MAX_AGE + KEY_CHECK + 1,
            f"{example.name} accepts the new key's token",
            stack.logs,
        )
        print(f"{example.name} accepted the --now key's token after {took:.2f} s")
        assert example.orders(new_token).json()["user"] == first["user_id"]
        # The retired key stays published until its tokens expire.
        assert example.orders(old_token).status_code == 200, example.name

    # Revocation: gone from issuer's JWKS at once, refused downstream once caches expire.
    output = stack.cli("keys", "revoke", old_kid)
    assert f"key {old_kid} revoked" in output
    revoked_at = time.monotonic()
    eventually(
        lambda: old_kid not in stack.published_kids(),
        KEY_CHECK + 1,
        "the revoked key leaves the JWKS",
        stack.logs,
    )
    for example in examples:
        eventually(
            lambda example=example: example.orders(old_token).status_code == 401,
            MAX_AGE + KEY_CHECK + 2 - (time.monotonic() - revoked_at),
            f"{example.name} refuses the revoked key's token",
            stack.logs,
        )
        refused = example.orders(old_token)
        assert refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert example.orders(new_token).status_code == 200, example.name
    # issuer itself refuses it too.
    me = requests.get(
        stack.issuer.url + "/me", headers={"Authorization": f"Bearer {old_token}"}, timeout=TIMEOUT
    )
    assert me.status_code == 401


# -- forgeries, refused by both examples alike


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server recording every request: where a ``jku`` header points."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()
    server.server_close()


def test_both_examples_refuse_forgeries(stack, node_example, wechat, listener):
    flask, node = stack.flask(), stack.node(node_example)
    listener_url, hits = listener
    genuine = stack.log_in(wechat, "mallory")["access_token"]
    kid = kid_of(genuine)
    pem = (Path(stack.settings["ISSUER_KEYS_DIR"]) / f"signing-{kid}.pem").read_bytes()
    private_key = serialization.load_pem_private_key(pem, password=None)
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    good = {
        "iss": stack.issuer.url,
        "sub": "user-1",
        "aud": stack.issuer.url,
        "client_id": APPID,
        "iat": now,
        "exp": now + 600,
        "jti": "jti-1",
        "sid": "sid-1",
        "openid": "openid-1",
    }

    def signed(claims: dict[str, Any] | None = None, **header: Any) -> str:
        headers = {"kid": kid, "typ": "at+jwt", **header}
        return jwt.encode(claims or good, private_key, algorithm="ES256", headers=headers)

    def unsigned(alg: str, key: bytes | None) -> str:
        header = b64url(json.dumps({"alg": alg, "kid": kid, "typ": "at+jwt"}).encode())
        signing_input = f"{header}.{b64url(json.dumps(good).encode())}"
        mac = b"" if key is None else hmac.new(key, signing_input.encode(), "sha256").digest()
        return f"{signing_input}.{b64url(mac)}"

    def as_written(**header: Any) -> str:
        """Signed under exactly this header: the JWT library would drop a ``b64: true``."""
        full = {"alg": "ES256", "kid": kid, "typ": "at+jwt", **header}
        signing_input = f"{b64url(json.dumps(full).encode())}.{b64url(json.dumps(good).encode())}"
        algorithm = jwt.algorithms.get_default_algorithms()["ES256"]
        return f"{signing_input}.{b64url(algorithm.sign(signing_input.encode(), private_key))}"

    def tampered(token: str, **changes: Any) -> str:
        header, _, signature = token.split(".")
        return f"{header}.{b64url(json.dumps({**good, **changes}).encode())}.{signature}"

    def without(name: str) -> dict[str, Any]:
        return {claim: value for claim, value in good.items() if claim != name}

    accepted = {
        "as issuer signs it": signed(),
        "typ in full": signed(typ="application/at+jwt"),
        "issuer's own token": genuine,
        # A verifier's clock a second behind issuer's: within the 5-second leeway.
        "iat a second ahead": signed({**good, "iat": now + 1}),
    }
    forged = {
        "typ JWT": signed(typ="JWT"),
        "typ missing": signed(typ=None),
        "wrong iss": signed({**good, "iss": "http://evil.test"}),
        "wrong aud": signed({**good, "aud": "http://evil.test"}),
        "aud a list": signed({**good, "aud": [stack.issuer.url, "http://evil.test"]}),
        "expired": signed({**good, "iat": now - 1000, "exp": now - 100}),
        "no exp": signed(without("exp")),
        "no iat": signed(without("iat")),
        "no sub": signed(without("sub")),
        "no jti": signed(without("jti")),
        "no client_id": signed(without("client_id")),
        # issuer refuses these itself (RFC 9068 §2.2 claims plus its own sid and openid).
        "iat in the future": signed({**good, "iat": now + 60, "exp": now + 660}),
        "no sid": signed(without("sid")),
        "sid empty": signed({**good, "sid": ""}),
        "sid a number": signed({**good, "sid": 1}),
        "no openid": signed(without("openid")),
        "unionid a number": signed({**good, "unionid": 1}),
        "jku": signed(jku=listener_url + "/jwks.json"),
        "x5u": signed(x5u=listener_url + "/cert.pem"),
        "unknown crit": signed(crit=["exp-policy"], **{"exp-policy": 1}),
        # RFC 7515 §4.1.11: issuer uses no JWS extension, so it understands none, not even
        # RFC 7797's b64 (which jose knows).
        "crit b64": as_written(crit=["b64"], b64=True),
        "unknown kid": signed(kid="unknown"),
        "alg none": unsigned("none", None),
        "HS256 keyed with the public key": unsigned("HS256", public_pem),
        "payload tampered": tampered(signed(), sub="someone-else"),
    }
    for example in (flask, node):
        for name, token in accepted.items():
            response = example.orders(token)
            assert response.status_code == 200, (example.name, name, response.text)
        for name, token in forged.items():
            response = example.orders(token)
            assert response.status_code == 401, (example.name, name, response.text)
            assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
            assert response.json()["error"] == "invalid_token", (example.name, name)
    assert hits == [], "a key URL named by a token was fetched"


# -- rotation under load


@dataclass
class Failure:
    at: float
    what: str
    status: int | None
    detail: str


def test_rotation_under_load_fails_no_request(stack, wechat):
    flask = stack.flask()
    first = stack.log_in(wechat, "bob")
    state = {"access": first["access_token"], "refresh": first["refresh_token"]}
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[Failure] = []
    counts = {"refresh": 0, "verify": 0}
    kids_verified: set[str] = set()
    started = time.monotonic()

    def fail(what: str, status: int | None, detail: str) -> None:
        with lock:
            failures.append(Failure(time.monotonic() - started, what, status, detail))

    def refresh_once(session: requests.Session) -> None:
        with lock:
            refresh_token = state["refresh"]
        try:
            response = session.post(
                stack.issuer.url + "/auth/refresh",
                json={"refresh_token": refresh_token},
                timeout=TIMEOUT,
            )
        except requests.RequestException as error:
            fail("refresh", None, repr(error))
            return
        if response.status_code != 200:
            fail("refresh", response.status_code, response.text)
            return
        body = response.json()
        with lock:
            state["access"], state["refresh"] = body["access_token"], body["refresh_token"]
            counts["refresh"] += 1

    def verify_once(session: requests.Session) -> None:
        with lock:
            token = state["access"]
        try:
            response = flask.orders(token, session)
        except requests.RequestException as error:
            fail("verify", None, repr(error))
            return
        if response.status_code != 200 or response.json().get("user") != first["user_id"]:
            fail("verify", response.status_code, f"kid {kid_of(token)}: {response.text}")
            return
        with lock:
            counts["verify"] += 1
            kids_verified.add(kid_of(token))

    def loop(step: Callable[[requests.Session], None]) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                step(session)

    threads = [threading.Thread(target=loop, args=(step,)) for step in (refresh_once, verify_once)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        announced = stack.cli("keys", "rotate")
        time.sleep(1)
        rotated = stack.cli("keys", "rotate", "--now")
        new_kid = re.search(r"new key (\S+) signs from now", rotated)
        assert new_kid is not None, rotated
        rotated_at = time.monotonic() - started
        # Keep the load on for ~6 s in all, and at least a JWKS max-age past the rotation.
        time.sleep(max(6.0, rotated_at + MAX_AGE + 2) - (time.monotonic() - started))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=2 * TIMEOUT)

    report = "\n".join(
        f"{failure.at:6.2f} s {failure.what} {failure.status}: {failure.detail[:200]}"
        for failure in failures[:10] + failures[10:][-5:]
    )
    assert failures == [], (
        f"{len(failures)} failed requests ({counts}; `rotate --now` done at {rotated_at:.2f} s; "
        f"{announced.strip()} / {rotated.strip()}):\n{report}"
    )
    assert counts["refresh"] > 20, counts
    assert counts["verify"] > 20, counts
    # The load really crossed the rotation: tokens of the new key were verified.
    assert new_kid.group(1) in kids_verified, (kids_verified, new_kid.group(1))


# -- every worker publishes a key before any worker signs with it


def call(connection: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> Any:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(
        method, path, body=None if body is None else json.dumps(body), headers=headers
    )
    response = connection.getresponse()
    payload = response.read()
    assert response.status == 200, (path, response.status, payload)
    return json.loads(payload)


def test_a_key_rotated_in_at_once_is_published_by_every_worker_before_any_signs(stack, wechat):
    """``issuer keys rotate --now`` must not let one process sign with a key another process
    does not publish yet: a verifier that refetches on the unknown kid lands on any worker.

    Every process notices a manifest change at its next key-ring check, at most
    ``CHECK_INTERVAL`` (1 s) later; a key that signs from the very moment it is written is
    therefore used by one worker while another still serves the JWKS without it. (BUG:
    issuer/keys.py ``rotate(immediately=True)`` activates the key the moment it is written,
    and issuer/views.py ``jwks`` serves a ring that may be up to ``CHECK_INTERVAL`` old.)
    """
    with connections_to_two_workers(stack.issuer) as (signer, publisher):
        time.sleep(KEY_CHECK + 0.2)  # both workers are due for a key-ring check
        before = {key["kid"] for key in call(publisher, "GET", "/.well-known/jwks.json")["keys"]}
        checked = time.monotonic()  # the publishing worker just looked at the key directory

        # What `issuer keys rotate --now` does, without the CLI's start-up time.
        policy = KeyPolicy(
            alg="ES256", jwks_max_age=MAX_AGE, rotation_days=30, retired_lifetime=905
        )
        new_kid = KeyDirectory(Path(stack.settings["ISSUER_KEYS_DIR"])).rotate(
            policy, immediately=True
        )
        token = call(signer, "POST", "/auth/login", {"code": wechat.mint_code(APPID, "carol")})[
            "access_token"
        ]
        published = {key["kid"] for key in call(publisher, "GET", "/.well-known/jwks.json")["keys"]}
        elapsed = time.monotonic() - checked
        assert elapsed < KEY_CHECK / 2, f"too slow ({elapsed:.2f} s) to show anything"
        assert new_kid not in before
        assert kid_of(token) in published, (
            f"a worker signed with key {kid_of(token)} while another worker published only "
            f"{sorted(published)} ({elapsed:.3f} s after the rotation; new key {new_kid})"
        )
