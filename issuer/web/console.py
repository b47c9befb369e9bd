"""The development console: one page where a person tries every login flow in a browser.

Served at ``/_console`` only when issuer plays WeChat itself (development mode with the
emulator); ``create_app`` never registers it otherwise, so production answers 404. The page
is static HTML, a stylesheet and a small script (``console/``); the only thing the server
fills in is a JSON block naming the built-in apps and clients, escaped for an HTML element.
The script speaks to issuer's public API and to the emulator's phone side (``/_wechat/dev/``)
exactly as a mini-program, an H5 page and a PC page would.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Final

from flask import Blueprint, Flask, Response, abort

from ..config import Settings

# Everything the page needs comes from this origin: its script and style, issuer's API, the
# emulator's authorize page in a frame, and the code and avatar images: "default-src 'none'"
# opened one directive at a time (CSP Level 3). No inline script or style, no form posts.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-src 'self'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
ASSETS: Final = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
PREFIX: Final = "/_console"


def page_config(settings: Settings) -> dict[str, object]:
    """What the page is told: the mini-program it plays and the web clients it may use."""
    miniprogram = next(app.appid for app in settings.apps if app.kind == "miniprogram")
    clients = {client.kind: client for client in settings.clients}
    h5, web = clients.get("h5"), clients.get("web")
    return {
        "issuer": settings.url.rstrip("/"),
        "appid": miniprogram,
        "h5": {"client_id": h5.id, "redirect_uri": h5.redirect_uris[0]} if h5 else None,
        "pc": {"client_id": web.id} if web else None,
    }


def _script_safe_json(value: object) -> str:
    # Inside <script type="application/json"> only "</" could end the element early; escaping
    # <, > and & as JSON \u escapes keeps any value inert (the HTML spec's script data state).
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("console", name).read_text(encoding="utf-8")


def install(app: Flask, settings: Settings) -> None:
    """Serve the console on ``app`` (call it for development mode with the emulator only)."""
    html = _asset("index.html").replace("{{config}}", _script_safe_json(page_config(settings)))
    assets = {name: _asset(name) for name in ASSETS}
    console = Blueprint("console", __name__, url_prefix=PREFIX)
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    }

    @console.get("")
    def index() -> Response:
        return Response(html, mimetype="text/html", headers=headers)

    @console.get("/<name>")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            abort(404)
        return Response(assets[name], mimetype=ASSETS[name], headers=headers)

    app.register_blueprint(console)


__all__ = ["CONTENT_SECURITY_POLICY", "install", "page_config"]
