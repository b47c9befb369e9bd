"""What every request pays for at the edge (issuer/web/http.py, issuer/logs.py): a request id
made without a system call, and the access line with the same fields as ever."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import re

from issuer import logs


def _child_id(results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    results.put(logs.request_id_from(None))


def test_fresh_request_ids_are_unique_safe_to_echo_and_new_in_a_forked_child() -> None:
    made = [logs.request_id_from(None) for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert all(logs.REQUEST_ID_PATTERN.fullmatch(item) for item in made)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_id, args=(results,))
    child.start()
    from_child = results.get(timeout=30)
    child.join(timeout=30)
    # Another prefix: the child does not count on from where its parent stood.
    assert from_child[:8] != made[-1][:8]
    assert from_child not in made


def test_the_access_line_is_one_json_object_with_every_field(client, login) -> None:
    """The line as production writes it: the JSON formatter on the issuer handler."""
    body = login("ada")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RequestIdFilter())
    handler.setFormatter(logs.JsonFormatter())
    access = logging.getLogger("issuer.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        client.get(
            "/me",
            headers={"Authorization": f"Bearer {body['access_token']}", "X-Request-ID": "r-1"},
            environ_base={"REMOTE_ADDR": "198.51.100.7"},
        )
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("time"))
    assert isinstance(entry.pop("duration_ms"), float)
    assert entry == {
        "level": "INFO",
        "logger": "issuer.access",
        "message": "GET /me 200 ok",
        "request_id": "r-1",
        "method": "GET",
        "path": "/me",
        "route": "/me",
        "status": 200,
        "outcome": "ok",
        "client": "198.51.100.7",
        "sub": body["user_id"],
    }
