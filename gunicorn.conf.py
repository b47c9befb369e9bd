"""gunicorn settings for issuer: ``gunicorn -c gunicorn.conf.py wsgi:app`` (``make serve``).

Threaded workers: a login waits on WeChat for up to ``ISSUER_WECHAT_TIMEOUT``, and a thread
waiting on the network should not idle a whole process. The app is loaded once in the master
(``preload_app``) so a bad setting stops start-up once, with one line, and key generation
happens once before the workers fork.
"""

import multiprocessing
import os
from typing import Any

from gunicorn.glogging import Logger

from issuer.logs import gunicorn_logconfig
from issuer.web import metrics as _metrics

bind = os.environ.get("ISSUER_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
# Chosen by measurement (make bench; docs/performance.md has the table): sync workers serve a
# refresh or /me no faster here, and hold one request per process, so a WeChat answering in
# 100 ms starves everything (17 logins/s at 64 connections instead of ~400); gevent would
# need the SQLite driver and the group commit's waits made cooperative.
worker_class = "gthread"
# A request holds its thread while it waits on WeChat, so threads bound the logins in flight:
# two workers x 32 keep 64 waiting at 100 ms each (640 a second) without /auth/refresh or /me
# queueing behind them; 16 halve that bound, 64 add nothing measurable but memory. A thread
# that waits needs no CPU; the price is memory: a thread that reached the database holds its
# own SQLite connection (a 256 KiB page cache; make bench reports the workers' RSS).
threads = int(os.environ.get("ISSUER_THREADS", "32"))
preload_app = True
timeout = 30
graceful_timeout = 20
keepalive = 5

# issuer writes one JSON line per request itself (request id, route, outcome, status,
# duration, client, sub); a second access line from gunicorn would only double the log and
# cost a tenth of a cheap request. Errors and worker life cycle still go to stderr.
accesslog = None
errorlog = "-"
# gunicorn's own lines (booting, workers killed or exiting, signals, shutdown) as JSON lines
# with issuer's formatter, so one log parser reads every line on stderr.
logconfig_dict = gunicorn_logconfig()


class JsonLinesLogger(Logger):
    """gunicorn's logger, except that a ``logconfig_dict`` does not turn its access line on:
    gunicorn would build the line's fields for every request only to drop them."""

    def _compute_access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)


logger_class = JsonLinesLogger

# gunicorn 24+ opens a control socket at one default path per user; several issuer masters on
# one host would share it, and nothing here uses it.
control_socket_disable = True

# Prometheus metrics (ISSUER_METRICS): every worker counts into mmap files under
# PROMETHEUS_MULTIPROC_DIR and /metrics sums them all. prometheus_client reads that variable
# once, when first imported, so it is set here, before the app is loaded (preload_app).
# Without ISSUER_METRICS this does nothing.
_metrics.prepare_multiprocess_dir()


def child_exit(server: Any, worker: Any) -> None:
    """In the master, after a worker exited: its files stay, and keep counting in the sums."""
    _metrics.worker_exited(worker.pid)


def on_exit(server: Any) -> None:
    """In the master, at shutdown: remove the metrics directory it created, if it did."""
    _metrics.cleanup_multiprocess_dir()
