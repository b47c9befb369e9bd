"""A stand-in for WeChat's servers, for development mode and tests. Never for production.

It plays both sides WeChat plays: the phone, under ``/dev/`` (``wx.login`` mints a one-time
code for a chosen or random test user; ``phone-code`` what the phone-number button gives;
``avatar`` the photo ``chooseAvatar`` gives; ``user-data`` the ``encryptedData`` that
``wx.getUserProfile`` returns, encrypted with the user's current ``session_key`` and
watermarked for the app) and the server API
(``sns/jscode2session``, ``cgi-bin/stable_token``, ``wxa/business/getuserphonenumber``,
``wxa/checksession``) with WeChat's semantics: codes valid 5 minutes and once, server tokens
valid 2 hours and the same one returned until then, the same errcodes, JSON labelled
``text/plain``. Test users are named; the same name always gets the same openid per app and
the same unionid across apps, as apps bound to one WeChat Open Platform account do.

Tests inject faults (:meth:`WeChatEmulator.inject`): an errcode, an HTTP status, a body that
is not JSON, or a delay. State lives in this process, so development mode runs as one process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from flask import Flask, Response, request
from markupsafe import escape

CODE_LIFETIME = 300.0
SERVER_TOKEN_LIFETIME = 7200
MAX_CALLS_KEPT = 10_000
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


@dataclass
class _WebCode:
    """A code of the authorize page (official-account OAuth), and what it stands for."""

    appid: str
    openid: str
    user: str
    scope: str
    snapshot: bool
    expires_at: float
    used: bool = False


WEB_SCOPES = ("snsapi_base", "snsapi_userinfo")
WEB_TOKEN_LIFETIME = 7200


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
        official_accounts: Iterable[str] = (),
    ) -> None:
        """:param apps: appid -> secret of the apps it knows.
        :param official_accounts: which of them are official accounts (web login's H5 pages):
            ``wx.login`` without an appid picks the one mini-program among the others.
        """
        self.apps = dict(apps)
        self.official_accounts = frozenset(official_accounts)
        self.clock = clock
        self.sleep = sleep
        self.calls: list[str] = []  # API paths called, in order (for tests)
        self._codes: dict[str, _Code] = {}
        self._session_keys: dict[tuple[str, str], str] = {}
        self._phone_codes: dict[str, _Code] = {}
        # getuserphonenumber calls left per appid before WeChat answers 1400001 (quota
        # exhausted); an appid not named here has no quota.
        self.phone_quota: dict[str, int] = {}
        self._server_tokens: dict[str, tuple[str, float]] = {}  # token -> (appid, expires_at)
        self._current_token: dict[str, str] = {}  # appid -> its current token
        self.token_fetches: dict[str, int] = {}  # appid -> stable_token calls that succeeded
        self._web_codes: dict[str, _WebCode] = {}
        self._web_tokens: dict[str, tuple[str, str, str, float]] = {}  # -> appid, openid, user
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
            self._forget_expired()
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

    def mint_web_code(
        self, appid: str, user: str, scope: str = "snsapi_base", *, snapshot: bool = False
    ) -> str:
        """What WeChat's authorize page puts on the redirect when ``user`` consents (or, with
        ``snapshot``, when a page-snapshot visitor taps through: a virtual openid)."""
        openid = _stable_id("osnap", appid, user) if snapshot else self.identity(appid, user)[0]
        code = secrets.token_hex(16)
        with self._lock:
            self._forget_expired()
            entry = _WebCode(appid, openid, user, scope, snapshot, self.clock() + CODE_LIFETIME)
            self._web_codes[code] = entry
        return code

    @staticmethod
    def phone_of(user: str) -> str:
        """The mainland test number of test user ``user``."""
        digits = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big") % 10**8
        return f"138{digits:08d}"

    def mint_phone_code(self, appid: str, user: str) -> str:
        """What the phone-number button gives the mini-program: a one-time code."""
        openid, _ = self.identity(appid, user)
        code = secrets.token_hex(16)
        with self._lock:
            self._phone_codes[code] = _Code(
                appid, openid, None, self.phone_of(user), self.clock() + CODE_LIFETIME
            )
        return code

    def user_data(self, appid: str, user: str, *, phone: bool = False) -> dict[str, str]:
        """``encryptedData``, ``iv``, ``rawData`` and ``signature`` as the phone gets them,
        made with the user's current ``session_key`` (the user must have a code minted).

        :raises KeyError: the user has no session_key yet.
        """
        openid, unionid = self.identity(appid, user)
        session_key = self.session_key(appid, openid)
        if session_key is None:
            raise KeyError(f"test user {user!r} has not called wx.login in {appid}")
        watermark: dict[str, object] = {"timestamp": int(self.clock()), "appid": appid}
        plain: dict[str, object]
        profile: dict[str, object] = {
            "nickName": user,
            "gender": 0,
            "language": "zh_CN",
            "city": "",
            "province": "",
            "country": "",
            "avatarUrl": f"https://example.invalid/{user}",
        }
        if phone:
            number = self.phone_of(user)
            plain = {
                "phoneNumber": number,
                "purePhoneNumber": number,
                "countryCode": "86",
                "watermark": watermark,
            }
        else:
            plain = {"openId": openid, **profile, "unionId": unionid, "watermark": watermark}
        iv = secrets.token_bytes(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(json.dumps(plain).encode()) + padder.finalize()
        key = base64.b64decode(session_key)
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        raw_data = json.dumps(profile, ensure_ascii=False)
        return {
            "encryptedData": base64.b64encode(
                encryptor.update(padded) + encryptor.finalize()
            ).decode(),
            "iv": base64.b64encode(iv).decode(),
            "rawData": raw_data,
            "signature": hashlib.sha1((raw_data + session_key).encode()).hexdigest(),  # noqa: S324
        }

    def revoke_server_token(self, appid: str) -> None:
        """Invalidate an app's server token, as a force refresh elsewhere would."""
        with self._lock:
            token = self._current_token.pop(appid, None)
            if token is not None:
                self._server_tokens.pop(token, None)

    def _forget_expired(self) -> None:
        now = self.clock()
        for codes in (self._codes, self._phone_codes, self._web_codes):
            for code in [code for code, entry in codes.items() if entry.expires_at <= now]:
                del codes[code]
        if len(self.calls) > MAX_CALLS_KEPT:
            del self.calls[: MAX_CALLS_KEPT // 2]

    # -- the WSGI app

    def _build(self) -> Flask:
        app = Flask("issuer.emulator")

        @app.get("/sns/jscode2session")
        def jscode2session() -> Response:
            return self._answer("/sns/jscode2session", self._code2session)

        @app.post("/cgi-bin/stable_token")
        def stable_token() -> Response:
            return self._answer("/cgi-bin/stable_token", self._stable_token)

        @app.post("/wxa/business/getuserphonenumber")
        def getuserphonenumber() -> Response:
            return self._answer("/wxa/business/getuserphonenumber", self._phone_number)

        @app.get("/wxa/checksession")
        def checksession() -> Response:
            return self._answer("/wxa/checksession", self._check_session)

        @app.post("/dev/phone-code")
        def phone_code() -> Response:
            fields = self._dev_fields()
            if isinstance(fields, Response):
                return fields
            appid, user = fields
            if user is None:
                return _json({"errcode": 40097, "errmsg": "user missing"}, status=400)
            return _json(
                {"code": self.mint_phone_code(appid, user), "expires_in": int(CODE_LIFETIME)}
            )

        @app.get("/dev/avatar")
        def avatar() -> Response:
            """What ``<button open-type="chooseAvatar">`` hands the mini-program: a photo (the
            temporary file it then uploads with ``wx.uploadFile``), a JPEG whose colour
            depends on ``user``."""
            user = request.args.get("user", "")
            return Response(sample_avatar(user), mimetype="image/jpeg")

        @app.post("/dev/user-data")
        def user_data() -> Response:
            fields = self._dev_fields()
            if isinstance(fields, Response):
                return fields
            appid, user = fields
            body = request.get_json(silent=True)
            flag = (body if isinstance(body, dict) else request.values).get("phone", "")
            try:
                return _json(
                    self.user_data(
                        appid, user or "", phone=str(flag).lower() in ("1", "true", "yes")
                    )
                )
            except KeyError:
                return _json({"errcode": 40097, "errmsg": "call wx.login first"}, status=400)

        @app.get("/connect/oauth2/authorize")
        def authorize_page() -> Response:
            return self._authorize_page()

        @app.post("/connect/oauth2/authorize")
        def authorize_decision() -> Response:
            return self._authorize_decision()

        @app.get("/sns/oauth2/access_token")
        def web_access_token() -> Response:
            return self._answer("/sns/oauth2/access_token", self._web_access_token)

        @app.get("/sns/userinfo")
        def web_userinfo() -> Response:
            return self._answer("/sns/userinfo", self._web_userinfo)

        @app.post("/wxa/getwxacodeunlimit")
        def wxa_code() -> Response:
            return self._wxa_code()

        @app.get("/dev/web-done")
        def web_done() -> Response:
            # Where the development clients land: shows what came back on the URL.
            rows = "".join(
                f"<dt>{escape(key)}</dt><dd><code>{escape(value)}</code></dd>"
                for key, value in request.args.items()
            )
            return _page("Back from login", f"<dl>{rows}</dl>")

        @app.post("/dev/wx.login")
        def wx_login() -> Response:
            body = request.get_json(silent=True)
            fields = body if isinstance(body, dict) else (request.form or request.args)
            appid = fields.get("appid") or self._only_miniprogram()
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

    def _only_miniprogram(self) -> str:
        """The appid ``wx.login`` means when none is given: the one mini-program, or ""."""
        miniprograms = [appid for appid in self.apps if appid not in self.official_accounts]
        return miniprograms[0] if len(miniprograms) == 1 else ""

    def _dev_fields(self) -> tuple[str, str | None] | Response:
        body = request.get_json(silent=True)
        fields = body if isinstance(body, dict) else request.values
        appid = fields.get("appid") or self._only_miniprogram()
        user = fields.get("user") or None
        if not isinstance(appid, str) or not isinstance(user, str | None):
            return _json({"errcode": 40097, "errmsg": "invalid args"}, status=400)
        if appid not in self.apps:
            return _json({"errcode": 40013, "errmsg": "invalid appid"}, status=400)
        return appid, user

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

    def _stable_token(self) -> dict[str, object]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return {"errcode": 47001, "errmsg": "data format error"}
        appid, secret = body.get("appid"), body.get("secret")
        if body.get("grant_type") != "client_credential":
            return {"errcode": 40002, "errmsg": "invalid grant_type"}
        if not isinstance(appid, str) or appid not in self.apps:
            return {"errcode": 40013, "errmsg": "invalid appid"}
        if not isinstance(secret, str) or not hmac.compare_digest(secret, self.apps[appid]):
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        now = self.clock()
        with self._lock:
            current = self._current_token.get(appid)
            entry = self._server_tokens.get(current) if current else None
            if entry is None or now >= entry[1] or body.get("force_refresh") is True:
                if current is not None:
                    self._server_tokens.pop(current, None)  # forced or expired: invalid now
                current = secrets.token_urlsafe(48)
                entry = (appid, now + SERVER_TOKEN_LIFETIME)
                self._server_tokens[current] = entry
                self._current_token[appid] = current
            self.token_fetches[appid] = self.token_fetches.get(appid, 0) + 1
        return {"access_token": current, "expires_in": max(1, int(entry[1] - now))}

    def _token_error(self) -> dict[str, object] | None:
        token = request.args.get("access_token", "")
        with self._lock:
            entry = self._server_tokens.get(token)
        if entry is None:
            return {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"}
        if self.clock() >= entry[1]:
            return {"errcode": 42001, "errmsg": "access_token expired"}
        return None

    def _phone_number(self) -> dict[str, object]:
        refused = self._token_error()
        if refused is not None:
            return refused
        body = request.get_json(silent=True)
        code = body.get("code") if isinstance(body, dict) else None
        token_appid = self._server_tokens.get(request.args.get("access_token", ""), ("", 0.0))[0]
        with self._lock:
            entry = self._phone_codes.get(code) if isinstance(code, str) else None
            if (
                entry is None
                or entry.used
                or entry.appid != token_appid
                or self.clock() >= entry.expires_at
            ):
                return {"errcode": 40029, "errmsg": "invalid code"}
            openid = body.get("openid") if isinstance(body, dict) else None
            if openid is not None and openid != entry.openid:
                # The code was issued to another user than the openid sent with it.
                return {"errcode": 40003, "errmsg": "invalid openid"}
            quota = self.phone_quota.get(entry.appid)
            if quota is not None:
                if quota <= 0:
                    return {"errcode": 1400001, "errmsg": "quota exhausted"}
                self.phone_quota[entry.appid] = quota - 1
            entry.used = True
        number = entry.session_key  # the phone number rides in the code record
        return {
            "errcode": 0,
            "errmsg": "ok",
            "phone_info": {
                "phoneNumber": number,
                "purePhoneNumber": number,
                "countryCode": "86",
                "watermark": {"timestamp": int(self.clock()), "appid": entry.appid},
            },
        }

    def _check_session(self) -> dict[str, object]:
        refused = self._token_error()
        if refused is not None:
            return refused
        args = request.args
        token_appid = self._server_tokens.get(args.get("access_token", ""), ("", 0.0))[0]
        session_key = self.session_key(token_appid, args.get("openid", ""))
        if args.get("sig_method") != "hmac_sha256" or session_key is None:
            return {"errcode": 87009, "errmsg": "invalid signature"}
        expected = hmac.new(session_key.encode(), b"", hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, args.get("signature", "")):
            return {"errcode": 87009, "errmsg": "invalid signature"}
        return {"errcode": 0, "errmsg": "ok"}

    # -- official-account OAuth (网页授权): the authorize page and its two APIs

    def _authorize_params(self, fields: Mapping[str, str]) -> dict[str, str] | Response:
        appid, scope = fields.get("appid", ""), fields.get("scope", "")
        redirect_uri = fields.get("redirect_uri", "")
        if appid not in self.apps or appid not in self.official_accounts:
            return _page("Error", "<p>appid is not an official account (10003)</p>", 400)
        if fields.get("response_type") != "code" or scope not in WEB_SCOPES:
            return _page("Error", "<p>response_type or scope is wrong (10005)</p>", 400)
        if not redirect_uri.startswith(("http://", "https://")):
            return _page("Error", "<p>redirect_uri is wrong (10003)</p>", 400)
        return {
            "appid": appid,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": scope,
            "state": fields.get("state", ""),
        }

    def _authorize_page(self) -> Response:
        checked = self._authorize_params(request.args)
        if isinstance(checked, Response):
            return checked
        hidden = "".join(
            f'<input type="hidden" name="{escape(key)}" value="{escape(value)}">'
            for key, value in checked.items()
        )
        asks = (
            "your nickname and avatar" if checked["scope"] == "snsapi_userinfo" else "who you are"
        )
        form = (
            f"<p>A page of official account <code>{escape(checked['appid'])}</code> asks for "
            f'{asks}.</p><form method="post">{hidden}'
            '<label>Test user <input name="user" value="alice" required></label> '
            '<button name="action" value="consent">Allow</button> '
            '<button name="action" value="refuse">Refuse</button> '
            '<button name="action" value="snapshot">Be a page-snapshot visitor</button>'
            "</form>"
        )
        return _page("WeChat authorization (emulated)", form)

    def _authorize_decision(self) -> Response:
        checked = self._authorize_params(request.form)
        if isinstance(checked, Response):
            return checked
        action, user = request.form.get("action", ""), request.form.get("user", "").strip()
        if action not in ("consent", "refuse", "snapshot") or not user:
            return _page("Error", "<p>choose a test user and an action</p>", 400)
        query: dict[str, str] = {"state": checked["state"]}
        if action != "refuse":
            # Refusing sends the browser back with the state alone, as WeChat does.
            code = self.mint_web_code(
                checked["appid"], user, checked["scope"], snapshot=action == "snapshot"
            )
            query = {"code": code, **query}
        separator = "&" if "?" in checked["redirect_uri"] else "?"
        target = checked["redirect_uri"] + separator + urlencode(query)
        return Response(status=302, headers={"Location": target})

    def _app_credentials(self) -> dict[str, object] | None:
        appid, secret = request.args.get("appid", ""), request.args.get("secret", "")
        if not appid:
            return {"errcode": 41002, "errmsg": "appid missing"}
        if appid not in self.apps:
            return {"errcode": 40013, "errmsg": "invalid appid"}
        if not secret:
            return {"errcode": 41004, "errmsg": "appsecret missing"}
        if not hmac.compare_digest(secret, self.apps[appid]):
            return {"errcode": 40125, "errmsg": "invalid appsecret"}
        return None

    def _web_access_token(self) -> dict[str, object]:
        refused = self._app_credentials()
        if refused is not None:
            return refused
        appid, code = request.args["appid"], request.args.get("code", "")
        if request.args.get("grant_type") != "authorization_code":
            return {"errcode": 40002, "errmsg": "invalid grant_type"}
        if not code:
            return {"errcode": 41008, "errmsg": "missing code"}
        with self._lock:
            entry = self._web_codes.get(code)
            if entry is None or entry.appid != appid or self.clock() >= entry.expires_at:
                return {"errcode": 40029, "errmsg": "invalid code"}
            if entry.used:
                return {"errcode": 40163, "errmsg": "code been used"}
            entry.used = True
            token = secrets.token_hex(16)
            self._web_tokens[token] = (appid, entry.openid, entry.user, self.clock() + 7200)
        answer: dict[str, object] = {
            "access_token": token,
            "expires_in": WEB_TOKEN_LIFETIME,
            "refresh_token": secrets.token_hex(16),
            "openid": entry.openid,
            "scope": entry.scope,
        }
        if entry.snapshot:
            answer["is_snapshotuser"] = 1
        elif entry.scope == "snsapi_userinfo":
            # unionid comes only with snsapi_userinfo.
            answer["unionid"] = self.identity(appid, entry.user)[1]
        return answer

    def _web_userinfo(self) -> dict[str, object]:
        token, openid = request.args.get("access_token", ""), request.args.get("openid", "")
        with self._lock:
            known = self._web_tokens.get(token)
        if known is None or self.clock() >= known[3]:
            return {"errcode": 42001 if known else 40001, "errmsg": "invalid access_token"}
        appid, token_openid, user, _ = known
        if openid != token_openid:
            return {"errcode": 40003, "errmsg": "invalid openid"}
        return {
            "openid": openid,
            "nickname": user,
            "sex": 0,
            "province": "",
            "city": "",
            "country": "",
            "headimgurl": f"https://thirdwx.qlogo.cn/mmopen/{_stable_id('a', user)}/132",
            "privilege": [],
            "unionid": self.identity(appid, user)[1],
        }

    # -- the unlimited mini-program code (wxa/getwxacodeunlimit)

    def _wxa_code(self) -> Response:
        """A real PNG whose text chunks name the scene and page, or WeChat's JSON errors:
        https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/qrcode-link/qr-code/getUnlimitedQRCode.html"""
        path = "/wxa/getwxacodeunlimit"
        with self._lock:
            self.calls.append(path)
            fault = next((item for item in self._faults if item.path == path), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None and fault.errcode is not None:
            return _json({"errcode": fault.errcode, "errmsg": f"injected {fault.errcode}"})
        refused = self._token_error()
        if refused is not None:
            return _json(refused)
        body = request.get_json(silent=True)
        scene = body.get("scene") if isinstance(body, dict) else None
        page = body.get("page", "") if isinstance(body, dict) else ""
        if not isinstance(scene, str) or not 0 < len(scene) <= 32 or not isinstance(page, str):
            return _json({"errcode": 40169, "errmsg": "invalid length for scene"})
        if page.startswith("/"):
            return _json({"errcode": 41030, "errmsg": "invalid page"})
        return Response(scene_png(scene, page), mimetype="image/png")


def scene_png(scene: str, page: str, size: int = 21, scale: int = 8) -> bytes:
    """A small grey PNG of cells drawn from the scene's hash, with ``scene`` and ``page`` in
    tEXt chunks: a real image a browser shows, whose content names what it encodes."""
    digest = hashlib.sha256(scene.encode()).digest()
    bits = "".join(f"{byte:08b}" for byte in digest * (size * size // 256 + 1))
    rows = []
    for y in range(size * scale):
        cells = bytes(
            0 if bits[(y // scale) * size + x // scale] == "1" else 255 for x in range(size * scale)
        )
        rows.append(b"\x00" + cells)  # filter type 0 for every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )  # fmt: skip

    side = size * scale
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)),
            chunk(b"tEXt", b"scene\x00" + scene.encode()),
            chunk(b"tEXt", b"page\x00" + page.encode()),
            chunk(b"IDAT", zlib.compress(b"".join(rows))),
            chunk(b"IEND", b""),
        )
    )


def _page(title: str, body: str, status: int = 200) -> Response:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return Response(html, status=status, mimetype="text/html")


def sample_avatar(user: str) -> bytes:
    """A 256 px JPEG of one colour, derived from ``user``: a stand-in for a chosen photo."""
    import io

    from PIL import Image  # only development mode and tests come here

    red, green, blue = hashlib.sha256(user.encode()).digest()[:3]
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (red, green, blue)).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _json(body: Mapping[str, object], status: int = 200) -> Response:
    # WeChat labels its JSON text/plain; clients must not trust the header.
    return Response(json.dumps(body), status=status, mimetype="text/plain")
