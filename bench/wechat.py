"""A stand-in for WeChat's ``sns/jscode2session`` under load: ``python -m bench.wechat``.

Why not :class:`issuer.wechat.emulator.WeChatEmulator`: a load run needs tens of thousands of fresh
codes, and the emulator mints each over HTTP (a millisecond apiece, on the CPUs the servers
need). Here the load side mints codes itself -- ``<user>-<nonce>-<HMAC>`` under a key shared
with the stand-in -- and the stand-in checks the MAC, so minting costs no request. What the
stand-in keeps of WeChat's semantics is what issuer's login path exercises: appid, secret and
grant type checked (40013, 40125, 40002), a code used once (40163), an unknown or forged code
refused (40029), a stable ``openid``/``unionid`` per test user (so the load can mix new and
returning users) and a fresh ``session_key`` per code, JSON labelled ``text/plain``.

Latency: every ``jscode2session`` answer waits ``latency`` seconds, settable while running
(``POST /bench/latency?seconds=0.1``). Each connection has its own thread
(:class:`http.server.ThreadingHTTPServer`), so a sleeping answer blocks nothing else: 64
connections at 100 ms each are 640 answers a second, far below what the threads can carry.

Started as a module it prints its port on the first line of stdout. The appid, secret and
code key come from the environment (``BENCH_WECHAT_APPID``, ``BENCH_WECHAT_SECRET``,
``BENCH_WECHAT_CODE_KEY`` in hex), never from the command line where ``ps`` shows them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
MAC_HEX = 16  # 64 bits of MAC: plenty against a load generator that never forges


def _mac(key: bytes, appid: str, user: int, nonce: str) -> str:
    message = f"{appid}\x00{user}\x00{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:MAC_HEX]


def mint_code(key: bytes, appid: str, user: int) -> str:
    """A one-time ``wx.login`` code for test user number ``user`` of ``appid``."""
    nonce = secrets.token_hex(6)
    return f"{user:x}-{nonce}-{_mac(key, appid, user, nonce)}"


def user_of(key: bytes, appid: str, code: str) -> int | None:
    """The test user a code was minted for, or None when it is not one of ours."""
    parts = code.split("-")
    if len(parts) != 3:
        return None
    user_hex, nonce, mac = parts
    try:
        user = int(user_hex, 16)
    except ValueError:
        return None
    if not hmac.compare_digest(mac, _mac(key, appid, user, nonce)):
        return None
    return user


def identity(appid: str, user: int) -> tuple[str, str]:
    """The (openid, unionid) of test user ``user``: stable, shaped like WeChat's."""
    digest = hashlib.sha256(f"bench\x00{appid}\x00{user}".encode()).digest()
    union = hashlib.sha256(f"bench union\x00{user}".encode()).digest()
    return (
        "o" + base64.urlsafe_b64encode(digest).decode()[:27],
        "u" + base64.urlsafe_b64encode(union).decode()[:27],
    )


class StandIn:
    """The state behind the HTTP handler: apps, the code key, the used codes, the latency."""

    def __init__(self, appid: str, secret: str, code_key: bytes) -> None:
        self.appid = appid
        self.secret = secret
        self.code_key = code_key
        self.latency = 0.0
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def code_to_session(self, query: dict[str, list[str]]) -> dict[str, object]:
        """``jscode2session``'s answer to these query parameters."""

        def arg(name: str) -> str:
            values = query.get(name)
            return values[0] if values else ""

        if arg("appid") != self.appid:
            return {"errcode": 40013, "errmsg": "invalid appid"}
        if not hmac.compare_digest(arg("secret"), self.secret):
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        if arg("grant_type") != "authorization_code":
            return {"errcode": 40002, "errmsg": "invalid grant_type"}
        code = arg("js_code")
        user = user_of(self.code_key, self.appid, code)
        if user is None:
            return {"errcode": 40029, "errmsg": "invalid code"}
        with self._lock:
            if code in self._used:
                return {"errcode": 40163, "errmsg": "code been used"}
            self._used.add(code)
        openid, unionid = identity(self.appid, user)
        session_key = base64.b64encode(secrets.token_bytes(16)).decode()
        return {"openid": openid, "session_key": session_key, "unionid": unionid}


def handler_for(state: StandIn) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``state``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: issuer pools its WeChat connections
        # Headers and body leave in two writes: with Nagle on, the second waits for the
        # client's delayed ACK (40 ms).
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/sns/jscode2session":
                self._send(404, {"errcode": 404, "errmsg": "not found"})
                return
            answer = state.code_to_session(parse_qs(url.query))
            if state.latency > 0:
                time.sleep(state.latency)  # this connection's thread only
            self._send(200, answer)

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if url.path != "/bench/latency":
                self._send(404, {"errcode": 404, "errmsg": "not found"})
                return
            try:
                seconds = float(parse_qs(url.query)["seconds"][0])
            except (KeyError, ValueError):
                self._send(400, {"errcode": 40097, "errmsg": "seconds missing"})
                return
            state.latency = max(0.0, seconds)
            self._send(200, {"latency": state.latency})

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")  # as WeChat labels its JSON
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the query string carries the secret and the code: never logged

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections when a pool of them opens at once.
    request_queue_size = 1024


def serve(appid: str, secret: str, code_key: bytes, port: int = 0) -> Server:
    """The stand-in bound to a loopback port (``port`` 0: a free one); not yet serving."""
    return Server((HOST, port), handler_for(StandIn(appid, secret, code_key)))


def main() -> int:
    server = serve(
        os.environ["BENCH_WECHAT_APPID"],
        os.environ["BENCH_WECHAT_SECRET"],
        bytes.fromhex(os.environ["BENCH_WECHAT_CODE_KEY"]),
    )
    print(server.server_address[1], flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
