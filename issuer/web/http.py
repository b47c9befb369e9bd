"""The HTTP edge shared by every view: reading bodies and Bearer tokens, rendering errors.

Every error leaves as RFC 6749 §5.2 JSON with ``Cache-Control: no-store``: issuer's own
errors, Werkzeug's (404, 405, 413, 429 ...) and unexpected exceptions alike. The last are
logged with their traceback and the request id, and the client sees only the id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context, request
from limits.errors import StorageError
from werkzeug.exceptions import HTTPException

from ..errors import (
    InvalidRequest,
    InvalidToken,
    IssuerError,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    ServerError,
    SlowDown,
    TemporarilyUnavailable,
)
from ..logs import request_id_from
from ..store import StoreUnavailable
from .ratelimit import EXTENSION, retry_after

log = logging.getLogger("issuer.http")
access_log = logging.getLogger("issuer.access")

MAX_BODY_BYTES = 16 * 1024
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Told of every finished request when metrics are on: (URL rule or None, outcome, whether
# issuer's own rate limit refused it). Kept in app.extensions under this key.
RequestObserver = Callable[[str | None, str, bool], None]
REQUEST_OBSERVER = "issuer.request_observer"


def json_response(
    body: Mapping[str, Any], status: int = 200, *, no_store: bool = False
) -> Response:
    response = current_app.response_class(
        json.dumps(body, separators=(",", ":")), status=status, mimetype=JSON
    )
    if no_store:
        response.headers.update(NO_STORE)
    return response


def render_error(error: IssuerError) -> Response:
    if has_request_context():
        g.outcome = error.error  # for the access log line
    response = json_response(error.body(), error.status_code, no_store=True)
    response.headers.update(error.headers())
    return response


def _retry_after_on_503(response: Response) -> Response:
    """``Retry-After: 1`` (RFC 9110 §10.2.3) on every 503: what is unavailable (WeChat, the
    database, a key ring) is worth asking again at once, not after some window. A 429 sets
    its own (:class:`SlowDown`); no other answer carries one. A 503 that set its own keeps it
    (:class:`issuer.errors.QuotaExhausted`: an hour, since a second cannot help)."""
    if response.status_code == 503:
        response.headers.setdefault("Retry-After", "1")
    return response


# -- request bodies


class Params:
    """The fields of a JSON object or form body, checked to be single strings."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = fields

    def text(self, name: str, *, required: bool = True) -> str | None:
        """The string value of ``name``; None when optional and absent.

        :raises InvalidRequest: missing when required, or not a string.
        """
        value = self._fields.get(name)
        if value is None:
            if required:
                raise InvalidRequest(f"{name} is required.")
            return None
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a string.")
        return value

    def flag(self, name: str) -> bool:
        """The required boolean ``name``: JSON ``true``/``false``, or in a form the text
        ``true``/``false``.

        :raises InvalidRequest: missing, or anything else.
        """
        value = self._fields.get(name)
        if value in ("true", "false"):
            return bool(value == "true")
        if not isinstance(value, bool):
            raise InvalidRequest(f"{name} must be true or false.")
        return value


def request_body(limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole request body, at most ``limit`` bytes (:data:`MAX_BODY_BYTES` unless a view
    raised ``request.max_content_length`` to that limit first).

    A body that declares its length is held to the limit by Werkzeug before a byte is read
    (``MAX_CONTENT_LENGTH``). One sent chunked (RFC 9112 §7.1), without a length, is read by
    Werkzeug up to the limit and silently cut there; so when exactly the limit arrived, one
    more byte is asked of the server's stream, which ends where the chunked body does
    (``wsgi.input_terminated``): any byte there means the body was larger.

    :raises RequestTooLarge: the body is larger than the limit.
    """
    data = request.get_data(cache=True)
    if (
        len(data) >= limit
        and request.content_length is None
        and request.environ.get("wsgi.input_terminated")
        and request.input_stream.read(1)
    ):
        raise RequestTooLarge()
    return data


def read_params(*, form: bool) -> Params:
    """Parse the body as a JSON object, or (``form``) also a urlencoded form.

    :raises InvalidRequest: no body, another content type, malformed, or a repeated field
        (RFC 6749 §3.2: parameters must not be included more than once).
    """
    data = request_body()
    mimetype = request.mimetype
    accepted = f"{JSON} or {FORM}" if form else JSON
    if mimetype == JSON:
        try:
            fields = json.loads(data, object_pairs_hook=_unique_members)
        except _DuplicateMember as duplicate:
            raise InvalidRequest(f"{duplicate.name} must be sent once.") from None
        except (ValueError, RecursionError):
            raise InvalidRequest("The body is not valid JSON.") from None
        if not isinstance(fields, dict):
            raise InvalidRequest("The body must be a JSON object.")
        return Params(fields)
    if form and mimetype == FORM:
        values = request.form
        for name in values:
            if len(values.getlist(name)) > 1:
                raise InvalidRequest(f"{name} must be sent once.")
        return Params(values.to_dict())
    if not data:
        raise InvalidRequest(f"The request body is missing; send {accepted}.")
    raise InvalidRequest(f"Content-Type must be {accepted}.")


class _DuplicateMember(Exception):
    """A JSON object names a member twice."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        # Named in the error: printable, and short enough for a sentence.
        shown = json.dumps(name)
        self.name = shown if len(shown) <= 66 else shown[:62] + '..."'


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of ``pairs``, refusing a repeated name.

    RFC 8259 §4 leaves duplicate names to the parser, and parsers disagree (Python keeps the
    last, others the first): a body two parsers read differently is refused, as a repeated
    form field is (RFC 6749 §3.2).

    :raises _DuplicateMember: a name appears twice.
    """
    fields = dict(pairs)
    if len(fields) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateMember(name)
            seen.add(name)
    return fields


def bearer_token(*, required: bool = True) -> str | None:
    """The Bearer token of the Authorization header (RFC 6750 §2.1).

    :raises InvalidToken: absent (``missing``, when required) or malformed.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        if required:
            raise InvalidToken(
                "An access token is required (Authorization: Bearer ...).", missing=True
            )
        return None
    token = token.strip()
    if not token or " " in token:
        raise InvalidToken("The Authorization header is malformed.")
    return token


# -- hooks and handlers


def _start_request() -> None:
    g.request_id = request_id_from(request.headers.get("X-Request-ID"))
    g.started = time.perf_counter()


def _finish_request(response: Response) -> Response:
    request_id = g.get("request_id", "")
    headers = response.headers
    headers["X-Request-ID"] = request_id
    if "X-Content-Type-Options" not in headers:
        headers["X-Content-Type-Options"] = "nosniff"
    status = response.status_code
    rule = request.url_rule
    route = rule.rule if rule is not None else None
    outcome: str = g.get("outcome", "ok" if status < 400 else "error")
    if access_log.isEnabledFor(logging.INFO):
        _log_access(request_id, route, status, outcome)
    observe: RequestObserver | None = current_app.extensions.get(REQUEST_OBSERVER)
    if observe is not None:
        observe(route, outcome, g.get("rate_limited", False))
    return response


def _log_access(request_id: str, route: str | None, status: int, outcome: str) -> None:
    """The one access line of a request.

    The record is made and handed to the logger directly: ``Logger.info`` would also look up
    the caller's file and line by walking the stack, for every request, for a field no
    access line shows.
    """
    started = g.get("started")
    method, path = request.method, request.path
    # The path only: a query string could carry something a client should not have sent.
    fields: dict[str, object] = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1) if started else None,
        "outcome": outcome,
        # After ProxyFix: the client's address as the trusted proxy saw it.
        "client": request.remote_addr,
    }
    sub = g.get("sub")
    if sub:
        fields["sub"] = sub
    access_log.handle(
        access_log.makeRecord(
            access_log.name,
            logging.INFO,
            __file__,
            0,
            "%s %s %d %s",
            (method, path, status, outcome),
            None,
            extra=fields,
        )
    )


def _http_exception(exception: HTTPException) -> Response:
    code = exception.code or 500
    error: IssuerError
    if code == 404:
        error = NotFound()
    elif code == 405:
        error = MethodNotAllowed()
    elif code == 413:
        error = RequestTooLarge()
    elif code == 429:
        # Only flask-limiter raises a 429 HTTPException; WeChat's 45011 is a SlowDown error.
        g.rate_limited = True
        error = SlowDown(
            "Too many requests from this address; retry later.", retry_after=_limiter_retry_after()
        )
    elif 400 <= code < 500:
        error = InvalidRequest()
    else:
        return _unexpected(exception)
    response = render_error(error)
    response.status_code = code
    for name, value in exception.get_headers():
        if name == "Allow":
            response.headers["Allow"] = value
    return response


def _limiter_retry_after() -> int:
    """Whole seconds until the breached flask-limiter window resets."""
    limits = current_app.extensions.get(EXTENSION)
    current = limits.limiter.current_limit if limits is not None else None
    if current is None:
        return 60
    try:
        reset_at = current.window[0]  # asks the limit storage once more
    except StorageError:  # Redis went away between counting this request and answering it
        return 60
    return retry_after(reset_at)


def _store_unavailable(exception: StoreUnavailable) -> Response:
    log.error("database unavailable: %s", exception)
    response = render_error(TemporarilyUnavailable("The database is busy; retry shortly."))
    response.headers["Retry-After"] = "1"
    return response


def _unexpected(exception: BaseException) -> Response:
    request_id = g.get("request_id") or request_id_from(None)
    log.error("unexpected error", exc_info=exception)
    return render_error(ServerError(request_id))


def install(app: Flask, *, observe: RequestObserver | None = None) -> None:
    """Bind the hooks and error handlers of this module to ``app``.

    :param observe: told of every finished request (metrics); without one a request pays
        one dictionary lookup for it.
    """
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    if observe is not None:
        app.extensions[REQUEST_OBSERVER] = observe
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.after_request(_retry_after_on_503)
    app.register_error_handler(IssuerError, render_error)
    app.register_error_handler(StoreUnavailable, _store_unavailable)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)
