"""WeChat server API client: ``sns/jscode2session`` (code -> openid + session_key).

One ``requests.Session`` per process for keep-alive, a timeout on every call, and WeChat's
in-band ``errcode`` checked even on HTTP 200. WeChat sometimes labels JSON ``text/plain``, so
the body is parsed whatever the content type says.

The request URL carries the app secret and the user's code, so neither URLs nor
``requests``/``urllib3`` debug lines are ever logged (the logging setup silences urllib3).
Reference: https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/user-login/code2Session.html
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from urllib3.exceptions import HTTPError, ReadTimeoutError

from ..config import WeChatApp
from ..errors import (
    AccessDenied,
    InvalidGrant,
    IssuerError,
    QuotaExhausted,
    SlowDown,
    TemporarilyUnavailable,
    UpstreamMisconfigured,
    UpstreamTimeout,
)

log = logging.getLogger("issuer.wechat")

CODE_TO_SESSION = "/sns/jscode2session"
# Web pages inside WeChat (official-account OAuth, 网页授权):
# https://developers.weixin.qq.com/doc/offiaccount/OA_Web_Apps/Wechat_webpage_authorization.html
WEB_CODE_EXCHANGE = "/sns/oauth2/access_token"
WEB_USERINFO = "/sns/userinfo"
MISSING_CODE = 41008
WXA_CODE = "/wxa/getwxacodeunlimit"
INVALID_PAGE = 41030
# A mini-program code is a PNG (or a JPEG); some ten to a few hundred KiB.
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
MAX_IMAGE_BYTES = 2 * 1024 * 1024
BUSY = -1
INVALID_CODE = 40029
CODE_USED = 40163
HIGH_RISK_USER = 40226
INVALID_SIGNATURE = 87009
# The server access token is invalid (40001, 40014) or expired (42001).
TOKEN_REJECTED = frozenset({40001, 40014, 42001})
RATE_LIMITED = 45011
# getuserphonenumber: the code was not issued to the openid sent with it.
INVALID_OPENID = 40003
# Quotas no retry can help with until they are topped up or reset: getuserphonenumber's paid
# quota (1400001), and the app's daily quota of an API (45009).
PHONE_QUOTA_EXHAUSTED = 1400001
DAILY_QUOTA_EXHAUSTED = 45009
# WeChat refuses the app itself: wrong appid or secret, secret missing, server IP not on the
# app's allow-list, API not authorised for this app.
CREDENTIAL_ERRCODES = frozenset({40001, 40002, 40013, 40125, 40164, 41002, 41004, 48001, 40243})
BUSY_RETRY_DELAY = 0.2
# WeChat's 45011 means the per-minute quota is spent.
RATE_LIMIT_RETRY_AFTER = 60
# A session_key is base64 of an AES-128 key: 22 characters and "==" (re.fullmatch: no newline).
SESSION_KEY_BYTES = 16
SESSION_KEY_PATTERN = re.compile(r"[A-Za-z0-9+/]{22}==")
# Characters of WeChat's errmsg kept in a log line, after redaction.
MAX_ERRMSG_LOGGED = 200
# A fragment of a secret this long at either end of an errmsg is redacted too: an upstream
# that cut its own message may end it with the first characters of a secret it echoed.
MIN_FRAGMENT = 4
REDACTED = "[redacted]"
# WeChat's answers are a few hundred bytes; anything far larger is not one.
MAX_ANSWER_BYTES = 64 * 1024
# The errcodes this client knows by number; metrics label any other as "other", so an
# upstream answering arbitrary numbers cannot grow the set of label values.
KNOWN_ERRCODES = frozenset(
    {0, BUSY, INVALID_CODE, CODE_USED, HIGH_RISK_USER, INVALID_SIGNATURE, RATE_LIMITED}
    | {MISSING_CODE, INVALID_PAGE}
    | {INVALID_OPENID, PHONE_QUOTA_EXHAUSTED, DAILY_QUOTA_EXHAUSTED}
    | TOKEN_REJECTED
    | CREDENTIAL_ERRCODES
)

# Told of every HTTP exchange with WeChat: (API path, result, seconds). The result is the
# errcode answered ("0" for success, "other" for one not in KNOWN_ERRCODES), or "timeout",
# "transport" (no answer), "bad_status" (not HTTP 200) or "bad_response" (not a WeChat
# answer) when there was no errcode to read.
WeChatObserver = Callable[[str, str, float], None]


class _Deadline(Exception):
    """The whole answer took longer than the timeout."""


class ServerTokenRejected(Exception):
    """WeChat refused the server access token (40001, 40014, 42001): refresh it, retry once."""

    def __init__(self, errcode: int) -> None:
        super().__init__(f"server access token rejected (errcode {errcode})")
        self.errcode = errcode


class _SignatureRefused(Exception):
    """checksession's 87009: the signature was not made with the current session_key."""


@dataclass(frozen=True)
class ServerAccessToken:
    token: str = field(repr=False)
    expires_in: int


@dataclass(frozen=True)
class PhoneNumber:
    phone_number: str = field(repr=False)
    pure_phone_number: str = field(repr=False)
    country_code: str | None


@dataclass(frozen=True)
class CodeSession:
    """What ``jscode2session`` answers for a valid code."""

    openid: str
    session_key: str = field(repr=False)
    unionid: str | None = None


@dataclass(frozen=True)
class WebAuthorization:
    """What ``sns/oauth2/access_token`` answers for an authorize-page code.

    ``unionid`` comes only with ``snsapi_userinfo`` (and an app bound to an Open Platform
    account); ``snapshot`` is ``is_snapshotuser=1``: a visitor of a page snapshot (朋友圈
    快照页) with a virtual openid, who must not get an account.
    """

    openid: str
    access_token: str = field(repr=False)
    scope: str
    unionid: str | None = None
    snapshot: bool = False


@dataclass(frozen=True)
class WebUserInfo:
    """The profile ``sns/userinfo`` gives (``snsapi_userinfo`` only)."""

    nickname: str | None
    avatar_url: str | None
    unionid: str | None


def _environ_ca_bundle() -> str | bool:
    """The CA bundle requests would take from the environment, or True (its default)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class WeChatClient:
    """Calls WeChat for the configured apps; every failure becomes an :class:`IssuerError`.

    :param pool_size: keep-alive connections kept per process: one per worker thread
        (``gunicorn.conf.py``), so none is opened and thrown away under load.
    """

    def __init__(
        self,
        api_base: str,
        timeout: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        pool_size: int = 32,
        observe: WeChatObserver | None = None,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self._sleep = sleep
        self._observe = observe
        self._pool_size = pool_size
        self._local_pid: int | None = None
        self._session: requests.Session | None = None
        self._lock = threading.Lock()
        # Told the appid before every call made for a logged-in user (all but the login
        # exchange, which WeChat counts per user); raises SlowDown when the app's budget of
        # calls is spent, so that WeChat's per-app quota never is. Set by the factory.
        self.budget: Callable[[str], None] | None = None

    def _http(self) -> requests.Session:
        # One pooled session per process; a fork (gunicorn --preload) gets a fresh one.
        pid = os.getpid()
        if self._session is None or self._local_pid != pid:
            with self._lock:
                if self._session is None or self._local_pid != pid:
                    session = requests.Session()
                    # The environment's proxy and CA settings, read once: with trust_env on,
                    # requests re-reads and re-parses them on every call (a tenth of a login's
                    # CPU in the benchmark's profile).
                    session.proxies = requests.utils.get_environ_proxies(self.api_base)
                    session.verify = _environ_ca_bundle()
                    session.trust_env = False
                    adapter = requests.adapters.HTTPAdapter(
                        pool_connections=4, pool_maxsize=self._pool_size
                    )
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    session.headers["User-Agent"] = "issuer"
                    self._session, self._local_pid = session, pid
        assert self._session is not None
        return self._session

    def code_to_session(self, app: WeChatApp, code: str) -> CodeSession:
        """Exchange a ``wx.login`` code for the user's openid and session_key.

        :raises IssuerError: ``invalid_grant`` (40029 bad/expired code, 40163 used code),
            ``access_denied`` (40226), ``slow_down`` (45011), ``upstream_misconfigured``
            (credentials), ``temporarily_unavailable`` (busy twice, 5xx, garbage),
            ``upstream_timeout``.
        """
        params = {
            "appid": app.appid,
            "secret": app.secret,
            "js_code": code,
            "grant_type": "authorization_code",
        }
        body = self._call(
            "GET",
            CODE_TO_SESSION,
            app,
            params=params,
            redact=(app.secret, code),
            refusals={
                INVALID_CODE: lambda: InvalidGrant(
                    "The code is invalid or expired; call wx.login for a new one."
                ),
                CODE_USED: lambda: InvalidGrant(
                    "The code was already used; call wx.login for a new one."
                ),
            },
        )
        openid, session_key = body.get("openid"), body.get("session_key")
        unionid = body.get("unionid") or None
        if not (_text(openid) and _text(session_key) and (unionid is None or _text(unionid))):
            log.error(
                "WeChat answered jscode2session without openid/session_key (app %s)", app.appid
            )
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        if not is_session_key(str(session_key)):
            # Stored, it would fail every later decrypt with a 500: refuse it here, and log
            # only that it was malformed, never the value.
            log.error(
                "WeChat answered jscode2session with a session_key that is not base64 of "
                "16 bytes (app %s)",
                app.appid,
            )
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        return CodeSession(openid=str(openid), session_key=str(session_key), unionid=unionid)

    def stable_token(self, app: WeChatApp, *, force_refresh: bool = False) -> ServerAccessToken:
        """A server access token from ``cgi-bin/stable_token`` (normal mode unless forced).

        Normal mode returns the current token while it is valid, so every caller that asks
        gets the same one; ``force_refresh`` makes a new one (WeChat allows a few per day).
        https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-access-token/getStableAccessToken.html
        """
        body = self._call(
            "POST",
            "/cgi-bin/stable_token",
            app,
            json_body={
                "grant_type": "client_credential",
                "appid": app.appid,
                "secret": app.secret,
                "force_refresh": force_refresh,
            },
            redact=(app.secret,),
        )
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not _text(token) or not isinstance(expires_in, int) or expires_in <= 0:
            log.error("WeChat answered stable_token without a token (app %s)", app.appid)
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        return ServerAccessToken(str(token), expires_in)

    def phone_number(
        self, app: WeChatApp, access_token: str, code: str, openid: str
    ) -> PhoneNumber:
        """The phone number behind a phone-button ``code`` (``getuserphonenumber``).

        ``openid`` is the caller's: WeChat then checks that the code was issued to that user,
        so a code taken from another user's phone cannot put their number on this account.

        :raises ServerTokenRejected: the access token is invalid or expired.
        :raises InvalidGrant: 40029, the phone code is invalid, expired or used; 40003, it
            was issued to another user.
        :raises QuotaExhausted: 1400001, the app's phone-number quota is used up.
        https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/user-info/phone-number/getPhoneNumber.html
        """
        body = self._call(
            "POST",
            "/wxa/business/getuserphonenumber",
            app,
            params={"access_token": access_token},
            json_body={"code": code, "openid": openid},
            redact=(access_token, code),
            refusals={
                INVALID_CODE: lambda: InvalidGrant(
                    "The phone code is invalid, expired or used; ask the user to tap again."
                ),
                INVALID_OPENID: lambda: InvalidGrant(
                    "The phone code was not issued to this user; ask the user to tap again."
                ),
                PHONE_QUOTA_EXHAUSTED: lambda: self._quota_exhausted(
                    app.appid,
                    "WeChat's phone-number quota of this mini-program is used up; retrying "
                    "cannot help until the operator tops it up.",
                ),
            },
        )
        info = body.get("phone_info")
        if not isinstance(info, dict) or not _text(info.get("phoneNumber")):
            log.error("WeChat answered getuserphonenumber without phone_info (app %s)", app.appid)
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        watermark = info.get("watermark")
        if isinstance(watermark, dict) and watermark.get("appid") not in (None, app.appid):
            log.error("WeChat phone_info watermark names another app (app %s)", app.appid)
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        country = info.get("countryCode")
        return PhoneNumber(
            phone_number=str(info["phoneNumber"]),
            pure_phone_number=str(info.get("purePhoneNumber") or info["phoneNumber"]),
            country_code=None if country in (None, "") else str(country),
        )

    def check_session(self, app: WeChatApp, access_token: str, openid: str, signature: str) -> bool:
        """Is ``signature`` made with the user's current session_key (``wxa/checksession``)?

        :returns: True for errcode 0, False for 87009 (invalid signature).
        :raises ServerTokenRejected: the access token is invalid or expired.
        https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/user-login/checkSessionKey.html
        """
        try:
            self._call(
                "GET",
                "/wxa/checksession",
                app,
                params={
                    "access_token": access_token,
                    "signature": signature,
                    "openid": openid,
                    "sig_method": "hmac_sha256",
                },
                redact=(access_token, signature),
                refusals={INVALID_SIGNATURE: _SignatureRefused},
            )
        except _SignatureRefused:
            return False
        return True

    def web_authorization(self, app: WeChatApp, code: str) -> WebAuthorization:
        """Exchange the code of WeChat's authorize page (``sns/oauth2/access_token``).

        :raises IssuerError: ``invalid_grant`` (40029 invalid or expired, 40163 used, 41008
            missing), ``upstream_misconfigured`` (40013, 40125 …), ``slow_down`` (45011),
            ``temporarily_unavailable`` (-1 twice, 5xx, garbage), ``upstream_timeout``.
        """
        body = self._call(
            "GET",
            WEB_CODE_EXCHANGE,
            app,
            params={
                "appid": app.appid,
                "secret": app.secret,
                "code": code,
                "grant_type": "authorization_code",
            },
            redact=(app.secret, code),
            refusals={
                INVALID_CODE: lambda: InvalidGrant("WeChat's code is invalid or expired."),
                CODE_USED: lambda: InvalidGrant("WeChat's code was already used."),
                MISSING_CODE: lambda: InvalidGrant("WeChat sent no code."),
            },
        )
        openid, token = body.get("openid"), body.get("access_token")
        unionid = body.get("unionid") or None
        if not (_text(openid) and _text(token) and (unionid is None or _text(unionid))):
            log.error("WeChat answered %s without openid/access_token (app %s)",
                      WEB_CODE_EXCHANGE, app.appid)  # fmt: skip
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        return WebAuthorization(
            openid=str(openid),
            access_token=str(token),
            scope=str(body.get("scope") or ""),
            unionid=unionid,
            snapshot=body.get("is_snapshotuser") in (1, "1"),
        )

    def web_userinfo(self, app: WeChatApp, authorization: WebAuthorization) -> WebUserInfo:
        """The user's nickname, avatar and unionid (``sns/userinfo``, ``snsapi_userinfo``).

        :raises IssuerError: as :meth:`web_authorization`; a rejected web access token
            (40001, 42001) or openid (40003) is ``temporarily_unavailable``: it was minted
            a moment ago, so WeChat is at fault.
        """
        refused = lambda: TemporarilyUnavailable(  # noqa: E731
            "WeChat refused its own web access token; log in again."
        )
        body = self._call(
            "GET",
            WEB_USERINFO,
            app,
            params={
                "access_token": authorization.access_token,
                "openid": authorization.openid,
                "lang": "zh_CN",
            },
            redact=(authorization.access_token,),
            refusals={code: refused for code in (*TOKEN_REJECTED, INVALID_OPENID)},
        )
        nickname, avatar, unionid = (
            body.get("nickname"),
            body.get("headimgurl"),
            body.get("unionid"),
        )
        return WebUserInfo(
            nickname=str(nickname) if _text(nickname) else None,
            avatar_url=str(avatar)
            if _text(avatar) and str(avatar).startswith("https://")
            else None,
            unionid=str(unionid) if _text(unionid) else None,
        )

    def wxa_code(self, app: WeChatApp, access_token: str, scene: str, page: str) -> bytes:
        """The PNG of an unlimited mini-program code (``wxa/getwxacodeunlimit``) opening
        ``page`` with ``scene``. WeChat answers the image, or JSON with an errcode.
        https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/qrcode-link/qr-code/getUnlimitedQRCode.html

        :raises ServerTokenRejected: the access token is invalid or expired.
        :raises IssuerError: ``upstream_misconfigured`` (41030: the page is not in the
            published mini-program; credentials), ``temporarily_unavailable`` and the rest as
            for every call.
        """
        if self.budget is not None:
            self.budget(app.appid)
        started = time.monotonic()
        try:
            response = self._http().post(
                self.api_base + WXA_CODE,
                params={"access_token": access_token},
                json={"scene": scene, "page": page, "check_path": False, "is_hyaline": False},
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            )
            with response:
                content = self._read_body(response, started + self.timeout, MAX_IMAGE_BYTES)
        except (requests.Timeout, _Deadline, ReadTimeoutError):
            self._observed(WXA_CODE, "timeout", started)
            raise UpstreamTimeout() from None
        except (requests.RequestException, HTTPError) as error:
            self._observed(WXA_CODE, "transport", started)
            log.warning("WeChat %s unreachable (app %s): %s", WXA_CODE, app.appid,
                        type(error).__name__)  # fmt: skip
            raise TemporarilyUnavailable("WeChat could not be reached; retry shortly.") from None
        if response.status_code == 200 and content and content.startswith(IMAGE_MAGIC):
            self._observed(WXA_CODE, "0", started)
            return content
        try:
            body = json.loads(content or b"")
        except (ValueError, UnicodeDecodeError, RecursionError):
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            self._observed(WXA_CODE, "bad_response", started)
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        errcode = body.get("errcode")
        self._observed(WXA_CODE, errcode_label(errcode), started)
        if errcode in TOKEN_REJECTED:
            raise ServerTokenRejected(int(errcode))
        if errcode == INVALID_PAGE:
            log.error("WeChat: page is not in the published mini-program %s (41030)", app.appid)
            raise UpstreamMisconfigured()
        if not isinstance(errcode, int):
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        raise self._error(errcode, body, app.appid, (access_token,))

    def _call(
        self,
        method: str,
        path: str,
        app: WeChatApp,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        redact: tuple[str, ...] = (),
        refusals: Mapping[int, Callable[[], Exception]] | None = None,
    ) -> dict[str, Any]:
        """One WeChat API call with its errcode checked.

        ``-1`` (busy) is retried once after a short pause: a busy answer spends nothing.
        ``refusals`` maps errcodes this API gives a meaning of its own to the error to raise;
        the rest map as in :meth:`_error`.
        """
        for attempt in (1, 2):
            if self.budget is not None and path not in (CODE_TO_SESSION, WEB_CODE_EXCHANGE):
                self.budget(app.appid)  # a busy retry is a call too
            body = self._request(method, path, app.appid, params, json_body)
            errcode = body.get("errcode", 0)
            if errcode == BUSY and attempt == 1:
                log.warning("WeChat busy (-1) on %s for app %s; retrying once", path, app.appid)
                self._sleep(BUSY_RETRY_DELAY)
                continue
            if errcode in (0, None):
                return body
            refusal = (refusals or {}).get(errcode)
            if refusal is not None:
                log.info("WeChat refused %s (errcode %d, app %s)", path, errcode, app.appid)
                raise refusal()
            if errcode in TOKEN_REJECTED and params and "access_token" in params:
                log.info(
                    "WeChat rejected the server access token (errcode %d, app %s)",
                    errcode,
                    app.appid,
                )
                raise ServerTokenRejected(errcode)
            raise self._error(errcode, body, app.appid, redact)
        raise AssertionError("unreachable")

    def _request(
        self,
        method: str,
        path: str,
        appid: str,
        params: Mapping[str, str] | None,
        json_body: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        started = time.monotonic()
        try:
            response = self._http().request(
                method,
                self.api_base + path,
                params=params,
                json=json_body,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            )
            with response:
                content = self._read_body(response, deadline=started + self.timeout)
        except (requests.Timeout, _Deadline, ReadTimeoutError):
            self._observed(path, "timeout", started)
            log.warning("WeChat %s timed out after %.1fs (app %s)", path, self.timeout, appid)
            raise UpstreamTimeout() from None
        except (requests.RequestException, HTTPError) as error:
            self._observed(path, "transport", started)
            # The exception text can embed the URL, hence secrets: log only its type.
            log.warning("WeChat %s unreachable (app %s): %s", path, appid, type(error).__name__)
            raise TemporarilyUnavailable("WeChat could not be reached; retry shortly.") from None
        elapsed = time.monotonic() - started
        if response.status_code != 200:
            self._observed(path, "bad_status", started)
            log.warning(
                "WeChat %s answered HTTP %d in %.3fs (app %s)",
                path,
                response.status_code,
                elapsed,
                appid,
            )
            raise TemporarilyUnavailable("WeChat is failing; retry shortly.")
        try:
            body = json.loads(content) if content is not None else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("errcode", 0), int | None):
            self._observed(path, "bad_response", started)
            log.warning(
                "WeChat %s answered a body that is not a WeChat answer (app %s)", path, appid
            )
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        self._observed(path, errcode_label(body.get("errcode")), started)
        log.debug(
            "WeChat %s answered errcode %s in %.3fs (app %s)",
            path,
            body.get("errcode", 0),
            elapsed,
            appid,
        )
        return body

    def _observed(self, path: str, result: str, started: float) -> None:
        if self._observe is not None:
            self._observe(path, result, time.monotonic() - started)

    @staticmethod
    def _read_body(
        response: requests.Response, deadline: float, limit: int = MAX_ANSWER_BYTES
    ) -> bytes | None:
        """The body, or None when it is larger than any WeChat answer could be.

        ``timeout`` in requests bounds each socket read, not the whole answer; the deadline
        bounds the whole, so an upstream trickling bytes cannot hold a worker thread.

        :raises _Deadline: the answer took longer than the timeout in all.
        """
        chunks: list[bytes] = []
        size = 0
        while chunk := response.raw.read1(8192, decode_content=True):  # what has arrived
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise _Deadline
        return b"".join(chunks)

    def _error(
        self, errcode: int, body: Mapping[str, Any], appid: str, redact: tuple[str, ...]
    ) -> IssuerError:
        # Redact, then cut: cutting first could leave a prefix of a secret that the
        # redaction no longer recognises.
        errmsg = _redacted(str(body.get("errmsg", "")), redact)[:MAX_ERRMSG_LOGGED]
        if errcode == HIGH_RISK_USER:
            log.info("WeChat refused a high-risk user (errcode 40226, app %s)", appid)
            return AccessDenied("WeChat refused to log this user in (high-risk account).")
        if errcode == RATE_LIMITED:
            log.warning("WeChat rate limit reached (errcode 45011, app %s)", appid)
            return SlowDown("WeChat's rate limit was reached.", retry_after=RATE_LIMIT_RETRY_AFTER)
        if errcode == DAILY_QUOTA_EXHAUSTED:
            return self._quota_exhausted(
                appid,
                "WeChat's daily quota of this call is used up for this app; retrying cannot "
                "help until WeChat resets it or the operator clears it.",
            )
        if errcode == BUSY:
            log.warning("WeChat busy (-1) twice for app %s", appid)
            return TemporarilyUnavailable("WeChat is busy; retry shortly.")
        if errcode in CREDENTIAL_ERRCODES:
            log.error(
                "WeChat rejected the credentials of app %s: errcode %d (%s)", appid, errcode, errmsg
            )
            return UpstreamMisconfigured()
        log.error("WeChat answered unexpected errcode %d for app %s (%s)", errcode, appid, errmsg)
        return TemporarilyUnavailable("WeChat refused the request; retry shortly.")

    @staticmethod
    def _quota_exhausted(appid: str, description: str) -> QuotaExhausted:
        # ERROR: only the operator can act (top the quota up in WeChat's console).
        log.error("WeChat quota exhausted for app %s: %s", appid, description)
        return QuotaExhausted(description)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def errcode_label(errcode: object) -> str:
    """The metrics label of an answered errcode: its number if known, else ``other``."""
    if errcode is None:  # absent: success, as in _call
        return "0"
    if isinstance(errcode, int) and not isinstance(errcode, bool) and errcode in KNOWN_ERRCODES:
        return str(errcode)
    return "other"


def is_session_key(value: str) -> bool:
    """Is ``value`` a WeChat session_key: standard base64 of the 16-byte AES-128 key that
    decrypts ``encryptedData`` (WeChat's "开放数据校验与解密" guide)?"""
    if not SESSION_KEY_PATTERN.fullmatch(value):
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == SESSION_KEY_BYTES
    except (binascii.Error, ValueError):
        return False


def _text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 256


def _redacted(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret, and any fragment of one cut at either end, replaced."""
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, REDACTED)
        # The longest prefix of the secret that ends the text, the longest suffix that
        # starts it (both shorter than the secret, or the replace above took them).
        for size in range(len(secret) - 1, MIN_FRAGMENT - 1, -1):
            if text.endswith(secret[:size]):
                text = text[:-size] + REDACTED
                break
        for size in range(len(secret) - 1, MIN_FRAGMENT - 1, -1):
            if text.startswith(secret[-size:]):
                text = REDACTED + text[size:]
                break
    return text
