"""A stand-in for WeChat's servers, for development mode and tests. Never for production.

It plays both sides WeChat plays in a login: the phone (``POST /dev/wx.login`` mints a
one-time code for a chosen or random test user, as ``wx.login()`` does) and the API
(``GET /sns/jscode2session`` answers with WeChat's semantics: codes valid 5 minutes and once,
the same errcodes, JSON labelled ``text/plain``). Test users are named; the same name always
gets the same openid per app and the same unionid across apps, as apps bound to one WeChat
Open Platform account do.

Tests inject faults (:meth:`WeChatEmulator.inject`): an errcode, an HTTP status, a body that
is not JSON, or a delay. State lives in this process, so development mode runs as one process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from flask import Flask, Response, request

CODE_LIFETIME = 300.0
# Openids only need to be stable and look like WeChat's; they are not secrets.
IDENTITY_SEED = b"issuer development emulator"


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for the next matching API call.

    Exactly one of ``errcode`` (answered in a 200 JSON body), ``status`` (an HTTP error with
    an HTML page), ``body`` (raw text, e.g. truncated JSON) or ``delay`` alone (then the
    normal answer) is the point; ``delay`` may accompany the others.
    """

    errcode: int | None = None
    status: int | None = None
    body: str | None = None
    delay: float = 0.0
    # Seconds between the bytes of the normal answer: a peer that trickles.
    trickle: float = 0.0
    path: str = "/sns/jscode2session"


@dataclass
class _Code:
    appid: str
    openid: str
    unionid: str | None
    session_key: str = field(repr=False)
    expires_at: float
    used: bool = False


def _stable_id(prefix: str, *parts: str) -> str:
    digest = hmac.new(IDENTITY_SEED, "\x00".join(parts).encode(), hashlib.sha256).digest()
    return prefix + base64.urlsafe_b64encode(digest).decode()[:27]


class WeChatEmulator:
    """WeChat's login APIs for a fixed set of apps, as a WSGI app (``emulator.app``)."""

    def __init__(
        self,
        apps: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """:param apps: appid -> secret of the apps it knows."""
        self.apps = dict(apps)
        self.clock = clock
        self.sleep = sleep
        self.calls: list[str] = []  # API paths called, in order (for tests)
        self._codes: dict[str, _Code] = {}
        self._session_keys: dict[tuple[str, str], str] = {}
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self.app = self._build()

    # -- what tests and the dev page drive

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Misbehave on the next ``times`` calls to ``fault.path``."""
        with self._lock:
            self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def identity(self, appid: str, user: str) -> tuple[str, str]:
        """The (openid, unionid) test user ``user`` has in app ``appid``."""
        return _stable_id("o", appid, user), _stable_id("u", "union", user)

    def mint_code(self, appid: str, user: str | None = None, *, unionid: bool = True) -> str:
        """What ``wx.login()`` does: a one-time code for ``user`` (random when None).

        Each call also gives the user a new ``session_key``, as a later ``wx.login`` may.
        """
        user = user or secrets.token_hex(8)
        openid, union = self.identity(appid, user)
        code = secrets.token_hex(16)
        session_key = base64.b64encode(secrets.token_bytes(16)).decode()
        with self._lock:
            self._codes[code] = _Code(
                appid,
                openid,
                union if unionid else None,
                session_key,
                self.clock() + CODE_LIFETIME,
            )
            self._session_keys[(appid, openid)] = session_key
        return code

    def session_key(self, appid: str, openid: str) -> str | None:
        """The current session_key of a user, as WeChat knows it."""
        with self._lock:
            return self._session_keys.get((appid, openid))

    # -- the WSGI app

    def _build(self) -> Flask:
        app = Flask("issuer.emulator")

        @app.get("/sns/jscode2session")
        def jscode2session() -> Response:
            return self._answer("/sns/jscode2session", self._code2session)

        @app.post("/dev/wx.login")
        def wx_login() -> Response:
            body = request.get_json(silent=True)
            fields = body if isinstance(body, dict) else (request.form or request.args)
            appid = fields.get("appid") or (next(iter(self.apps)) if len(self.apps) == 1 else "")
            user = fields.get("user") or None
            union = fields.get("unionid", True)
            if (
                not isinstance(appid, str)
                or not isinstance(user, str | None)
                or isinstance(union, list | dict)
            ):
                return _json({"errcode": 40097, "errmsg": "invalid args"}, status=400)
            if appid not in self.apps:
                return _json({"errcode": 40013, "errmsg": "invalid appid"}, status=400)
            with_union = str(union).lower() not in ("0", "false", "no")
            code = self.mint_code(appid, user, unionid=with_union)
            openid, _ = self.identity(appid, user) if user else (None, None)
            return _json(
                {"code": code, "appid": appid, "openid": openid, "expires_in": int(CODE_LIFETIME)}
            )

        return app

    def _answer(self, path: str, handler: Callable[[], dict[str, object]]) -> Response:
        with self._lock:
            self.calls.append(path)
            fault = next((item for item in self._faults if item.path == path), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None:
            if fault.delay:
                self.sleep(fault.delay)
            if fault.status is not None:
                page = f"<html><body><h1>{fault.status} Error</h1></body></html>"
                return Response(page, status=fault.status, mimetype="text/html")
            if fault.body is not None:
                return Response(fault.body, mimetype="text/plain")
            if fault.errcode is not None:
                return _json({"errcode": fault.errcode, "errmsg": f"injected {fault.errcode}"})
            if fault.trickle:
                return self._trickle(json.dumps(handler()).encode(), fault.trickle)
        return _json(handler())

    def _trickle(self, body: bytes, pause: float) -> Response:
        def drip() -> Iterator[bytes]:
            for index in range(len(body)):
                yield body[index : index + 1]
                self.sleep(pause)

        return Response(drip(), mimetype="text/plain", headers={"Content-Length": str(len(body))})

    def _code2session(self) -> dict[str, object]:
        args = request.args
        appid, secret = args.get("appid", ""), args.get("secret", "")
        code, grant_type = args.get("js_code", ""), args.get("grant_type", "")
        if not appid:
            return {"errcode": 41002, "errmsg": "appid missing"}
        if appid not in self.apps:
            return {"errcode": 40013, "errmsg": "invalid appid"}
        if not secret:
            return {"errcode": 41004, "errmsg": "appsecret missing"}
        if not hmac.compare_digest(secret, self.apps[appid]):
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        if grant_type != "authorization_code":
            return {"errcode": 40002, "errmsg": "invalid grant_type"}
        if not code:
            return {"errcode": 41008, "errmsg": "missing code"}
        with self._lock:
            entry = self._codes.get(code)
            if entry is None or entry.appid != appid or self.clock() >= entry.expires_at:
                return {"errcode": 40029, "errmsg": "invalid code"}
            if entry.used:
                return {"errcode": 40163, "errmsg": "code been used"}
            entry.used = True
        answer: dict[str, object] = {"openid": entry.openid, "session_key": entry.session_key}
        if entry.unionid:
            answer["unionid"] = entry.unionid
        return answer


def _json(body: Mapping[str, object], status: int = 200) -> Response:
    # WeChat labels its JSON text/plain; clients must not trust the header.
    return Response(json.dumps(body), status=status, mimetype="text/plain")
