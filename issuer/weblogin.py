"""Web login: issuer as an OAuth 2.0 authorization server (RFC 6749 §4.1 with PKCE, RFC 7636)
whose upstream is WeChat, for H5 pages inside WeChat (official-account OAuth) and for PC
sites that log in by scanning the mini-program code.

It ties the pure core (:mod:`issuer.oauth`) to the store and the WeChat client, and hands
out the same users, sessions and token pairs as mini-program login (through
:class:`issuer.service.AuthService`). Requests, codes and tickets live in the store, so a
callback or a poll may reach any host of a fleet. No Flask here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from .config import WebClient, WeChatApp
from .errors import AccessDenied, InvalidClient, InvalidGrant, InvalidRequest, IssuerError, NotFound
from .oauth import pkce
from .oauth.grants import (
    CODE_LIFETIME,
    CODE_PATTERN,
    POLL_INTERVAL,
    TICKET_LIFETIME,
    TICKET_MOVES,
    TICKET_PATTERN,
    IssuedCode,
    OAuthFailure,
    ScanTicket,
    TicketStatus,
    check_authorization_request,
    check_code_exchange,
    code_hash,
    new_code,
    new_ticket,
    sign_state,
    state_request_id,
)
from .sealing import refresh_secret_aad, session_key_aad
from .service import AuthService, Caller, TokenPair
from .store import NewSession
from .tokens import new_session_id, new_session_secret
from .wechat.client import ServerTokenRejected

log = logging.getLogger("issuer.weblogin")

AUTHORIZE_PATH = "/connect/oauth2/authorize"
CALLBACK_PATH = "/auth/wechat/callback"
STATE_KEY_LABEL = b"issuer web-login state v1"
# A waiting poll looks at the store this often: a confirmation made on any host of a fleet
# is seen within it.
POLL_STEP = 0.25
# Seconds a poll may wait for a change (RFC 8628 §3.5 polls, made long).
MAX_POLL_WAIT = 25.0
# Threads of a gunicorn worker (gunicorn.conf.py reads the same variable), of which a
# quarter may hold waiting polls.
THREADS_VARIABLE = "ISSUER_THREADS"
DEFAULT_THREADS = 32


@dataclass(frozen=True)
class Redirect:
    """Where the browser goes next: a URL with its query already encoded."""

    url: str


class WebLogin:
    """The authorization endpoint, WeChat's callback, and the code grant of the token
    endpoint, over the login service's store, WeChat client, keys and sealer."""

    def __init__(self, service: AuthService, data_keys: Callable[[], Mapping[str, bytes]]) -> None:
        """:param data_keys: the data keys of the current ring, by id: issuer's ``state`` is
        signed with a key derived from the active one and checked against all of them."""
        self.service = service
        self.settings = service.settings
        self.store = service.store
        self._data_keys = data_keys

    # -- issuer's state for the WeChat round trip

    def _state_keys(self) -> list[bytes]:
        return [
            hmac.new(key, STATE_KEY_LABEL, hashlib.sha256).digest()
            for key in self._data_keys().values()
        ]

    def _state_key(self) -> bytes:
        ring = self.service.keys()
        key = ring.data_keys[ring.active_data_kid]
        return hmac.new(key, STATE_KEY_LABEL, hashlib.sha256).digest()

    # -- GET /auth/authorize (RFC 6749 §4.1.1)

    def authorize(self, params: Mapping[str, str]) -> Redirect:
        """The redirect to WeChat's authorize page for a checked request.

        :raises OAuthFailure: ``redirect=False`` for a bad client or redirect URI (answer a
            page); else redirect back with the error (:meth:`error_redirect`).
        """
        client = self.settings.client(params.get("client_id", ""))
        request = check_authorization_request(client, dict(params), now=self.service.clock())
        assert client is not None
        self.store.put_authorization_request(request)
        query = {
            "appid": client.app,
            "redirect_uri": self.settings.url.rstrip("/") + CALLBACK_PATH,
            "response_type": "code",
            "scope": request.scope,
            "state": sign_state(request.id, self._state_key()),
        }
        # WeChat wants these parameters in this order and the #wechat_redirect fragment.
        base = self.settings.wechat_open_base.rstrip("/") + AUTHORIZE_PATH
        return Redirect(f"{base}?{urlencode(query)}#wechat_redirect")

    @staticmethod
    def error_redirect(
        redirect_uri: str, error: str, description: str, state: str | None
    ) -> Redirect:
        """RFC 6749 §4.1.2.1: back to the client with ``error``, ``error_description`` and
        its ``state``."""
        query = {"error": error, "error_description": description}
        if state is not None:
            query["state"] = state
        separator = "&" if "?" in redirect_uri else "?"
        return Redirect(redirect_uri + separator + urlencode(query))

    # -- GET /auth/wechat/callback

    def callback(self, params: Mapping[str, str]) -> Redirect:
        """Finish a WeChat round trip: the user, a session, and a code for the client.

        :raises OAuthFailure: ``redirect=False`` when the state is forged, expired or used
            (there is no verified place to send the browser).
        """
        now = self.service.clock()
        request_id = state_request_id(params.get("state", ""), self._state_keys())
        request = self.store.take_authorization_request(request_id, now) if request_id else None
        if request is None:
            raise OAuthFailure(
                "invalid_request",
                "This login link is invalid, expired or was already used; start again.",
                redirect=False,
            )
        client = self.settings.client(request.client_id)
        app = self.settings.app(client.app) if client else None
        if client is None or app is None:  # the configuration changed under the request
            raise OAuthFailure("invalid_client", "This client is no longer configured.",
                               redirect=False)  # fmt: skip

        def back(error: str, description: str) -> Redirect:
            return self.error_redirect(request.redirect_uri, error, description, request.state)

        code = params.get("code", "")
        if not code:
            # WeChat sends the browser back with the state alone when the user refuses.
            return back("access_denied", "The user did not allow the login in WeChat.")
        try:
            authorization = self.service.wechat.web_authorization(app, code)
        except InvalidGrant as error:
            return back("invalid_request", f"{error.description} Start the login again.")
        except IssuerError as error:
            return back(_authorize_error(error), error.description or "WeChat failed.")
        if authorization.snapshot:
            log.info("snapshot-page visitor refused (client %s)", client.id)
            return back(
                "access_denied",
                "This page was opened as a snapshot in WeChat's Moments; open the full page "
                "to log in (a snapshot visitor has no WeChat account to log in with).",
            )
        unionid, profile = authorization.unionid, None
        if request.scope == "snsapi_userinfo":
            try:
                profile = self.service.wechat.web_userinfo(app, authorization)
            except IssuerError as error:
                return back(_authorize_error(error), error.description or "WeChat failed.")
            unionid = unionid or profile.unionid
        sid, secret = new_session_id(), new_session_secret()
        expires_at = now + self.settings.refresh_token_ttl
        sealer = self.service.sealer
        outcome = self.store.record_login(
            appid=app.appid,
            openid=authorization.openid,
            unionid=unionid,
            # An official account gives no session_key. A random key of the right shape
            # stands in: nothing was encrypted with it, so /wechat/decrypt answers
            # session_key_mismatch for such a session instead of failing.
            session_key=sealer.seal(
                base64.b64encode(secrets.token_bytes(16)),
                session_key_aad(app.appid, authorization.openid),
            ),
            session=NewSession(
                id=sid, secret=sealer.seal(secret, refresh_secret_aad(sid)), expires_at=expires_at
            ),
            now=now,
            client_id=client.id,
        )
        if profile is not None and outcome.user.nickname is None:
            # WeChat's profile only fills what the user has not set themselves.
            self.store.update_profile(outcome.user.id, profile.nickname, profile.avatar_url)
        issued = new_code()
        self.store.put_code(
            IssuedCode(
                code_hash=code_hash(issued),
                client_id=client.id,
                redirect_uri=request.redirect_uri,
                code_challenge=request.code_challenge,
                session_id=sid,
                expires_at=now + CODE_LIFETIME,
                is_new_user=outcome.is_new_user,
            )
        )
        log.info("web login client=%s user=%s sid=%s new=%s",
                 client.id, outcome.user.id, sid, outcome.is_new_user)  # fmt: skip
        query = {"code": issued}
        if request.state is not None:
            query["state"] = request.state
        separator = "&" if "?" in request.redirect_uri else "?"
        return Redirect(request.redirect_uri + separator + urlencode(query))

    # -- PC scan login

    def create_ticket(self, client_id: str, code_challenge: str) -> dict[str, object]:
        """A pending ticket for a ``web`` client's page, bound to its PKCE challenge.

        :raises InvalidClient: not a ``web`` client. :raises InvalidRequest: bad challenge.
        """
        client = client_kind(self.settings.client(client_id), "web")
        if not pkce.is_challenge(code_challenge):
            raise InvalidRequest("code_challenge must be an S256 challenge (43 characters).")
        ticket = new_ticket(client, code_challenge, now=self.service.clock())
        self.store.put_ticket(ticket)
        base = self.settings.url.rstrip("/")
        return {
            "ticket": ticket.id,
            "qrcode_url": f"{base}/auth/scan/{ticket.id}/qrcode",
            "expires_in": int(TICKET_LIFETIME),
            "interval": POLL_INTERVAL,
        }

    def _live_ticket(self, ticket_id: str) -> tuple[ScanTicket, WebClient]:
        ticket = self.store.get_ticket(ticket_id) if TICKET_PATTERN.fullmatch(ticket_id) else None
        client = self.settings.client(ticket.client_id) if ticket else None
        if ticket is None or client is None:
            raise NotFound("No such scan ticket.")
        return ticket, client

    def qrcode(self, ticket_id: str, server_token: Callable[[WeChatApp, str | None], str]) -> bytes:
        """The PNG of the ticket's mini-program code, made once per ticket.

        :param server_token: the app's shared server token; given the token WeChat just
            refused, another one.
        :raises NotFound: unknown or expired ticket.
        """
        ticket, client = self._live_ticket(ticket_id)
        if ticket.status_at(self.service.clock()) is not TicketStatus.PENDING:
            raise NotFound("This scan ticket is no longer waiting for a scan.")
        cached = self.store.ticket_qrcode(ticket.id)
        if cached is not None:
            return cached
        app = self.settings.app(client.app)
        page = client.page
        assert app is not None  # both checked at start-up
        assert page is not None
        token = server_token(app, None)
        try:
            png = self.service.wechat.wxa_code(app, token, ticket.id, page)
        except ServerTokenRejected:
            png = self.service.wechat.wxa_code(app, server_token(app, token), ticket.id, page)
        self.store.put_ticket_qrcode(ticket.id, png)
        return png

    def _scanner_ticket(self, ticket_id: str, caller: Caller) -> tuple[ScanTicket, WebClient]:
        ticket, client = self._live_ticket(ticket_id)
        session = caller.session
        if session.appid != client.app or session.client_id is not None:
            raise AccessDenied("Scan this code with the mini-program the site belongs to.")
        return ticket, client

    def _refused_move(self, ticket_id: str) -> InvalidGrant:
        ticket = self.store.get_ticket(ticket_id)
        if ticket is None or ticket.status_at(self.service.clock()) is TicketStatus.EXPIRED:
            return InvalidGrant("The scan ticket expired; refresh the code on the PC.")
        return InvalidGrant(f"The scan ticket is {ticket.status.value} already.")

    def scanned(self, ticket_id: str, caller: Caller) -> dict[str, object]:
        """The mini-program read the code: the ticket is this user's to confirm or deny."""
        ticket, client = self._scanner_ticket(ticket_id, caller)
        user_id = caller.session.user_id
        if ticket.status is TicketStatus.SCANNED and ticket.user_id == user_id:
            return {"status": "scanned", "client_id": client.id}  # a retried call
        if not self.store.move_ticket(ticket.id, TicketStatus.SCANNED, from_=TICKET_MOVES[
                TicketStatus.SCANNED], now=self.service.clock(), user_id=user_id):  # fmt: skip
            raise self._refused_move(ticket.id)
        return {"status": "scanned", "client_id": client.id}

    def confirm(self, ticket_id: str, caller: Caller, approve: bool) -> dict[str, object]:
        """The user approves (a session for the PC, in the same user) or denies the login."""
        ticket, client = self._scanner_ticket(ticket_id, caller)
        user_id, now = caller.session.user_id, self.service.clock()
        if not approve:
            if not self.store.move_ticket(ticket.id, TicketStatus.DENIED,
                    from_=TICKET_MOVES[TicketStatus.DENIED], now=now, user_id=user_id):  # fmt: skip
                raise self._refused_move(ticket.id)
            return {"status": "denied"}
        sid, secret = new_session_id(), new_session_secret()
        sealed = self.service.sealer.seal(secret, refresh_secret_aad(sid))
        session = NewSession(
            id=sid, secret=sealed, expires_at=now + self.settings.refresh_token_ttl
        )
        if not self.store.open_session(
            caller.session.appid, caller.session.openid, session, client.id, now
        ):
            raise InvalidGrant("This account is gone; log in again.")
        moved = self.store.move_ticket(ticket.id, TicketStatus.CONFIRMED,
            from_=TICKET_MOVES[TicketStatus.CONFIRMED], now=now, user_id=user_id,
            session_id=sid)  # fmt: skip
        if not moved:
            self.store.revoke_session(sid, now)
            raise self._refused_move(ticket.id)
        log.info("scan login confirmed client=%s user=%s sid=%s", client.id, user_id, sid)
        return {"status": "confirmed"}

    def poll(
        self, ticket_id: str, since: TicketStatus, wait: float, gate: PollGate
    ) -> dict[str, object]:
        """The ticket's status, once it differs from ``since`` or after ``wait`` seconds
        (less when this process has no thread to spare: see :class:`PollGate`). A
        confirmation is seen by the first poll after it with a one-time code."""
        ticket, _ = self._live_ticket(ticket_id)
        if ticket.status_at(self.service.clock()) is since and wait > 0 and gate.try_enter():
            try:
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    time.sleep(min(POLL_STEP, max(0.0, deadline - time.monotonic())))
                    ticket, _ = self._live_ticket(ticket_id)
                    if ticket.status_at(self.service.clock()) is not since:
                        break
            finally:
                gate.leave()
        now = self.service.clock()
        status = ticket.status_at(now)
        body: dict[str, object] = {
            "status": status.value,
            "expires_in": max(0, int(ticket.expires_at - now)),
            "interval": POLL_INTERVAL,
        }
        if status is TicketStatus.CONFIRMED:
            sid = self.store.deliver_ticket(ticket.id, now)
            if sid is not None:
                issued = new_code()
                self.store.put_code(
                    IssuedCode(code_hash(issued), ticket.client_id, None,
                               ticket.code_challenge, sid, now + CODE_LIFETIME)
                )  # fmt: skip
                body["code"] = issued
        return body

    # -- POST /auth/token, grant_type=authorization_code (RFC 6749 §4.1.3)

    def exchange(self, params: Mapping[str, str]) -> TokenPair:
        """Spend a code for the token pair of its session.

        :raises InvalidRequest: a parameter is missing.
        :raises InvalidClient: unknown ``client_id``.
        :raises InvalidGrant: the code is unknown, expired, used, or bound to another client,
            redirect URI or challenge; a second use also ends the session it opened.
        """
        for name in ("code", "client_id", "code_verifier"):
            if not params.get(name):
                raise InvalidRequest(f"{name} is required.")
        client = self.settings.client(params["client_id"])
        if client is None:
            raise InvalidClient("This client_id is not configured here.")
        now = self.service.clock()
        code = params["code"]
        spent = (
            self.store.spend_code(code_hash(code), now) if CODE_PATTERN.fullmatch(code) else None
        )
        if spent is not None and not spent[1]:
            # RFC 6749 §4.1.2: a code used twice revokes what it issued.
            self.store.revoke_session(spent[0].session_id, now)
            log.warning("authorization code used twice; session revoked sid=%s",
                        spent[0].session_id)  # fmt: skip
            raise InvalidGrant("The code was already used; log in again.")
        try:
            check_code_exchange(
                spent[0] if spent else None,
                client_id=client.id,
                redirect_uri=params.get("redirect_uri"),
                code_verifier=params["code_verifier"],
                now=now,
            )
        except OAuthFailure as failure:
            raise InvalidGrant(failure.description) from None
        assert spent is not None
        return self.service.open_session_pair(
            spent[0].session_id, now, is_new_user=spent[0].is_new_user
        )


class PollGate:
    """How many scan polls of this process may wait at once.

    gunicorn's gthread workers serve each request on one thread of a fixed pool
    (``ISSUER_THREADS``, 32 by default); a poll that waits holds its thread. Past the gate a
    poll answers at once with the current status and ``interval``, so waiting polls never
    take more than this share of the pool from logins and refreshes.
    """

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    def try_enter(self) -> bool:
        return self._slots.acquire(blocking=False)

    def leave(self) -> None:
        self._slots.release()


def waiting_polls(environ: Mapping[str, str] | None = None) -> int:
    """How many polls of this process may wait: a quarter of its worker's threads
    (``ISSUER_THREADS``, as ``gunicorn.conf.py`` sizes the pool), at least one."""
    text = (os.environ if environ is None else environ).get(THREADS_VARIABLE, "")
    threads = int(text) if text.isdigit() else DEFAULT_THREADS
    return max(1, threads // 4)


def _authorize_error(error: IssuerError) -> str:
    """The RFC 6749 §4.1.2.1 code for an upstream failure met at the callback."""
    if error.status_code in (429, 503, 504):
        return "temporarily_unavailable"
    if error.error == "access_denied":
        return "access_denied"
    return "server_error"


def client_kind(client: WebClient | None, kind: str) -> WebClient:
    """:raises InvalidClient: ``client`` is missing or not of ``kind``."""
    if client is None or client.kind != kind:
        raise InvalidClient(f"client_id is not a {kind} client of this issuer.")
    return client


__all__ = ["PollGate", "Redirect", "WebLogin", "client_kind"]
