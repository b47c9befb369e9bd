"""gunicorn settings for issuer: ``gunicorn -c gunicorn.conf.py wsgi:app`` (``make serve``).

Threaded workers: a login waits on WeChat for up to ``ISSUER_WECHAT_TIMEOUT``, and a thread
waiting on the network should not idle a whole process. The app is loaded once in the master
(``preload_app``) so a bad setting stops start-up once, with one line, and key generation
happens once before the workers fork.
"""

import multiprocessing
import os

bind = os.environ.get("ISSUER_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("ISSUER_THREADS", "8"))
preload_app = True
timeout = 30
graceful_timeout = 20
keepalive = 5

# Access log to stdout; the path without its query string, which could carry secrets.
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss "%(a)s" rid=%({x-request-id}o)s'

# gunicorn 24+ opens a control socket at one default path per user; several issuer masters on
# one host would share it, and nothing here uses it.
control_socket_disable = True
