"""WeChat user data for a logged-in caller: decrypt ``encryptedData``, phone numbers, and
whether the stored ``session_key`` is still current.

The client never sends the ``session_key``: it is the caller's stored one, unsealed only for
the call. What the data reveals is kept: a ``unionId`` links (or merges) the user across apps,
a phone number is stored sealed like the ``session_key``, a nickname and avatar go on the user.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .config import Settings, WeChatApp
from .errors import InvalidClient, InvalidRequest, SessionKeyMismatch, TemporarilyUnavailable
from .sealing import Seals, UnsealError, phone_aad, session_key_aad
from .service import Caller
from .store import Store
from .wechat.client import PhoneNumber, ServerTokenRejected, WeChatClient
from .wechat.crypto import check_session_signature, decrypt_user_data, raw_data_matches
from .wechat.servertoken import ServerTokens

log = logging.getLogger("issuer.userdata")

MAX_PROFILE_TEXT = 1024
# What getUserProfile / getUserInfo give every user since 2022.
ANONYMOUS_NICKNAME = "微信用户"
T = TypeVar("T")


class UserData:
    """Decrypt, phone number and session check for authenticated callers."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        wechat: WeChatClient,
        server_tokens: ServerTokens,
        sealer: Seals,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.wechat = wechat
        self.server_tokens = server_tokens
        self.sealer = sealer
        self.clock = clock

    def decrypt(
        self,
        caller: Caller,
        encrypted_data: str,
        iv: str,
        raw_data: str | None = None,
        signature: str | None = None,
    ) -> dict[str, Any]:
        """Decrypt ``encryptedData`` with the caller's stored ``session_key`` and keep what it
        reveals (unionId, phone number, nickname, avatar).

        :raises InvalidRequest: malformed base64 or lengths; ``raw_data`` without
            ``signature`` or the reverse.
        :raises SessionKeyMismatch: the data or the signature was not made with the current
            ``session_key``, or was made for another app or user.
        """
        if (raw_data is None) != (signature is None):
            raise InvalidRequest("raw_data and signature must be sent together.")
        appid, openid = self._app(caller).appid, caller.session.openid
        session_key = self._session_key(appid, openid)
        if (
            raw_data is not None
            and signature is not None
            and not raw_data_matches(raw_data, signature, session_key)
        ):
            raise SessionKeyMismatch(
                "The signature does not match this user's current session_key; "
                "call wx.login again, log in, and retry."
            )
        data = decrypt_user_data(session_key, encrypted_data, iv, appid, openid)
        user_id = caller.session.user_id
        unionid = data.get("unionId")
        if isinstance(unionid, str) and unionid:
            user_id = self.store.link_unionid(appid, openid, unionid)
            if user_id != caller.session.user_id:
                log.info("unionid merged user %s into %s", caller.session.user_id, user_id)
        phone = data.get("phoneNumber")
        if isinstance(phone, str) and phone:
            country = data.get("countryCode")
            self._keep_phone(appid, openid, phone, None if country in (None, "") else str(country))
        self._fill_profile(user_id, data.get("nickName"), data.get("avatarUrl"))
        return data

    def _fill_profile(self, user_id: str, nickname: object, avatar: object) -> None:
        """Keep a decrypted nickname and avatar only where the profile has none.

        Since 2022 legacy user info decrypts to WeChat's anonymous profile ("微信用户" and a
        grey avatar): that is never kept, and nothing decrypted overwrites what the user
        filled in themselves (``PATCH /me``, ``/me/avatar``).
        """
        if nickname == ANONYMOUS_NICKNAME:
            nickname = avatar = None  # the grey avatar comes with the anonymous name
        new_nickname, new_avatar = _profile_text(nickname), _profile_text(avatar)
        if new_nickname is None and new_avatar is None:
            return
        current = self.store.get_user(user_id)
        if current is None:
            return
        self.store.update_profile(
            user_id,
            new_nickname if current.nickname is None else None,
            new_avatar if current.avatar_url is None else None,
        )

    def phone(self, caller: Caller, code: str) -> PhoneNumber:
        """The phone number behind a phone-button code, kept sealed for ``/me``.

        :raises InvalidGrant: WeChat 40029, the code is invalid or used; 40003, it belongs
            to another user (the caller's openid goes with it, so WeChat checks).
        :raises QuotaExhausted: WeChat 1400001, the app's phone-number quota is used up.
        """
        if not code or len(code) > 128 or not code.isascii() or not code.isprintable():
            raise InvalidRequest("code is not a phone-button code.")
        app = self._app(caller)
        number = self._with_server_token(
            app, lambda token: self.wechat.phone_number(app, token, code, caller.session.openid)
        )
        self._keep_phone(app.appid, caller.session.openid, number.phone_number, number.country_code)
        return number

    def session_is_current(self, caller: Caller) -> bool:
        """Does WeChat still hold the stored ``session_key`` as the user's current one?"""
        app = self._app(caller)
        openid = caller.session.openid
        signature = check_session_signature(self._session_key(app.appid, openid))
        return self._with_server_token(
            app, lambda token: self.wechat.check_session(app, token, openid, signature)
        )

    # -- helpers

    def _app(self, caller: Caller) -> WeChatApp:
        """The mini-program of the caller's session.

        :raises InvalidClient: the app is no longer configured.
        :raises InvalidRequest: the session came through an official account (web login):
            no ``session_key`` exists for it, and WeChat's phone and session APIs serve
            mini-programs only.
        """
        app = self.settings.app(caller.session.appid)
        if app is None:
            raise InvalidClient("The app of this token is no longer configured here.")
        if app.kind != "miniprogram":
            raise InvalidRequest(
                "This endpoint serves mini-program logins; this token came through a web login."
            )
        return app

    def _session_key(self, appid: str, openid: str) -> str:
        identity = self.store.get_identity(appid, openid)
        if identity is None:
            raise SessionKeyMismatch()
        try:
            return self.sealer.open(identity.session_key, session_key_aad(appid, openid)).decode()
        except UnsealError:
            log.error("stored session_key of (%s, %s) cannot be decrypted", appid, openid)
            raise SessionKeyMismatch() from None

    def _keep_phone(self, appid: str, openid: str, phone: str, country: str | None) -> None:
        sealed = self.sealer.seal(phone.encode(), phone_aad(appid, openid))
        self.store.set_phone(appid, openid, sealed, country, self.clock())

    def _with_server_token(self, app: WeChatApp, call: Callable[[str], T]) -> T:
        """Run ``call`` with the app's server token; on 40001/40014/42001 get another token
        and retry once."""
        token = self.server_tokens.get(app)
        try:
            return call(token)
        except ServerTokenRejected:
            token = self.server_tokens.replace(app, token)
        try:
            return call(token)
        except ServerTokenRejected:
            log.error("WeChat rejected a fresh server access token for app %s", app.appid)
            raise TemporarilyUnavailable(
                "WeChat refused this server's access token; retry shortly."
            ) from None


def _profile_text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value[:MAX_PROFILE_TEXT]
    return None
