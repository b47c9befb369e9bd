"""A Flask view decorator over :class:`~issuer_verify.AccessTokenVerifier`.

Needs Flask (``pip install 'issuer-verify[flask]'``); the rest of the package does not.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

try:
    from flask import Response, g, request
except ImportError as error:  # the rest of the package works without Flask; say what to add
    raise ModuleNotFoundError(
        "issuer_verify.flask needs Flask: pip install 'issuer-verify[flask]'", name="flask"
    ) from error

from .core import InvalidAccessToken, bearer_token

F = TypeVar("F", bound=Callable[..., Any])


class Verifier(Protocol):
    def verify(self, token: str) -> dict[str, Any]: ...


def require_access_token(verifier: Verifier) -> Callable[[F], F]:
    """A valid ``Authorization: Bearer`` access token, or a 401 instead of the view.

    The claims go on ``g.access_token``. The 401 is RFC 6750 §3: JSON
    ``{"error": "invalid_token", "error_description": ...}``, ``WWW-Authenticate: Bearer``
    when no token came, ``Bearer error="invalid_token"`` when a bad one did.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = bearer_token(request.headers.get("Authorization"))
            if token is None:
                return unauthorized("An access token is required.", missing=True)
            try:
                g.access_token = verifier.verify(token)
            except InvalidAccessToken as error:
                return unauthorized(str(error), missing=False)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def unauthorized(description: str, *, missing: bool) -> Response:
    """The RFC 6750 §3 answer: a bare challenge for a missing token, the error for a bad one."""
    body = {"error": "invalid_token", "error_description": description}
    response = Response(json.dumps(body), status=401, mimetype="application/json")
    response.headers["WWW-Authenticate"] = "Bearer" if missing else 'Bearer error="invalid_token"'
    response.headers["Cache-Control"] = "no-store"
    return response
