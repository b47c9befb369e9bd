"""The errors issuer answers with: one class per OAuth 2.0 error code (RFC 6749 §5.2), and
:class:`StartupError`, the one that stops start-up.

Each class knows its ``error`` code, its HTTP status and its extra headers; the HTTP layer
renders any of them the same way. Descriptions are written for the client's developer and
never carry upstream text, exception messages or secrets.
"""

from __future__ import annotations

from typing import ClassVar


class StartupError(Exception):
    """Start-up cannot go on; ``str(error)`` is one line for the operator."""


class KeyFileError(StartupError):
    """A key file or the key directory cannot be used; the message names the file."""


class IssuerError(Exception):
    """Base of every error a client may see. ``description`` is a human sentence."""

    error: ClassVar[str] = "server_error"
    status_code: ClassVar[int] = 500
    default_description: ClassVar[str] = "The server could not complete the request."

    def __init__(self, description: str | None = None) -> None:
        self.description = description or self.default_description
        super().__init__(self.description)

    def headers(self) -> dict[str, str]:
        """Headers this error adds to its response."""
        return {}

    def body(self) -> dict[str, str]:
        """The RFC 6749 §5.2 error object."""
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(IssuerError):
    error = "invalid_request"
    status_code = 400
    default_description = "The request is missing a parameter or is malformed."


class RequestTooLarge(InvalidRequest):
    status_code = 413
    default_description = "The request body is larger than 16 KiB."


class InvalidClient(IssuerError):
    error = "invalid_client"
    status_code = 400
    default_description = "The appid is not configured here."


class UnsupportedGrantType(IssuerError):
    error = "unsupported_grant_type"
    status_code = 400
    default_description = "Only grant_type=refresh_token is supported here."


class InvalidGrant(IssuerError):
    error = "invalid_grant"
    status_code = 400
    default_description = "The grant is invalid, expired, or already used."


class AccessDenied(IssuerError):
    error = "access_denied"
    status_code = 403
    default_description = "WeChat refused to log this user in."


class InvalidToken(IssuerError):
    """RFC 6750 §3: a missing token gets a bare challenge, a bad one names the error."""

    error = "invalid_token"
    status_code = 401
    default_description = "The access token is missing, invalid, or expired."

    def __init__(self, description: str | None = None, *, missing: bool = False) -> None:
        super().__init__(description)
        self.missing = missing

    def headers(self) -> dict[str, str]:
        if self.missing:
            return {"WWW-Authenticate": "Bearer"}
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class SlowDown(IssuerError):
    error = "slow_down"
    status_code = 429
    default_description = "Too many requests; retry after the time in Retry-After."

    def __init__(self, description: str | None = None, *, retry_after: int = 60) -> None:
        super().__init__(description)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TemporarilyUnavailable(IssuerError):
    error = "temporarily_unavailable"
    status_code = 503
    default_description = "A service issuer depends on is unavailable; retry shortly."


class UpstreamTimeout(IssuerError):
    error = "upstream_timeout"
    status_code = 504
    default_description = "WeChat did not answer in time; retry shortly."


class UpstreamMisconfigured(IssuerError):
    error = "upstream_misconfigured"
    status_code = 502
    default_description = (
        "WeChat rejected this server's app credentials; the operator has been told."
    )


class QuotaExhausted(IssuerError):
    """WeChat's paid or daily quota for an API of this app is spent (``1400001``,
    ``45009``). Not ``temporarily_unavailable``: no retry helps until the operator tops the
    quota up (or WeChat resets it), so ``Retry-After`` asks for an hour, not a second."""

    error = "quota_exhausted"
    status_code = 503
    default_description = (
        "WeChat's quota for this call is used up for this app; retrying cannot help until "
        "the operator tops it up."
    )
    retry_after: ClassVar[int] = 3600

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class SessionKeyMismatch(IssuerError):
    error = "session_key_mismatch"
    status_code = 409
    default_description = (
        "The data was not encrypted with this user's current session_key; "
        "call wx.login again, log in, and retry."
    )


class NotFound(IssuerError):
    error = "not_found"
    status_code = 404
    default_description = "There is no such endpoint."


class MethodNotAllowed(IssuerError):
    error = "method_not_allowed"
    status_code = 405
    default_description = "This endpoint does not accept that method."


class ServerError(IssuerError):
    """An unexpected failure; the detail goes to the log, the request id to the client."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"An unexpected error occurred; quote request id {request_id} when reporting it."
        )
        self.request_id = request_id

    def body(self) -> dict[str, str]:
        return {**super().body(), "request_id": self.request_id}
