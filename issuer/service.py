"""The login service: log in with a WeChat code, refresh, log out, authenticate a Bearer token.

It ties the pure parts (tokens, rotation rules, sealing) to the two that do I/O (the store
and the WeChat client), all passed in by the app factory. No Flask here: views parse input,
call one method, and shape the JSON.
"""

from __future__ import annotations

import hashlib
import logging
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .config import Settings, WeChatApp
from .errors import InvalidClient, InvalidGrant, InvalidRequest, InvalidToken
from .keys import KeyManager
from .rotation import ChainState, Verdict, judge
from .sealing import Seals, UnsealError, phone_aad, refresh_secret_aad, session_key_aad
from .store import Identity, NewSession, Session, Store, User
from .tokens import (
    TokenPolicy,
    VerifiedTokenCache,
    access_claims,
    mint_refresh_token,
    new_jti,
    new_session_id,
    new_session_secret,
    parse_refresh_token,
    refresh_token_matches,
    sign_access_token,
    verify_access_token,
)
from .wechat.client import WeChatClient

log = logging.getLogger("issuer.auth")

MAX_CODE_LENGTH = 128
CODE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_.~+/=")


@dataclass(frozen=True)
class TokenPair:
    """A token response (RFC 6749 §5.1) before it is shaped as JSON."""

    access_token: str
    expires_in: int
    refresh_token: str
    refresh_token_expires_in: int
    user_id: str
    is_new_user: bool

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_token_expires_in": self.refresh_token_expires_in,
            "user_id": self.user_id,
            "is_new_user": self.is_new_user,
        }


@dataclass(frozen=True)
class Caller:
    """An authenticated Bearer: the verified claims and the live session behind them."""

    claims: dict[str, Any]
    session: Session


class AuthService:
    """Login, refresh, logout and Bearer authentication over a store and a WeChat client."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        wechat: WeChatClient,
        keys: KeyManager,
        sealer: Seals,
        clock: Callable[[], float] = time.time,
        on_reuse: Callable[[], None] | None = None,
    ) -> None:
        """:param on_reuse: told of each session revoked for refresh-token reuse (metrics)."""
        self.settings = settings
        self.store = store
        self.wechat = wechat
        self.keys = keys
        self.sealer = sealer
        self.clock = clock
        self._on_reuse = on_reuse
        self._verified = VerifiedTokenCache()
        self.policy = TokenPolicy(
            issuer=settings.url,
            audience=settings.audience,
            access_token_ttl=settings.access_token_ttl,
            leeway=settings.leeway,
        )

    # -- login

    def resolve_app(self, appid: str | None) -> WeChatApp:
        """The mini-program to log in to; ``appid`` may be left out when only one exists.

        :raises InvalidClient: unknown appid, not a mini-program, or ambiguous.
        """
        miniprograms = [app for app in self.settings.apps if app.kind == "miniprogram"]
        if appid is None:
            if len(miniprograms) == 1:
                return miniprograms[0]
            raise InvalidClient("Several mini-programs are configured here; send appid.")
        app = self.settings.app(appid)
        if app is None:
            raise InvalidClient("This appid is not configured here.")
        if app.kind != "miniprogram":
            raise InvalidClient("This appid is not a mini-program; wx.login codes need one.")
        return app

    def login(self, appid: str | None, code: str) -> TokenPair:
        """Exchange a ``wx.login`` code for a token pair, creating the user if new.

        Nothing is written unless WeChat accepted the code, and then the user, identity and
        session are written in one transaction.
        """
        if not code:
            raise InvalidRequest("code must not be empty.")
        if len(code) > MAX_CODE_LENGTH or not set(code) <= CODE_CHARACTERS:
            raise InvalidRequest("code is not a wx.login code.")
        app = self.resolve_app(appid)
        window = self.settings.login_retry_window
        code_hash = _code_hash(app.appid, code) if window > 0 else None
        if code_hash is not None and (replay := self._replay_login(code_hash)) is not None:
            return replay
        # A wx.login code is good once: when no key could sign the answer (the key ring
        # failed closed), refuse before WeChat spends it, so the client can retry with it.
        self.keys()
        try:
            answer = self.wechat.code_to_session(app, code)
        except InvalidGrant:
            # 40163 may mean a concurrent request with this code has just completed.
            if code_hash is not None and (replay := self._replay_login(code_hash)) is not None:
                return replay
            raise
        now = self.clock()
        sid = new_session_id()
        secret = new_session_secret()
        expires_at = now + self.settings.refresh_token_ttl
        outcome = self.store.record_login(
            appid=app.appid,
            openid=answer.openid,
            unionid=answer.unionid,
            session_key=self.sealer.seal(
                answer.session_key.encode(),
                session_key_aad(app.appid, answer.openid),
            ),
            session=NewSession(
                id=sid,
                secret=self.sealer.seal(secret, refresh_secret_aad(sid)),
                expires_at=expires_at,
            ),
            now=now,
            code_hash=code_hash,
            forget_codes_before=now - window if code_hash is not None else None,
        )
        log.info(
            "login app=%s user=%s sid=%s new=%s",
            app.appid,
            outcome.user.id,
            sid,
            outcome.is_new_user,
        )
        return self._pair(
            user_id=outcome.user.id,
            appid=app.appid,
            openid=answer.openid,
            unionid=outcome.user.unionid,
            sid=sid,
            secret=secret,
            counter=0,
            expires_at=expires_at,
            now=now,
            is_new_user=outcome.is_new_user,
        )

    def _replay_login(self, code_hash: str) -> TokenPair | None:
        """The answer to a code this issuer already exchanged within the retry window: a
        fresh access token and the current refresh token of the same session."""
        now = self.clock()
        found = self.store.find_login(code_hash, since=now - self.settings.login_retry_window)
        if found is None:
            return None
        sid, is_new_user = found
        session = self.store.get_session(sid)
        if session is None or session.revoked_at is not None or now >= session.expires_at:
            return None
        try:
            secret = self.sealer.open(session.secret, refresh_secret_aad(sid))
        except UnsealError:
            return None
        log.info("login retried within the window; same session sid=%s", sid)
        return self._session_pair(session, secret, session.counter, now, is_new_user=is_new_user)

    # -- refresh (SPEC §3)

    def refresh(self, refresh_token: str, client_id: str | None = None) -> TokenPair:
        """Spend a refresh token for a new pair in the same session.

        :raises InvalidGrant: the token is unknown, forged, expired, spent outside the
            grace, revoked, or bound to another client; reuse also revokes the session.
        """
        session, secret, presented = self._session_of(refresh_token)
        if client_id is not None and client_id != (session.client_id or session.appid):
            raise InvalidGrant("The refresh token was not issued to this client_id.")
        for _ in range(2):
            now = self.clock()
            verdict = judge(
                presented,
                ChainState(
                    session.counter,
                    session.rotated_at,
                    session.expires_at,
                    session.revoked_at is not None,
                ),
                now=now,
                grace=self.settings.refresh_reuse_grace,
            )
            if verdict is Verdict.ROTATE:
                if self.store.advance_session(session.id, presented, now):
                    return self._session_pair(session, secret, presented + 1, now)
                # Another request spent it first: judge again against the chain as it is now.
                reread = self.store.get_session(session.id)
                if reread is None:
                    break
                session = reread
                continue
            if verdict is Verdict.REPLAY:
                log.info("refresh replay within grace sid=%s", session.id)
                return self._session_pair(session, secret, session.counter, now)
            if verdict is Verdict.REUSE:
                self.store.revoke_session(session.id, now)
                log.warning(
                    "refresh token reuse detected; session revoked sid=%s user=%s",
                    session.id,
                    session.user_id,
                )
                if self._on_reuse is not None:
                    self._on_reuse()
                raise InvalidGrant("The refresh token was already used; log in again.")
            break
        raise InvalidGrant("The refresh token is expired or revoked; log in again.")

    def open_session_pair(self, sid: str, now: float, *, is_new_user: bool = False) -> TokenPair:
        """The first pair of a session opened by web login (its token number 0).

        :raises InvalidGrant: the session is gone, revoked or expired.
        """
        session = self.store.get_session(sid)
        if session is None or session.revoked_at is not None or now >= session.expires_at:
            raise InvalidGrant("The login has ended; log in again.")
        try:
            secret = self.sealer.open(session.secret, refresh_secret_aad(sid))
        except UnsealError:
            log.error("session secret of sid=%s cannot be decrypted", sid)
            raise InvalidGrant("The login has ended; log in again.") from None
        return self._session_pair(session, secret, session.counter, now, is_new_user=is_new_user)

    def _session_of(self, refresh_token: str) -> tuple[Session, bytes, int]:
        parsed = parse_refresh_token(refresh_token)
        session = self.store.get_session(parsed.sid) if parsed else None
        if parsed is None or session is None:
            raise InvalidGrant("The refresh token is not valid.")
        try:
            secret = self.sealer.open(session.secret, refresh_secret_aad(session.id))
        except UnsealError:
            log.error("session secret of sid=%s cannot be decrypted", session.id)
            raise InvalidGrant("The refresh token is not valid.") from None
        if not refresh_token_matches(parsed, secret):
            raise InvalidGrant("The refresh token is not valid.")
        return session, secret, parsed.counter

    def _session_pair(
        self,
        session: Session,
        secret: bytes,
        counter: int,
        now: float,
        *,
        is_new_user: bool = False,
    ) -> TokenPair:
        return self._pair(
            user_id=session.user_id,
            appid=session.appid,
            openid=session.openid,
            unionid=session.unionid,
            sid=session.id,
            secret=secret,
            counter=counter,
            expires_at=session.expires_at,
            now=now,
            is_new_user=is_new_user,
            client_id=session.client_id,
        )

    def _pair(
        self,
        *,
        user_id: str,
        appid: str,
        openid: str,
        unionid: str | None,
        sid: str,
        secret: bytes,
        counter: int,
        expires_at: float,
        now: float,
        is_new_user: bool,
        client_id: str | None = None,
    ) -> TokenPair:
        claims = access_claims(
            self.policy,
            user_id=user_id,
            # A web client's sessions carry its id (RFC 9068 §2.2 client_id).
            appid=client_id or appid,
            openid=openid,
            unionid=unionid,
            sid=sid,
            now=now,
            jti=new_jti(),
        )
        return TokenPair(
            access_token=sign_access_token(claims, self.keys().active),
            expires_in=self.settings.access_token_ttl,
            refresh_token=mint_refresh_token(sid, secret, counter),
            refresh_token_expires_in=max(0, int(expires_at - now)),
            user_id=user_id,
            is_new_user=is_new_user,
        )

    # -- logout (RFC 7009: unknown or ended sessions are not an error)

    def logout_refresh_token(self, refresh_token: str) -> bool:
        """End the session of a refresh token, any token of its chain. Idempotent.

        :returns: whether the token named a session (False: unknown or invalid, nothing done).
        """
        try:
            session, _, _ = self._session_of(refresh_token)
        except InvalidGrant:
            return False
        self.store.revoke_session(session.id, self.clock())
        log.info("logout sid=%s", session.id)
        return True

    def logout_token(self, token: str, hint: str | None = None) -> None:
        """RFC 7009 §2.1 revocation: end the session of ``token``, a refresh or access token.

        ``hint`` (``token_type_hint``) only orders the search: a token not found as the
        hinted type is looked up as the other one, and an unknown hint is ignored. An access
        token ends its session only while it verifies (signature, ``exp``): an expired one
        has no power left. An unknown or invalid token revokes nothing and is not an error
        (RFC 7009 §2.2).
        """
        kinds = [self.logout_refresh_token, self._logout_access_token]
        if hint == "access_token":
            kinds.reverse()
        for revoke in kinds:
            if revoke(token):
                return

    def _logout_access_token(self, access_token: str) -> bool:
        try:
            who = self.authenticate(access_token, require_live_session=False)
        except InvalidToken:
            return False
        self.logout_caller(who)
        return True

    def logout_caller(self, caller: Caller) -> None:
        self.store.revoke_session(caller.session.id, self.clock())
        log.info("logout sid=%s", caller.session.id)

    # -- Bearer authentication

    def authenticate(self, access_token: str, *, require_live_session: bool = True) -> Caller:
        """Verify a Bearer access token and find its session.

        :raises InvalidToken: the token does not verify, or (``require_live_session``) its
            session was logged out, revoked or has ended.
        """
        claims = self._claims_of(access_token)
        session = self.store.get_session(claims["sid"])
        self._check_session(claims, session, require_live_session=require_live_session)
        assert session is not None
        return Caller(claims, session)

    def _claims_of(self, access_token: str) -> dict[str, Any]:
        """The verified claims of an access token (verifications are cached).

        :raises InvalidToken: it does not verify.
        """
        claims = self._verified.get(
            access_token,
            now=time.time(),  # the wall clock, as PyJWT checks exp
            leeway=self.policy.leeway,
            key_published=lambda kid: self.keys().verification_key(kid) is not None,
        )
        if claims is None:
            claims = verify_access_token(access_token, self.keys.verification_key, self.policy)
            self._verified.put(access_token, claims)
        return claims

    def _check_session(
        self, claims: dict[str, Any], session: Session | None, *, require_live_session: bool
    ) -> None:
        """:raises InvalidToken: the token's session is unknown, another user's, or ended."""
        if session is None or session.user_id != claims["sub"]:
            raise InvalidToken("The session of this access token does not exist.")
        ended = session.revoked_at is not None or self.clock() >= session.expires_at
        if require_live_session and ended:
            raise InvalidToken("The session of this access token has ended; log in again.")

    def me(self, access_token: str) -> tuple[Caller, dict[str, Any]]:
        """Authenticate a Bearer and show its user as ``GET /me`` does, with one read of the
        store (session, user and phone numbers together).

        :raises InvalidToken: as :meth:`authenticate`.
        """
        claims = self._claims_of(access_token)
        found = self.store.get_profile(claims["sid"])
        self._check_session(claims, found.session if found else None, require_live_session=True)
        assert found is not None
        caller = Caller(claims, found.session)
        return caller, self._show(caller, found.user, found.phones)

    def profile(self, caller: Caller) -> dict[str, Any]:
        """The caller's user as ``GET /me`` shows it; unknown values are None."""
        user = self.store.get_user(caller.session.user_id)
        if user is None:
            raise InvalidToken("The user of this access token no longer exists.")
        phones = [item for item in self.store.identities_of(caller.session.user_id) if item.phone]
        return self._show(caller, user, phones)

    def _show(self, caller: Caller, user: User, phones: Iterable[Identity]) -> dict[str, Any]:
        phone_number, country_code = self._phone_of(caller, phones)
        return {
            "user_id": user.id,
            "appid": caller.session.appid,
            "openid": caller.session.openid,
            "unionid": user.unionid,
            "created_at": rfc3339(user.created_at),
            "nickname": user.nickname,
            "avatar_url": user.avatar_url,
            "phone_number": phone_number,
            "country_code": country_code,
        }

    def _phone_of(
        self, caller: Caller, phones: Iterable[Identity]
    ) -> tuple[str | None, str | None]:
        """The phone number of the caller's identity, else the newest any identity of the
        user revealed."""
        identities = sorted(
            (item for item in phones if item.phone),
            key=lambda item: (
                item.appid == caller.session.appid and item.openid == caller.session.openid,
                item.phone_updated_at or 0.0,
            ),
            reverse=True,
        )
        for identity in identities:
            assert identity.phone is not None
            try:
                phone = self.sealer.open(
                    identity.phone,
                    phone_aad(identity.appid, identity.openid),
                )
            except UnsealError:
                log.error("phone of (%s, %s) cannot be decrypted", identity.appid, identity.openid)
                continue
            return phone.decode(), identity.country_code
        return None, None


def _code_hash(appid: str, code: str) -> str:
    """What is stored of a login code: its SHA-256, never the code."""
    return hashlib.sha256(f"{appid}\x00{code}".encode()).hexdigest()


def rfc3339(timestamp: float) -> str:
    """``2026-11-23T22:19:03Z``: UTC, whole seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
