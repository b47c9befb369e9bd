"""Load runs against issuer under gunicorn: ``make bench`` (``python -m bench``) and ``make soak``
(``python -m bench.soak``). Not part of ``make test``, and not installed with the package.

- :mod:`bench.run` orchestrates the benchmark: servers, inputs, wrk rounds, the table and JSON;
- :mod:`bench.wrk` runs ``wrk`` with the Lua scripts of ``bench/lua/`` and reads their report;
- :mod:`bench.servers` starts real gunicorn masters (issuer, the floor) and the WeChat stand-in;
- :mod:`bench.wechat` is the WeChat stand-in (``sns/jscode2session`` with adjustable latency);
- :mod:`bench.floor` is the floor: bare Flask answering bodies of issuer's sizes;
- :mod:`bench.bigdb` builds (once, cached outside the repo) a database of a million users;
- :mod:`bench.soak` is ten minutes of mixed load from a Python load generator.
"""
