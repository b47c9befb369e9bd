"""The HTTP edge: what every request passes through, the views, rate limits and metrics.

- :mod:`.http`: bodies, Bearer tokens, error rendering, the access line;
- :mod:`.views`: the endpoints, one blueprint per group;
- :mod:`.ratelimit`: flask-limiter, per client address (and Redis for fleets);
- :mod:`.metrics`: Prometheus counters, off unless configured.
"""
