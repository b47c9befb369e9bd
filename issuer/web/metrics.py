"""Prometheus metrics (``ISSUER_METRICS``): what is counted, and ``GET /metrics``.

Counted, all with an ``issuer_`` prefix and low-cardinality labels only (never a user id,
openid, appid, code or token):

- ``issuer_logins_total{outcome}`` and ``issuer_refreshes_total{outcome}``: ``ok`` or the
  OAuth ``error`` code the response carried; fed by the HTTP layer's per-request hook;
- ``issuer_refresh_token_reuse_total``: sessions revoked because a spent refresh token came
  back (RFC 9700 §4.14.2); fed by the service;
- ``issuer_wechat_requests_total{api, errcode}`` and
  ``issuer_wechat_request_duration_seconds{api}``: every HTTP exchange with WeChat (a busy
  retry is a second one); fed by the WeChat client;
- ``issuer_rate_limited_total{endpoint}``: requests refused by issuer's own rate limits
  (not WeChat's 45011, which is an ``errcode`` above).

Who may read them: ``/metrics`` answers only a request carrying ``Authorization: Bearer
<ISSUER_METRICS_TOKEN>`` (RFC 6750 §2.1; Prometheus sends it with ``authorization:
{credentials: ...}``), compared in constant time; any other request gets the same 404 as a
path that does not exist, so the public listener shows nothing of it. The token rather than a
second listener: the workers already sum every worker's files, an operator sets one value, and
the scrape works through whatever network path reaches the service.

Two modes. In one process (``issuer dev``, tests) each app has its own registry, so building
many apps in one process never registers a metric twice, and the process/platform/GC
collectors of ``prometheus_client`` are included. Under gunicorn ``PROMETHEUS_MULTIPROC_DIR``
is set: every worker writes its values to mmap files there and ``/metrics`` sums the files of
all workers, living or dead, whichever worker answers. One app per process in that mode: two
apps in one process would write the same file entries.

``prometheus_client`` chooses between in-memory and file-backed values once, when it is
first imported, from ``PROMETHEUS_MULTIPROC_DIR``. ``gunicorn.conf.py`` imports this module to
set that variable, so this module imports ``prometheus_client`` only inside functions.
"""

from __future__ import annotations

import hmac
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import load_settings
from ..errors import StartupError

if TYPE_CHECKING:
    from flask import Flask, Response
    from prometheus_client import CollectorRegistry, Counter, Histogram

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Kept in the gunicorn master's environment (so they survive the re-reading of
# gunicorn.conf.py on HUP): the pid of the master that prepared the directory, and the
# directory when that master created it (and so removes it on exit).
PREPARED_BY = "_ISSUER_METRICS_PREPARED_BY"
CREATED_DIR = "_ISSUER_METRICS_CREATED_DIR"

# The classic text format: every Prometheus version and scraper reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# WeChat answers in milliseconds to a few hundred; the default timeout is 5 s, the most 60 s.
WECHAT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOGIN_ROUTE = "/auth/login"
REFRESH_ROUTE = "/auth/refresh"
PHONE_ROUTE = "/wechat/phone"


class Metrics:
    """The metrics of one app, and the registry ``/metrics`` renders.

    :param multiprocess_dir: the ``PROMETHEUS_MULTIPROC_DIR`` of a multi-process server, or
        None for one process.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            GCCollector,
            Histogram,
            PlatformCollector,
            ProcessCollector,
        )
        from prometheus_client.multiprocess import MultiProcessCollector

        self.registry: CollectorRegistry = CollectorRegistry()
        target: CollectorRegistry | None
        if multiprocess_dir is None:
            target = self.registry
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        else:
            # Values go to the files; /metrics reads every worker's files back. (The
            # library leaves this constructor without type hints.)
            target = None
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        self.logins: Counter = Counter(
            "issuer_logins",
            "Login requests (POST /auth/login) by outcome: ok or the OAuth error code.",
            ["outcome"],
            registry=target,
        )
        self.refreshes: Counter = Counter(
            "issuer_refreshes",
            "Refresh requests (POST /auth/refresh) by outcome: ok or the OAuth error code.",
            ["outcome"],
            registry=target,
        )
        self.reuses: Counter = Counter(
            "issuer_refresh_token_reuse",
            "Sessions revoked because an already spent refresh token was presented again.",
            registry=target,
        )
        self.wechat_requests: Counter = Counter(
            "issuer_wechat_requests",
            "HTTP exchanges with the WeChat API by API and errcode (0: success; timeout, "
            "transport, bad_status, bad_response: no errcode to read; other: an unknown one).",
            ["api", "errcode"],
            registry=target,
        )
        self.wechat_seconds: Histogram = Histogram(
            "issuer_wechat_request_duration_seconds",
            "Time of each HTTP exchange with the WeChat API, failures included.",
            ["api"],
            buckets=WECHAT_BUCKETS,
            registry=target,
        )
        self.rate_limited: Counter = Counter(
            "issuer_rate_limited",
            "Requests refused by issuer's own rate limits (429 slow_down), by endpoint.",
            ["endpoint"],
            registry=target,
        )
        # Each getuserphonenumber call is paid: how the phone endpoint's requests ended.
        self.phone_numbers: Counter = Counter(
            "issuer_phone_numbers",
            "Phone-number requests (POST /wechat/phone) by outcome: ok or the OAuth error "
            "code (quota_exhausted: WeChat's paid quota is used up).",
            ["outcome"],
            registry=target,
        )
        # Present from the first scrape, so a rate over them is defined before any traffic.
        self.logins.labels("ok")
        self.refreshes.labels("ok")

    @classmethod
    def for_this_process(cls) -> Metrics:
        """The metrics for this process: file-backed when ``PROMETHEUS_MULTIPROC_DIR`` is set.

        :raises StartupError: the directory is unusable, or the variable changed after
            ``prometheus_client`` was imported (its values would silently stay per process).
        """
        from prometheus_client import values

        path = os.environ.get(MULTIPROC_DIR) or None
        file_backed = bool(getattr(values.ValueClass, "_multiprocess", False))
        if path is not None and not file_backed:
            raise StartupError(
                f"{MULTIPROC_DIR}: set after prometheus_client was loaded; set it before the "
                "process starts (gunicorn.conf.py does)"
            )
        if path is None and file_backed:
            raise StartupError(f"{MULTIPROC_DIR}: unset after prometheus_client was loaded")
        if path is not None and not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
            raise StartupError(f"{MULTIPROC_DIR}: {path} is not a writable directory")
        return cls(path)

    # -- what the rest of issuer reports

    def observe_request(self, route: str | None, outcome: str, rate_limited: bool) -> None:
        """One finished request: its URL rule, outcome (``ok`` or an OAuth error code) and
        whether issuer's own rate limit refused it."""
        if route == LOGIN_ROUTE:
            self.logins.labels(outcome).inc()
        elif route == REFRESH_ROUTE:
            self.refreshes.labels(outcome).inc()
        elif route == PHONE_ROUTE:
            self.phone_numbers.labels(outcome).inc()
        if rate_limited and route is not None:
            self.rate_limited.labels(route).inc()

    def observe_wechat(self, path: str, result: str, seconds: float) -> None:
        """One HTTP exchange with WeChat: the API path, its errcode or failure, its time."""
        api = path.strip("/")
        self.wechat_requests.labels(api, result).inc()
        self.wechat_seconds.labels(api).observe(seconds)

    def refresh_token_reused(self) -> None:
        self.reuses.inc()

    # -- serving them

    def exposition(self) -> bytes:
        """The text exposition of every metric (summed over workers in multi-process mode)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def install(self, app: Flask, token: str) -> None:
        """Serve ``GET /metrics`` on ``app`` to requests that carry ``token`` as Bearer."""
        from flask import abort, current_app, request

        expected = token.encode()

        def metrics() -> Response:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # The scheme is case-insensitive (RFC 7235 §2.1); the token is compared in
            # constant time, so the answer's timing tells nothing of it.
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("utf-8", "replace"), expected
            ):
                abort(404)  # as if there were no such path
            response = current_app.response_class(self.exposition(), content_type=CONTENT_TYPE)
            response.headers["Cache-Control"] = "no-store"
            return response

        app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])


# -- gunicorn's master (gunicorn.conf.py)


def prepare_multiprocess_dir(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Give the workers a clean ``PROMETHEUS_MULTIPROC_DIR`` before the app loads.

    Called by ``gunicorn.conf.py`` in the master. When metrics are on: a directory the
    operator named is emptied of the ``*.db`` files an earlier run left (their counts would
    be summed in, or continued by a worker that gets a recycled pid); without one, a fresh
    temporary directory is made and removed again by :func:`cleanup_multiprocess_dir`. A
    re-reading of the configuration by the same master (HUP) keeps the directory as it is.

    :returns: the directory, or None when metrics are off or a setting is invalid (the
        app's own start-up then reports it, in one line).
    """
    environ = os.environ if environ is None else environ
    try:
        enabled = load_settings(environ=environ).metrics
    except StartupError:
        return None
    if not enabled:
        return None
    if environ.get(PREPARED_BY) == str(os.getpid()) and environ.get(MULTIPROC_DIR):
        return environ[MULTIPROC_DIR]
    path = environ.get(MULTIPROC_DIR)
    if path:
        os.makedirs(path, mode=0o700, exist_ok=True)
        for stale in Path(path).glob("*.db"):
            stale.unlink(missing_ok=True)
        environ.pop(CREATED_DIR, None)
    else:
        path = tempfile.mkdtemp(prefix="issuer-metrics-")
        environ[MULTIPROC_DIR] = environ[CREATED_DIR] = path
    environ[PREPARED_BY] = str(os.getpid())
    return path


def worker_exited(pid: int, environ: MutableMapping[str, str] | None = None) -> None:
    """gunicorn's ``child_exit``: let ``prometheus_client`` forget a dead worker's live gauges.

    Its counters and histograms stay in its files and keep counting in the sums.
    """
    environ = os.environ if environ is None else environ
    path = environ.get(MULTIPROC_DIR)
    if environ.get(PREPARED_BY) and path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def cleanup_multiprocess_dir(environ: MutableMapping[str, str] | None = None) -> None:
    """gunicorn's ``on_exit``: remove the temporary directory this master created, if any."""
    environ = os.environ if environ is None else environ
    created = environ.get(CREATED_DIR)
    if created and environ.get(PREPARED_BY) == str(os.getpid()):
        shutil.rmtree(created, ignore_errors=True)
        environ.pop(CREATED_DIR, None)
