"""A downstream Flask API that accepts issuer's access tokens, verified locally.

Nothing but issuer's public JWKS is needed: no shared secret, no call to issuer per request.

    ISSUER_URL=http://127.0.0.1:8000 PORT=8001 python examples/downstream/flask_api.py
    curl -s http://127.0.0.1:8001/orders -H "Authorization: Bearer $ACCESS"

Environment:

- ``ISSUER_URL`` (required): issuer's ``ISSUER_URL``, exactly as it puts it in ``iss``.
- ``ISSUER_AUDIENCE``: issuer's ``ISSUER_AUDIENCE``, when it sets one (else ``ISSUER_URL``).
- ``PORT``: where to listen on 127.0.0.1 (default 8001).
- ``JWKS_REFETCH_COOLDOWN``: seconds between refetches of the JWKS for tokens with an
  unknown ``kid`` (default 30). Lower means a key rotated with ``issuer keys rotate --now``
  is picked up sooner; higher means a burst of forged kids costs issuer fewer requests.

The JWKS is cached for its ``Cache-Control: max-age`` (issuer's ``ISSUER_JWKS_MAX_AGE``), so a
revoked key stops verifying here at most that long after ``issuer keys revoke``.
"""

from __future__ import annotations

import os
import sys

from flask import Flask, Response, g, jsonify

from issuer_verify import AccessTokenVerifier
from issuer_verify.flask import require_access_token


def create_app(
    issuer_url: str, audience: str | None = None, *, refetch_cooldown: float = 30.0
) -> Flask:
    app = Flask(__name__)
    verifier = AccessTokenVerifier(
        issuer=issuer_url, audience=audience, refetch_cooldown=refetch_cooldown
    )
    app.extensions["access_token_verifier"] = verifier

    @app.get("/orders")
    @require_access_token(verifier)
    def orders() -> Response:
        claims = g.access_token
        return jsonify(user=claims["sub"], app=claims["client_id"])

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="ok")

    return app


def main() -> None:
    issuer_url = os.environ.get("ISSUER_URL", "").strip()
    if not issuer_url:
        sys.exit("ISSUER_URL: set it to issuer's ISSUER_URL, e.g. http://127.0.0.1:8000")
    audience = os.environ.get("ISSUER_AUDIENCE", "").strip() or None
    try:
        port = int(os.environ.get("PORT", "8001"))
        cooldown = float(os.environ.get("JWKS_REFETCH_COOLDOWN", "30"))
    except ValueError as error:
        sys.exit(f"PORT / JWKS_REFETCH_COOLDOWN: {error}")
    app = create_app(issuer_url, audience, refetch_cooldown=cooldown)
    # The development server is enough for an example; in production run create_app() under
    # gunicorn like issuer itself.
    app.run(host="127.0.0.1", port=port, threaded=True)


if __name__ == "__main__":
    main()
