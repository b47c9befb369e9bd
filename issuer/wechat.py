"""WeChat server API client: ``sns/jscode2session`` (code -> openid + session_key).

One ``requests.Session`` per process for keep-alive, a timeout on every call, and WeChat's
in-band ``errcode`` checked even on HTTP 200. WeChat sometimes labels JSON ``text/plain``, so
the body is parsed whatever the content type says.

The request URL carries the app secret and the user's code, so neither URLs nor
``requests``/``urllib3`` debug lines are ever logged (the logging setup silences urllib3).
Reference: https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/user-login/code2Session.html
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from urllib3.exceptions import HTTPError, ReadTimeoutError

from .config import WeChatApp
from .errors import (
    AccessDenied,
    InvalidGrant,
    IssuerError,
    SlowDown,
    TemporarilyUnavailable,
    UpstreamMisconfigured,
    UpstreamTimeout,
)

log = logging.getLogger("issuer.wechat")

BUSY = -1
INVALID_CODE = 40029
CODE_USED = 40163
HIGH_RISK_USER = 40226
RATE_LIMITED = 45011
# WeChat refuses the app itself: wrong appid or secret, secret missing, server IP not on the
# app's allow-list, API not authorised for this app.
CREDENTIAL_ERRCODES = frozenset({40001, 40002, 40013, 40125, 40164, 41002, 41004, 48001, 40243})
BUSY_RETRY_DELAY = 0.2
# WeChat's 45011 means the per-minute quota is spent.
RATE_LIMIT_RETRY_AFTER = 60
# WeChat's answers are a few hundred bytes; anything far larger is not one.
MAX_ANSWER_BYTES = 64 * 1024


class _Deadline(Exception):
    """The whole answer took longer than the timeout."""


@dataclass(frozen=True)
class CodeSession:
    """What ``jscode2session`` answers for a valid code."""

    openid: str
    session_key: str = field(repr=False)
    unionid: str | None = None


class WeChatClient:
    """Calls WeChat for the configured apps; every failure becomes an :class:`IssuerError`."""

    def __init__(
        self,
        api_base: str,
        timeout: float,
        *,
        sleep: Callable[[float], None] = time.sleep,
        pool_size: int = 16,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self._sleep = sleep
        self._pool_size = pool_size
        self._local_pid: int | None = None
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    def _http(self) -> requests.Session:
        # One pooled session per process; a fork (gunicorn --preload) gets a fresh one.
        pid = os.getpid()
        if self._session is None or self._local_pid != pid:
            with self._lock:
                if self._session is None or self._local_pid != pid:
                    session = requests.Session()
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

        ``-1`` (busy) is retried once after a short pause; the code is not spent by a busy
        answer, so the retry is safe.

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
        redact = (app.secret, code)
        for attempt in (1, 2):
            body = self._get("/sns/jscode2session", params, app.appid)
            errcode = body.get("errcode", 0)
            if errcode == BUSY and attempt == 1:
                log.warning("WeChat busy (-1) for app %s; retrying once", app.appid)
                self._sleep(BUSY_RETRY_DELAY)
                continue
            if errcode not in (0, None):
                raise self._error(errcode, body, app.appid, redact)
            openid, session_key = body.get("openid"), body.get("session_key")
            unionid = body.get("unionid")
            if (
                not _text(openid)
                or not _text(session_key)
                or not (unionid is None or _text(unionid))
            ):
                log.error(
                    "WeChat answered jscode2session for app %s without openid/session_key",
                    app.appid,
                )
                raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
            return CodeSession(
                openid=str(openid), session_key=str(session_key), unionid=unionid or None
            )
        raise AssertionError("unreachable")

    def _get(self, path: str, params: Mapping[str, str], appid: str) -> dict[str, Any]:
        started = time.monotonic()
        try:
            response = self._http().get(
                self.api_base + path,
                params=params,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            )
            with response:
                content = self._read_body(response, deadline=started + self.timeout)
        except (requests.Timeout, _Deadline):
            log.warning("WeChat %s timed out after %.1fs (app %s)", path, self.timeout, appid)
            raise UpstreamTimeout() from None
        except ReadTimeoutError:
            log.warning("WeChat %s timed out after %.1fs (app %s)", path, self.timeout, appid)
            raise UpstreamTimeout() from None
        except (requests.RequestException, HTTPError) as error:
            # The exception text can embed the URL, hence the secret: log only its type.
            log.warning("WeChat %s unreachable (app %s): %s", path, appid, type(error).__name__)
            raise TemporarilyUnavailable("WeChat could not be reached; retry shortly.") from None
        elapsed = time.monotonic() - started
        if response.status_code != 200:
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
        if not isinstance(body, dict):
            log.warning("WeChat %s answered a body that is not a JSON object (app %s)", path, appid)
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        if not isinstance(body.get("errcode", 0), int | None):
            raise TemporarilyUnavailable("WeChat sent an unusable answer; retry shortly.")
        log.debug(
            "WeChat %s answered errcode %s in %.3fs (app %s)",
            path,
            body.get("errcode", 0),
            elapsed,
            appid,
        )
        return body

    @staticmethod
    def _read_body(response: requests.Response, deadline: float) -> bytes | None:
        """The body, or None when it is larger than any WeChat answer could be.

        ``timeout`` in requests bounds each socket read, not the whole answer; the deadline
        bounds the whole, so an upstream trickling bytes cannot hold a worker thread.

        :raises _Deadline: the answer took longer than the timeout in all.
        """
        chunks: list[bytes] = []
        size = 0
        while chunk := response.raw.read1(8192, decode_content=True):  # what has arrived
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                return None
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise _Deadline
        return b"".join(chunks)

    def _error(
        self, errcode: int, body: Mapping[str, Any], appid: str, redact: tuple[str, ...]
    ) -> IssuerError:
        errmsg = _redacted(str(body.get("errmsg", ""))[:200], redact)
        if errcode in (INVALID_CODE, CODE_USED):
            log.info("WeChat refused the login code (errcode %d, app %s)", errcode, appid)
            if errcode == CODE_USED:
                return InvalidGrant("The code was already used; call wx.login for a new one.")
            return InvalidGrant("The code is invalid or expired; call wx.login for a new one.")
        if errcode == HIGH_RISK_USER:
            log.info("WeChat refused a high-risk user (errcode 40226, app %s)", appid)
            return AccessDenied("WeChat refused to log this user in (high-risk account).")
        if errcode == RATE_LIMITED:
            log.warning("WeChat rate limit reached (errcode 45011, app %s)", appid)
            return SlowDown("WeChat's rate limit was reached.", retry_after=RATE_LIMIT_RETRY_AFTER)
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

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def _text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 256


def _redacted(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text
