"""The pure web-login core: PKCE, issuer's state, authorization requests, code checks, tickets."""

from __future__ import annotations

import secrets

import pytest

from issuer.config import WebClient
from issuer.oauth import pkce
from issuer.oauth.grants import (
    CODE_LIFETIME,
    CODE_PATTERN,
    TICKET_LIFETIME,
    TICKET_PATTERN,
    IssuedCode,
    OAuthFailure,
    TicketStatus,
    check_authorization_request,
    check_code_exchange,
    code_hash,
    new_code,
    new_ticket,
    sign_state,
    state_request_id,
)

H5 = WebClient("shop-h5", "h5", "wx3333333333333333", ("https://shop.example.com/done",))
PC = WebClient("shop-pc", "web", "wx1111111111111111", page="pages/scan/index")
# RFC 7636 Appendix B.
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
NOW = 1_800_000_000.0


def test_s256_matches_rfc7636_appendix_b() -> None:
    assert pkce.s256(VERIFIER) == CHALLENGE
    assert pkce.verifier_matches(VERIFIER, CHALLENGE)
    assert pkce.is_challenge(CHALLENGE)


@pytest.mark.parametrize(
    "verifier",
    [VERIFIER[:-1] + "v", "short", "x" * 129, VERIFIER[:42] + " ", CHALLENGE, ""],
)
def test_wrong_verifiers_never_match(verifier: str) -> None:
    assert not pkce.verifier_matches(verifier, CHALLENGE)


@pytest.mark.parametrize("challenge", ["", "abc", CHALLENGE + "=", CHALLENGE[:-1] + "+"])
def test_challenge_shape(challenge: str) -> None:
    assert not pkce.is_challenge(challenge)


def params(**change: str | None) -> dict[str, str]:
    base = {
        "response_type": "code",
        "client_id": "shop-h5",
        "redirect_uri": "https://shop.example.com/done",
        "state": "xyz",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
    base.update(change)  # type: ignore[arg-type]
    return {key: value for key, value in base.items() if value is not None}


def test_good_request_uses_the_client_scope() -> None:
    request = check_authorization_request(H5, params(), now=NOW)
    assert request.scope == "snsapi_base"
    assert request.state == "xyz"
    assert request.redirect_uri == "https://shop.example.com/done"
    assert check_authorization_request(H5, params(scope="snsapi_userinfo"), now=NOW).scope == (
        "snsapi_userinfo"
    )


def test_redirect_uri_may_be_left_out_with_one_registered() -> None:
    request = check_authorization_request(H5, params(redirect_uri=None), now=NOW)
    assert request.redirect_uri == H5.redirect_uris[0]


@pytest.mark.parametrize(
    ("client", "change"),
    [
        (None, {}),
        (PC, {}),  # a scan client has no authorization endpoint
        (H5, {"redirect_uri": "https://shop.example.com/done/"}),
        (H5, {"redirect_uri": "https://shop.example.com/done?x=1"}),
        (H5, {"redirect_uri": "https://evil.example/done"}),
    ],
)
def test_bad_client_or_redirect_is_never_redirected_to(
    client: WebClient | None, change: dict[str, str]
) -> None:
    with pytest.raises(OAuthFailure) as caught:
        check_authorization_request(client, params(**change), now=NOW)
    assert caught.value.redirect is False


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "unsupported_response_type"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),  # plain by default: refused
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"scope": "snsapi_login"}, "invalid_scope"),
        ({"state": "s" * 513}, "invalid_request"),
    ],
)
def test_other_errors_redirect_back(change: dict[str, str | None], error: str) -> None:
    with pytest.raises(OAuthFailure) as caught:
        check_authorization_request(H5, params(**change), now=NOW)
    assert caught.value.redirect is True
    assert caught.value.error == error


def test_state_is_signed_and_checked_against_every_key() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    request_id = secrets.token_hex(16)
    state = sign_state(request_id, old)
    assert len(state) == 64
    assert state.isalnum()
    assert state_request_id(state, [new, old]) == request_id
    assert state_request_id(state, [new]) is None
    forged = request_id + ("0" * 32)
    assert state_request_id(forged, [old]) is None
    assert state_request_id(state.upper(), [old]) is None
    assert state_request_id("", [old]) is None


def issued(**change: object) -> IssuedCode:
    values: dict[str, object] = {
        "code_hash": code_hash("ac_x"),
        "client_id": "shop-h5",
        "redirect_uri": "https://shop.example.com/done",
        "code_challenge": CHALLENGE,
        "session_id": "ses_1",
        "expires_at": NOW + CODE_LIFETIME,
    }
    values.update(change)
    return IssuedCode(**values)  # type: ignore[arg-type]


def exchange(code: IssuedCode | None, **change: object) -> None:
    values: dict[str, object] = {
        "client_id": "shop-h5",
        "redirect_uri": "https://shop.example.com/done",
        "code_verifier": VERIFIER,
        "now": NOW,
    }
    values.update(change)
    check_code_exchange(code, **values)  # type: ignore[arg-type]


def test_code_exchange_passes_when_everything_matches() -> None:
    exchange(issued())
    exchange(issued(redirect_uri=None), redirect_uri=None)  # a scan code has no redirect


@pytest.mark.parametrize(
    ("code", "change"),
    [
        (None, {}),
        (issued(), {"now": NOW + CODE_LIFETIME}),
        (issued(), {"client_id": "other"}),
        (issued(), {"redirect_uri": "https://shop.example.com/other"}),
        (issued(), {"redirect_uri": None}),
        (issued(), {"code_verifier": "x" * 43}),
        (issued(), {"code_verifier": ""}),
    ],
)
def test_code_exchange_mismatches_are_invalid_grant(
    code: IssuedCode | None, change: dict[str, object]
) -> None:
    with pytest.raises(OAuthFailure) as caught:
        exchange(code, **change)
    assert caught.value.error == "invalid_grant"


def test_codes_and_tickets_have_their_shapes() -> None:
    code = new_code()
    assert CODE_PATTERN.fullmatch(code)
    assert code_hash(code) != code
    assert len(code_hash(code)) == 64
    ticket = new_ticket(PC, CHALLENGE, now=NOW)
    assert TICKET_PATTERN.fullmatch(ticket.id)
    assert len(ticket.id) <= 32
    assert ticket.status_at(NOW) is TicketStatus.PENDING
    assert ticket.status_at(NOW + TICKET_LIFETIME) is TicketStatus.EXPIRED
