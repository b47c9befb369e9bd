"""The floor: bare Flask answering bodies of the sizes issuer answers, served as
``bench.floor:app`` under the very same gunicorn settings as issuer.

What a request costs here is what Flask, gunicorn, the loopback and wrk cost before issuer
does any work of its own; every issuer figure is a ratio to one of these routes, measured in
the same run. The sizes are issuer's own, measured by the bench before it starts the floor
and passed in the environment (``BENCH_FLOOR_TOKEN_BYTES``, ``_ME_BYTES``, ``_JWKS_BYTES``):

- ``POST /floor/token``: parse a JSON object with one string field (``refresh_token`` or
  ``code``) and answer a token response of issuer's size (refresh- and login-shaped);
- ``GET /floor/me``: a JSON object of the size of issuer's ``/me`` answer;
- ``GET /floor/jwks``: fixed bytes of the JWKS's size with an ``ETag``, answering
  ``If-None-Match`` with 304 as issuer does (Werkzeug's ``make_conditional``).
"""

from __future__ import annotations

import hashlib
import json
import os

from flask import Flask, Response, request

app = Flask(__name__)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _padded(fields: dict[str, object], size: int) -> dict[str, object]:
    """``fields`` plus a ``padding`` member that brings its compact JSON to ``size`` bytes."""
    bare = len(json.dumps({**fields, "padding": ""}, separators=(",", ":")))
    return {**fields, "padding": "." * max(0, size - bare)}


TOKEN = _padded(
    {
        "access_token": "eyJ" + "A" * 400,
        "token_type": "Bearer",
        "expires_in": 900,
        "refresh_token": "rt_" + "B" * 70,
        "refresh_token_expires_in": 2592000,
        "user_id": "usr_" + "C" * 22,
        "is_new_user": False,
    },
    int(os.environ.get("BENCH_FLOOR_TOKEN_BYTES", "0")),
)
ME = _padded(
    {"user_id": "usr_" + "C" * 22, "appid": "wx" + "1" * 16, "openid": "o" + "D" * 27},
    int(os.environ.get("BENCH_FLOOR_ME_BYTES", "0")),
)
JWKS = json.dumps(
    _padded({"keys": []}, int(os.environ.get("BENCH_FLOOR_JWKS_BYTES", "0"))),
    separators=(",", ":"),
).encode()
JWKS_ETAG = hashlib.sha256(JWKS).hexdigest()[:32]


@app.post("/floor/token")
def token() -> Response:
    fields = request.get_json(silent=True)
    value = fields.get("refresh_token", fields.get("code")) if isinstance(fields, dict) else None
    if not isinstance(value, str):
        return Response('{"error":"invalid_request"}', status=400, mimetype="application/json")
    body = json.dumps(TOKEN, separators=(",", ":"))
    return Response(body, mimetype="application/json", headers=NO_STORE)


@app.get("/floor/me")
def me() -> Response:
    body = json.dumps(ME, separators=(",", ":"))
    return Response(body, mimetype="application/json", headers=NO_STORE)


@app.get("/floor/jwks")
def jwks() -> Response:
    response = Response(JWKS, mimetype="application/json")
    response.set_etag(JWKS_ETAG)
    response.headers["Cache-Control"] = "public, max-age=300"
    response.make_conditional(request)
    return response
