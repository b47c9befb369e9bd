"""The authorization code grant (RFC 6749 §4.1) with PKCE, and PC scan tickets, as values and
pure checks. Times are seconds since the epoch, passed in; secrets come from the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from ..config import WebClient
from . import pkce

# An authorization request waits this long for WeChat's callback (a person may read
# WeChat's consent page); an issued code lives 60 s (RFC 6749 §4.1.2: "a maximum
# authorization code lifetime of 10 minutes is RECOMMENDED", far shorter is better).
REQUEST_LIFETIME = 600.0
CODE_LIFETIME = 60.0
TICKET_LIFETIME = 300.0
# The PC polls again after this many seconds when an answer came back without waiting.
POLL_INTERVAL = 2
# WeChat's authorize page takes a state of letters and digits, at most 128 bytes
# (https://developers.weixin.qq.com/doc/offiaccount/OA_Web_Apps/Wechat_webpage_authorization.html):
# issuer's is 32 hex digits of id and 32 of MAC.
STATE_PATTERN = re.compile(r"[0-9a-f]{64}")
# A client's own state is echoed back to it untouched; bounded so a URL stays a URL.
MAX_CLIENT_STATE = 512
# Scene of getwxacodeunlimit: at most 32 visible characters; token_urlsafe(24) is 32.
TICKET_PATTERN = re.compile(r"[A-Za-z0-9_-]{32}")
CODE_PATTERN = re.compile(r"ac_[A-Za-z0-9_-]{43}")


class OAuthFailure(Exception):
    """A request the authorization endpoint answers by redirecting back with ``error``
    (RFC 6749 §4.1.2.1), or, for a bad client or redirect URI, with a page of its own."""

    def __init__(self, error: str, description: str, *, redirect: bool = True) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect = redirect


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked ``/auth/authorize`` request, kept in the store under ``id`` until WeChat
    sends the browser back."""

    id: str
    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    scope: str
    expires_at: float


@dataclass(frozen=True)
class IssuedCode:
    """An authorization code as stored: by hash, bound to client, redirect URI, PKCE
    challenge and the session it will hand out."""

    code_hash: str
    client_id: str
    redirect_uri: str | None  # None for a code delivered to a scan poll
    code_challenge: str
    session_id: str
    expires_at: float
    # The token response's is_new_user: the callback created the user.
    is_new_user: bool = False


class TicketStatus(StrEnum):
    PENDING = "pending"
    SCANNED = "scanned"
    DENIED = "denied"
    EXPIRED = "expired"
    CONFIRMED = "confirmed"


@dataclass(frozen=True)
class ScanTicket:
    """A PC scan login: created by the PC, scanned and then confirmed or denied by the phone."""

    id: str
    client_id: str
    code_challenge: str = field(repr=False)
    status: TicketStatus
    created_at: float
    expires_at: float
    updated_at: float
    user_id: str | None = None
    # The one-time code of a confirmed ticket, handed to the first poll that sees it.
    code: str | None = field(default=None, repr=False)

    def status_at(self, now: float) -> TicketStatus:
        """Its status as the PC should see it: a ticket not confirmed in time is expired."""
        if self.status in (TicketStatus.PENDING, TicketStatus.SCANNED) and now >= self.expires_at:
            return TicketStatus.EXPIRED
        return self.status


# Which moves the phone may make: scanned once from pending, then confirmed or denied once.
TICKET_MOVES: dict[TicketStatus, frozenset[TicketStatus]] = {
    TicketStatus.SCANNED: frozenset({TicketStatus.PENDING}),
    TicketStatus.CONFIRMED: frozenset({TicketStatus.SCANNED}),
    TicketStatus.DENIED: frozenset({TicketStatus.PENDING, TicketStatus.SCANNED}),
}


def check_authorization_request(
    client: WebClient | None,
    params: dict[str, str],
    *,
    now: float,
) -> AuthorizationRequest:
    """RFC 6749 §4.1.1 with RFC 7636 §4.3, step by step.

    :raises OAuthFailure: ``redirect=False`` for an unknown client or a redirect URI not
        registered exactly (§4.1.2.1: never redirect to it); else the error to redirect with.
    """
    if client is None or client.kind != "h5":
        raise OAuthFailure("invalid_client", "This client_id is not an H5 client of this issuer.",
                           redirect=False)  # fmt: skip
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None and len(client.redirect_uris) == 1:
        redirect_uri = client.redirect_uris[0]  # §3.1.2.3: optional when only one
    if redirect_uri not in client.redirect_uris:
        raise OAuthFailure("invalid_request",
                           "redirect_uri is not one the client registered (compared exactly).",
                           redirect=False)  # fmt: skip
    assert redirect_uri is not None
    state = params.get("state")
    if state is not None and len(state) > MAX_CLIENT_STATE:
        raise OAuthFailure(
            "invalid_request", f"state is longer than {MAX_CLIENT_STATE} characters."
        )
    if params.get("response_type") != "code":
        raise OAuthFailure("unsupported_response_type", "response_type must be code.")
    challenge = params.get("code_challenge")
    if not challenge:
        raise OAuthFailure("invalid_request", "code_challenge is required (PKCE, RFC 7636).")
    if params.get("code_challenge_method", "plain") != pkce.METHOD:
        raise OAuthFailure("invalid_request", "code_challenge_method must be S256.")
    if not pkce.is_challenge(challenge):
        raise OAuthFailure("invalid_request", "code_challenge is not an S256 challenge.")
    scope = params.get("scope") or client.scope
    if scope not in ("snsapi_base", "snsapi_userinfo"):
        raise OAuthFailure("invalid_scope", "scope must be snsapi_base or snsapi_userinfo.")
    return AuthorizationRequest(
        id=secrets.token_hex(16),
        client_id=client.id,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=challenge,
        scope=scope,
        expires_at=now + REQUEST_LIFETIME,
    )


def _state_mac(request_id: str, key: bytes) -> str:
    return hmac.new(key, b"issuer-state\x00" + request_id.encode(), hashlib.sha256).hexdigest()[:32]


def sign_state(request_id: str, key: bytes) -> str:
    """Issuer's ``state`` for WeChat's authorize URL: the request id and its MAC."""
    return request_id + _state_mac(request_id, key)


def state_request_id(state: str, keys: Iterable[bytes]) -> str | None:
    """The request id of a ``state`` signed with any of ``keys``, or None (forged or
    malformed). Expiry and single use are the store's: the id names a row taken once."""
    if STATE_PATTERN.fullmatch(state) is None:
        return None
    request_id, mac = state[:32], state[32:]
    if any(hmac.compare_digest(_state_mac(request_id, key), mac) for key in keys):
        return request_id
    return None


def new_code() -> str:
    """A fresh authorization code: 256 random bits."""
    return "ac_" + secrets.token_urlsafe(32)


def code_hash(code: str) -> str:
    """How a code is stored: only its hash, so the store never holds a live code."""
    return hashlib.sha256(code.encode()).hexdigest()


def check_code_exchange(
    code: IssuedCode | None,
    *,
    client_id: str,
    redirect_uri: str | None,
    code_verifier: str,
    now: float,
) -> None:
    """RFC 6749 §4.1.3 and RFC 7636 §4.6 for a code just spent by this request.

    :raises OAuthFailure: ``invalid_grant`` for every mismatch (RFC 6749 §5.2).
    """
    if code is None or now >= code.expires_at:
        raise OAuthFailure("invalid_grant", "The code is invalid or expired; log in again.")
    if code.client_id != client_id:
        raise OAuthFailure("invalid_grant", "The code was not issued to this client_id.")
    if code.redirect_uri is not None and redirect_uri != code.redirect_uri:
        raise OAuthFailure("invalid_grant", "redirect_uri differs from the authorization request.")
    if not pkce.verifier_matches(code_verifier, code.code_challenge):
        raise OAuthFailure("invalid_grant", "code_verifier does not match the code_challenge.")


def new_ticket(client: WebClient, code_challenge: str, *, now: float) -> ScanTicket:
    """A pending scan ticket for a ``web`` client. The caller checked the challenge."""
    return ScanTicket(
        id=secrets.token_urlsafe(24),
        client_id=client.id,
        code_challenge=code_challenge,
        status=TicketStatus.PENDING,
        created_at=now,
        expires_at=now + TICKET_LIFETIME,
        updated_at=now,
    )
