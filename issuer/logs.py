"""Logging: JSON lines in production, readable text in development, request id on every line.

Under gunicorn its own lines (start, workers, signals, shutdown) are JSON lines too:
``gunicorn.conf.py`` takes :func:`gunicorn_logconfig`.

Secrets never reach a log line because nothing logs them, not because a filter scrubs them:
the WeChat client logs neither URLs nor bodies, and ``urllib3``'s debug lines (which print
request URLs, and the jscode2session URL carries the app secret) are turned off here.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from flask import g, has_request_context

# Query options of a database or Redis URL that carry a credential.
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "sslpassword", "token"})
REDACTED = "***"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
HANDLER_NAME = "issuer"
# The fields of the per-request line, in the order they are written.
ACCESS_FIELDS = ("method", "path", "route", "status", "duration_ms", "outcome", "client", "sub")


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-ID`` when it is safe to echo, else a fresh one."""
    if header and REQUEST_ID_PATTERN.fullmatch(header):
        return header
    return _fresh_ids.next()


class _RequestIds:
    """Fresh request ids: unique, not secret (they are echoed to the client and logged), so
    a random prefix per process and a counter serve -- no system call per request. The
    prefix is drawn again in a forked child, which must not repeat its parent's ids."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._counter = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():
            self._prefix, self._counter = secrets.token_hex(4), itertools.count()
            self._pid = os.getpid()
        return f"{self._prefix}{next(self._counter):08x}"


_fresh_ids = _RequestIds()


def current_request_id() -> str | None:
    if has_request_context():
        request_id: str | None = g.get("request_id")
        return request_id
    return None


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def __init__(self) -> None:
        super().__init__()
        # (second, its formatted date and time): one strftime per second, not per line.
        self._second: tuple[int, str] = (-1, "")

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached  # one assignment: threads may race here harmlessly
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        fields = record.__dict__
        for name in ACCESS_FIELDS:
            if name in fields:
                entry[name] = fields[name]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")


def configure_logging(*, json_lines: bool, level: int = logging.INFO) -> None:
    """Send issuer's logs to stderr in the chosen format. Idempotent per process."""
    root = logging.getLogger("issuer")
    for handler in list(root.handlers):
        if handler.get_name() == HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = True
    # urllib3 logs each request line -- with its query string -- at DEBUG.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo and any credential query option replaced
    by ``***``: what a log line may show of a database or Redis URL."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return f"<unparsable {url.split(':', 1)[0][:20]} URL>"
    redacted = url
    if password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:{REDACTED}@{host}"
        redacted = redacted.replace("//" + parts.netloc, "//" + netloc, 1)
    options = parse_qsl(parts.query, keep_blank_values=True)
    if any(name.lower() in SECRET_QUERY_KEYS for name, _ in options):
        shown = [
            (name, REDACTED if name.lower() in SECRET_QUERY_KEYS else value)
            for name, value in options
        ]
        query = urlencode(shown, safe="*")
        redacted = redacted.replace("?" + parts.query, "?" + query, 1)
    return redacted


class NotIssuer(logging.Filter):
    """Lets through records of every logger but issuer's, which has a handler of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "issuer" or record.name.startswith("issuer."))


def gunicorn_logconfig() -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its own lines and any other library's as JSON lines on
    stderr, beside issuer's (whose handler :func:`configure_logging` installs)."""
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "stream": "ext://sys.stderr",
        "filters": ["not_issuer"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"not_issuer": {"()": NotIssuer}},
        "handlers": {"json": handler},
        "root": {"level": "WARNING", "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False},
            # issuer writes the access line itself; gunicorn's stays off (accesslog = None).
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
    }
