"""HTTP endpoints of web login: the authorization endpoint, WeChat's callback and the token
endpoint (``/auth/token``), over :class:`issuer.weblogin.WebLogin`.

The authorization endpoint and the callback answer browsers: a request that cannot be sent
back to a verified client redirect URI gets a short HTML page (RFC 6749 §4.1.2.1: never a
redirect to an unverified URI); every other outcome is a 302. Codes travel in the redirect's
query; tokens only ever in the token endpoint's JSON body.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, request
from markupsafe import escape

from ..config import WeChatApp
from ..errors import InvalidRequest, UnsupportedGrantType
from ..oauth.grants import OAuthFailure, TicketStatus
from ..service import Caller
from ..weblogin import MAX_POLL_WAIT, PollGate, Redirect, WebLogin
from .http import NO_STORE, json_response, read_params
from .ratelimit import limits_of
from .views import caller

weblogin = Blueprint("weblogin", __name__)


def web() -> WebLogin:
    login: WebLogin = current_app.extensions["issuer.weblogin"]
    return login


def _query() -> dict[str, str]:
    """The query parameters, each at most once (RFC 6749 §3.1)."""
    for name in request.args:
        if len(request.args.getlist(name)) > 1:
            raise OAuthFailure("invalid_request", f"{name} must be sent once.", redirect=False)
    return request.args.to_dict()


def _redirect(target: Redirect) -> Response:
    return Response(status=302, headers={"Location": target.url, **NO_STORE})


def _page(failure: OAuthFailure, status: int = 400) -> Response:
    """What a browser sees when issuer cannot send it back to the client: a short page when
    it asks for HTML, else the JSON error every other answer of issuer is."""
    accepted = request.accept_mimetypes
    if accepted.quality("text/html") <= accepted.quality("application/json"):
        body = {"error": failure.error, "error_description": failure.description}
        return json_response(body, status=status, no_store=True)
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Login failed</title></head><body><h1>Login failed</h1>"
        f"<p>{escape(failure.description)}</p><p><code>{escape(failure.error)}</code></p>"
        "</body></html>"
    )
    # Nothing on the page runs or loads: it only says what went wrong.
    headers = {**NO_STORE, "Content-Security-Policy": "default-src 'none'"}
    return Response(html, status=status, mimetype="text/html", headers=headers)


@weblogin.get("/auth/authorize")
def authorize() -> Response:
    """RFC 6749 §4.1.1 with PKCE: to WeChat's authorize page, or back with an error."""
    login = web()
    try:
        params = _query()
        return _redirect(login.authorize(params))
    except OAuthFailure as failure:
        if not failure.redirect:
            return _page(failure)
        client = login.settings.client(params["client_id"])
        assert client is not None  # a failure that redirects has a checked client and URI
        redirect_uri = params.get("redirect_uri") or client.redirect_uris[0]
        return _redirect(
            login.error_redirect(
                redirect_uri, failure.error, failure.description, params.get("state")
            )
        )


@weblogin.get("/auth/wechat/callback")
def callback() -> Response:
    """WeChat's authorize page sends the browser here with its code and issuer's state."""
    try:
        return _redirect(web().callback(_query()))
    except OAuthFailure as failure:
        return _page(failure)


@weblogin.post("/auth/token")
def token() -> Response:
    """The token endpoint of every grant (RFC 6749 §3.2): ``authorization_code`` (§4.1.3,
    with PKCE) and ``refresh_token`` (§6)."""
    params = read_params(form=True)
    grant_type = params.text("grant_type")
    login = web()
    if grant_type == "authorization_code":
        fields = {
            name: params.text(name, required=False)
            for name in ("code", "client_id", "redirect_uri", "code_verifier")
        }
        pair = login.exchange({name: value for name, value in fields.items() if value})
    elif grant_type == "refresh_token":
        refresh_token = params.text("refresh_token")
        assert refresh_token is not None
        pair = login.service.refresh(refresh_token, params.text("client_id", required=False))
    else:
        raise UnsupportedGrantType()
    g.sub = pair.user_id
    return json_response(pair.body(), no_store=True)


# -- PC scan login


def _server_token(app: WeChatApp, rejected: str | None) -> str:
    tokens = current_app.extensions["issuer.userdata"].server_tokens
    token: str = tokens.get(app) if rejected is None else tokens.replace(app, rejected)
    return token


@weblogin.post("/auth/scan")
def scan_create() -> Response:
    """A ticket for the PC page: its code image URL, lifetime and polling interval."""
    params = read_params(form=True)
    client_id, challenge = params.text("client_id"), params.text("code_challenge")
    assert client_id is not None
    assert challenge is not None
    return json_response(web().create_ticket(client_id, challenge), no_store=True)


@weblogin.get("/auth/scan/<ticket>/qrcode")
def scan_qrcode(ticket: str) -> Response:
    """The mini-program code of a pending ticket, a PNG made once per ticket."""
    png = web().qrcode(ticket, _server_token)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "private, max-age=300"})


def _scanner() -> Caller:
    who = caller()
    assert request.endpoint is not None
    limits_of().hit_user(who.claims["sub"], request.endpoint)
    return who


@weblogin.post("/auth/scan/<ticket>/scanned")
def scan_scanned(ticket: str) -> Response:
    """The logged-in mini-program read the ticket from the code's scene."""
    return json_response(web().scanned(ticket, _scanner()), no_store=True)


@weblogin.post("/auth/scan/<ticket>/confirm")
def scan_confirm(ticket: str) -> Response:
    """``{"approve": true|false}``: the user logs the PC in, or refuses."""
    who = _scanner()
    approve = read_params(form=True).flag("approve")
    return json_response(web().confirm(ticket, who, approve), no_store=True)


@weblogin.get("/auth/scan/<ticket>")
def scan_poll(ticket: str) -> Response:
    """The ticket's status once it differs from ``since`` (default ``pending``), waiting up
    to ``wait`` seconds (default and most 25) for a change."""
    since_text = request.args.get("since", TicketStatus.PENDING.value)
    wait_text = request.args.get("wait", str(MAX_POLL_WAIT))
    try:
        since = TicketStatus(since_text)
        wait = float(wait_text)
    except ValueError:
        raise InvalidRequest("since must be a ticket status and wait a number.") from None
    if not 0 <= wait <= MAX_POLL_WAIT:
        raise InvalidRequest(f"wait must be from 0 to {MAX_POLL_WAIT:g} seconds.")
    gate: PollGate = current_app.extensions["issuer.pollgate"]
    return json_response(web().poll(ticket, since, wait, gate), no_store=True)


__all__ = ["weblogin"]
