"""The ``issuer`` command (click): the development server and the operator commands.

``issuer dev`` runs development mode with the WeChat emulator and prints a walkthrough;
``keys init|list|rotate|revoke``, ``data-key rotate|drop-unused``, ``db upgrade``, ``prune``
and ``users show|revoke|delete`` operate a deployment. A plain click group, not Flask's: Flask's own
``run``/``shell``/``routes`` and ``--debug`` would serve the production configuration on
Werkzeug's debugger. ``--help`` needs no configuration; the settings are read by each command.

Every command prints what it did and exits non-zero with one clear line when it fails.
Read-only commands (``keys list``, ``users show``) create nothing: no key, no database file.
Every change leaves one JSON line on stderr (``issuer.audit``: who, what, when, ids; never a
secret). Commands that change keys run only as the key directory's owner, and wait until
every serving process has picked the change up, or say which did not.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pwd
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
from flask import Flask

from . import create_app, key_policy
from .config import Settings, load_settings
from .errors import StartupError
from .keys import KeyDirectory, KeyPolicy
from .keys.directory import WorkerReport
from .keys.manager import CHECK_INTERVAL, LONGEST_WRITE
from .keys.matching import check_value
from .keys.reseal import reseal_all
from .logs import configure_logging
from .service import AuthService, rfc3339
from .store import StoreUnavailable, open_store

F = TypeVar("F", bound=Callable[..., Any])

# How long a key change waits for every serving process to report it serves the change.
WORKER_WAIT = 10.0

WALKTHROUGH = """\
issuer is running in development mode, with a WeChat emulator at {url}/_wechat.
Open {url}/_console in a browser to try every flow, or paste this into another terminal:

  j() {{ python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }}

  # 1. What wx.login() does on the phone: a one-time code for test user "alice"
  CODE=$(curl -s -X POST {url}/_wechat/dev/wx.login -d user=alice | j code)

  # 2. Log in with it: an access token and a refresh token
  LOGIN=$(curl -s {url}/auth/login -d code=$CODE); echo "$LOGIN"
  ACCESS=$(echo "$LOGIN" | j access_token); REFRESH=$(echo "$LOGIN" | j refresh_token)

  # 3. Who am I?
  curl -s {url}/me -H "Authorization: Bearer $ACCESS"

  # 4. Trade the refresh token for a new pair (the old one is now spent)
  curl -s {url}/auth/refresh -d refresh_token=$REFRESH

  # 5. Decrypt what wx.getUserProfile gave the phone (issuer holds the session_key)
  DATA=$(curl -s -X POST {url}/_wechat/dev/user-data -d user=alice)
  curl -s {url}/wechat/decrypt -H "Authorization: Bearer $ACCESS" \\
       -H "Content-Type: application/json" -d "$DATA"

  # 6. The phone-number button gives a code; issuer turns it into the number
  PHONE=$(curl -s -X POST {url}/_wechat/dev/phone-code -d user=alice | j code)
  curl -s {url}/wechat/phone -H "Authorization: Bearer $ACCESS" \\
       -H "Content-Type: application/json" -d "{{\\"code\\": \\"$PHONE\\"}}"

  # 7. Is the stored session_key still current? And /me now knows more
  curl -s {url}/wechat/session -H "Authorization: Bearer $ACCESS"
  curl -s {url}/me -H "Authorization: Bearer $ACCESS"

  # 8. The profile the user fills in: the nickname typed, the avatar chosen (re-encoded)
  curl -s -X PATCH {url}/me -H "Authorization: Bearer $ACCESS" \\
       -H "Content-Type: application/json" -d '{{"nickname": "Alice"}}'
  curl -s {url}/_wechat/dev/avatar?user=alice | \\
    curl -s {url}/me/avatar -H "Authorization: Bearer $ACCESS" -F file=@-

  # The public keys downstream services verify access tokens with
  curl -s {url}/.well-known/jwks.json
"""


def _create_app() -> Flask:
    try:
        return create_app()
    except StartupError as error:
        raise click.ClickException(str(error)) from None


def _one_line(command: F) -> F:
    """Turn the failures an operator can fix into one line and a non-zero exit."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StartupError as error:  # settings, key files
            raise click.ClickException(str(error)) from None
        except StoreUnavailable as error:
            raise click.ClickException(
                f"ISSUER_DATABASE_URL: cannot open the database: {error}"
            ) from None

    return run  # type: ignore[return-value]


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(json_lines=not settings.development)
    return settings


def _who() -> str:
    """The OS user running the command (and who became it through sudo)."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = f"uid {os.geteuid()}"
    invoker = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {invoker})" if invoker and invoker != name else name


def _audit(action: str, **ids: Any) -> None:
    """One JSON line on stderr for a change: who, what, when, which ids. Never a secret."""
    entry = {
        "time": rfc3339(time.time()),
        "level": "INFO",
        "logger": "issuer.audit",
        "message": action,
        "who": _who(),
        "host": socket.gethostname(),
        **ids,
    }
    click.echo(json.dumps(entry, ensure_ascii=False), err=True)


def _service(app: Flask) -> AuthService:
    service: AuthService = app.extensions["issuer"]
    return service


def _keys(settings: Settings) -> tuple[KeyDirectory, KeyPolicy]:
    return KeyDirectory(settings.keys_dir), key_policy(settings)


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else rfc3339(timestamp)


def _await_workers(
    directory: KeyDirectory, generation: int, wait: float, *, fail: bool = True
) -> list[WorkerReport]:
    """Wait (at most ``wait`` seconds) until every serving process reports that it serves
    ``generation`` of the manifest; say which did not.

    A process that has not reported it is one that has served no request since the change
    (each looks at the directory before serving once its check interval has passed), so it
    picks the change up before its next request. One that reports it cannot read the
    directory serves no keys at all: that fails the command.
    """
    here, me = socket.gethostname(), os.getpid()
    deadline = time.monotonic() + wait
    while True:
        reports = [
            report
            for report in directory.reports()
            if not report.dead and (report.host, report.pid) != (here, me)
        ]
        behind = [r for r in reports if r.generation < generation or r.failure is not None]
        if not behind or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    done = len(reports) - len(behind)
    if not behind:
        click.echo(f"picked up by every serving process that reports here ({done})")
        return []
    failing = [report for report in behind if report.failure is not None]
    for report in behind:
        where = f"pid {report.pid} on {report.host}"
        if report.failure is not None:
            click.echo(f"NOT picked up: {where} cannot read the key directory: {report.failure}")
        else:
            click.echo(
                f"not confirmed: {where} has not looked since (it does before its next "
                "request, or it has stopped)"
            )
    click.echo(f"picked up by {done} of {len(reports)} serving processes")
    if failing and fail:
        raise click.ClickException(
            f"{len(failing)} serving processes cannot read the key directory and serve no keys"
        )
    return behind


def _changing_keys(settings: Settings) -> tuple[KeyDirectory, KeyPolicy]:
    directory, policy = _keys(settings)
    directory.check_owner()
    return directory, policy


wait_option = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=WORKER_WAIT,
    show_default=True,
    help="Seconds to wait for every serving process to pick the change up.",
)


@click.group()
def main() -> None:
    """Operate issuer: run it in development, migrate its database, manage its keys."""


@main.command("dev")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def dev(host: str, port: int) -> None:
    """Run development mode: the WeChat emulator, text logs, a walkthrough to paste."""
    if os.environ.setdefault("ISSUER_ENV", "development") != "development":
        raise click.ClickException("ISSUER_ENV: `issuer dev` runs only in development mode")
    from .config import is_loopback

    if not is_loopback(host):
        # The emulator mints login codes for anyone who reaches it.
        raise click.ClickException(
            f"--host: `issuer dev` binds loopback addresses only (127.0.0.1, ::1, localhost), "
            f"not {host!r}; production runs under gunicorn"
        )
    os.environ.setdefault("ISSUER_URL", f"http://{f'[{host}]' if ':' in host else host}:{port}")
    try:
        app = create_app(entry="dev")
    except StartupError as error:
        raise click.ClickException(str(error)) from None
    from werkzeug.serving import run_simple

    click.echo(WALKTHROUGH.format(url=app.extensions["issuer"].settings.url.rstrip("/")))
    click.echo(f"Serving on http://{host}:{port} (Ctrl-C stops it).")
    sys.stdout.flush()
    # Werkzeug's request log prints whole URLs, and the emulator's jscode2session URL carries
    # the app secret: issuer's own access log (paths only) is the one to read.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Threaded: a login calls the emulator, which this same server answers.
    run_simple(host, port, app, threaded=True, use_reloader=False)


@main.group("keys")
def keys() -> None:
    """Signing keys: init, list, rotate, revoke."""


@keys.command("init")
@_one_line
def keys_init() -> None:
    """Create the keys of a new deployment (start-up does it too, beside an empty database)."""
    settings = _settings()
    directory, policy = _changing_keys(settings)
    if directory.holds_keys():
        raise click.ClickException(f"ISSUER_KEYS_DIR: {directory.path} already holds keys")
    ring = directory.load(policy, data_key=settings.data_key)
    _audit(
        "keys init",
        keys_dir=str(directory.path),
        kid=ring.active.kid,
        data_kid=ring.active_data_kid,
    )
    click.echo(f"created signing key {ring.active.kid} and data key {ring.active_data_kid}")


@keys.command("list")
@_one_line
def keys_list() -> None:
    """Every signing key with its state and times (reads only)."""
    directory, policy = _keys(_settings())
    statuses = directory.statuses(policy)
    click.echo(f"{'kid':<44} {'alg':<6} {'state':<8} {'signs from':<21} {'unpublished at':<21}")
    for status in sorted(statuses, key=lambda item: item.activates_at):
        until = status.revoked_at if status.state == "revoked" else status.unpublish_at
        click.echo(
            f"{status.kid:<44} {status.alg:<6} {status.state:<8} "
            f"{_when(status.activates_at):<21} {_when(until):<21}"
        )


@keys.command("rotate")
@click.option(
    "--now",
    "immediately",
    is_flag=True,
    help="Sign with the new key at once (emergencies): verifiers refetch on its kid.",
)
@wait_option
@_one_line
def keys_rotate(immediately: bool, wait: float) -> None:
    """Publish a new next key; it signs once verifiers' caches hold it."""
    directory, policy = _changing_keys(_settings())
    kid = directory.rotate(policy, immediately=immediately)
    status = next(item for item in directory.statuses(policy) if item.kid == kid)
    _audit("keys rotate", kid=kid, now=immediately, signs_from=rfc3339(status.activates_at))
    if immediately:
        click.echo(f"new key {kid} signs from now")
    else:
        click.echo(f"new key {kid} published; it signs from {rfc3339(status.activates_at)}")
    _await_workers(directory, directory.generation(), wait)


# A kid is base64url and may begin with "-": take it as the argument, never as an option.
ID_ARGUMENT = {"ignore_unknown_options": True}


@keys.command("revoke", context_settings=ID_ARGUMENT)
@click.argument("kid")
@wait_option
@_one_line
def keys_revoke(kid: str, wait: float) -> None:
    """Remove KID from the JWKS and from verification at once."""
    directory, policy = _changing_keys(_settings())
    try:
        directory.revoke(kid, policy)
    except KeyError:
        raise click.ClickException(f"no published signing key has kid {kid}") from None
    active = next(item.kid for item in directory.statuses(policy) if item.state == "active")
    _audit("keys revoke", kid=kid, active=active)
    click.echo(f"key {kid} revoked; {active} signs")
    _await_workers(directory, directory.generation(), wait)


@main.group("data-key")
def data_key() -> None:
    """The data key that seals stored secrets."""


grace_option = click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=CHECK_INTERVAL + LONGEST_WRITE,
    show_default=True,
    help="Seconds after the switch before re-sealing: requests that read the old key by "
    "then have written.",
)


@data_key.command("rotate")
@wait_option
@grace_option
@_one_line
def data_key_rotate(wait: float, grace: float) -> None:
    """Make a new data key, re-seal every stored secret with it, drop unneeded old keys.

    Old keys are dropped only once every serving process has confirmed the new one and the
    grace has passed, so no row sealed meanwhile with an old key is ever lost.
    """
    settings = _settings()
    if settings.data_key is not None:
        raise click.ClickException(
            "ISSUER_DATA_KEY is set: rotate it there (add the new key, keep the old key file)"
        )
    directory, _ = _changing_keys(settings)
    service = _service(_create_app())
    previous = directory.data_key_ids()[0]
    kid = directory.add_data_key()
    switched = time.monotonic()
    _audit("data-key rotate", data_kid=kid, previous=previous)
    click.echo(f"new data key {kid}; new secrets are sealed with it")
    ring = service.keys.reload()
    _reseal_and_drop(
        service,
        directory,
        ring.generation,
        switched,
        wait,
        grace,
        # Recorded once the workers hold the key: /readyz compares the check values with
        # each worker's ring, and one a second behind must not read as "keys do not match".
        # (A crash before this is harmless: start-up records a check for every key it has.)
        then=lambda: service.store.add_data_key_check(
            kid, check_value(ring.data_keys[kid], kid), time.time()
        ),
    )


@data_key.command("drop-unused")
@wait_option
@grace_option
@_one_line
def data_key_drop_unused(wait: float, grace: float) -> None:
    """Re-seal what old data keys still seal, then drop the keys no row needs."""
    directory, _ = _changing_keys(_settings())
    service = _service(_create_app())
    ring = service.keys.reload()
    _reseal_and_drop(service, directory, ring.generation, time.monotonic(), wait, grace)


def _reseal_and_drop(
    service: AuthService,
    directory: KeyDirectory,
    generation: int,
    switched: float,
    wait: float,
    grace: float,
    then: Callable[[], None] = lambda: None,
) -> None:
    """Wait for every process to seal with the active key (then call ``then``), re-seal,
    drop unused old keys."""
    behind = _await_workers(directory, generation, wait, fail=False)
    then()
    # A process of this host that has not looked since serves nothing before it does (its
    # check interval), and what it sealed before is written within the grace. One elsewhere
    # may not see the change at all (a network filesystem caching the manifest), and one
    # that cannot read the directory may come back on the old ring: keep the old keys.
    here = socket.gethostname()
    confirmed = not any(report.failure is not None or report.host != here for report in behind)
    # A request that read the old key just before its process switched writes within this.
    time.sleep(max(0.0, switched + grace - time.monotonic()))
    report = reseal_all(service.store, service.sealer)
    click.echo(f"{report.resealed} stored secrets re-sealed")
    active = service.keys.reload().active_data_kid
    counts = service.store.sealed_kid_counts()
    unused = [old for old in directory.data_key_ids()[1] if old != active and not counts.get(old)]
    still = {old: count for old, count in counts.items() if old != active and count}
    if still:
        click.echo(f"old data keys still needed by rows written meanwhile: {still}; run it again")
    if unused and not confirmed:
        click.echo(
            f"old data keys kept: {', '.join(unused)} (not every serving process confirmed "
            "the new key); run `issuer data-key drop-unused` once they have"
        )
    elif unused:
        for old in unused:
            service.store.drop_data_key_check(old)
        directory.drop_data_keys(unused)
        _audit("data-key drop", data_kids=unused)
        click.echo(f"dropped old data keys: {', '.join(unused)}")
    if report.unreadable:
        raise click.ClickException(f"{report.unreadable} stored secrets cannot be opened")


@main.command("prune")
@_one_line
def prune() -> None:
    """Delete ended sessions (expired or revoked) and stale login code hashes."""
    _settings()
    removed = _service(_create_app()).store.prune(time.time())
    _audit("prune", **removed)
    click.echo(f"removed {removed['sessions']} sessions, {removed['login_codes']} login codes")


@main.group("users")
def users() -> None:
    """Look users up, end their sessions, delete their accounts."""


@users.command("show", context_settings=ID_ARGUMENT)
@click.argument("user_id")
@_one_line
def users_show(user_id: str) -> None:
    """A user, its identities and live sessions, as JSON (no secrets; reads only)."""
    url = _settings().database_url
    store = open_store(url)  # no migration: it would create the file or the tables
    try:
        user = store.get_user(user_id)
    except StoreUnavailable as error:
        raise StoreUnavailable(_connection_failure(url) or str(error)) from None
    if user is None:
        raise click.ClickException(f"no user {user_id}")
    shown = {
        "user_id": user.id,
        "unionid": user.unionid,
        "created_at": rfc3339(user.created_at),
        "merged_into": user.merged_into,
        "nickname": user.nickname,
        "identities": [
            {
                "appid": identity.appid,
                "openid": identity.openid,
                "created_at": rfc3339(identity.created_at),
                "has_phone": identity.phone is not None,
            }
            for identity in store.identities_of(user.id)
        ],
        "live_sessions": store.live_sessions(user.id, time.time()),
    }
    click.echo(json.dumps(shown, indent=2, ensure_ascii=False))


def _connection_failure(url: str) -> str | None:
    """Why PostgreSQL refuses a connection, in one line without the password; None when it
    accepts one (or for SQLite). The pool only says it got no connection in time."""
    if not url.startswith(("postgresql://", "postgres://")):
        return None
    import psycopg

    from .store.postgres import CONNECT_TIMEOUT_SECONDS, parse_url, redact, url_passwords

    params = parse_url(url)
    try:
        psycopg.connect(**{"connect_timeout": CONNECT_TIMEOUT_SECONDS, **params}).close()
    except psycopg.Error as error:
        return f"PostgreSQL: {redact(str(error), url_passwords(url, params))}"
    return None


@users.command("revoke", context_settings=ID_ARGUMENT)
@click.argument("user_id")
@_one_line
def users_revoke(user_id: str) -> None:
    """End every session of the user: its refresh tokens stop working at once."""
    store = _service(_create_app()).store
    if store.get_user(user_id) is None:
        raise click.ClickException(f"no user {user_id}")
    ended = store.revoke_user_sessions(user_id, time.time())
    _audit("users revoke", user_id=user_id, sessions=ended)
    click.echo(f"ended {ended} sessions of {user_id}")


@users.command("delete", context_settings=ID_ARGUMENT)
@click.argument("user_id")
@_one_line
def users_delete(user_id: str) -> None:
    """Delete the account and everything personal of it (sessions, identities, phone,
    profile, avatar, users merged into it); the same WeChat user logging in later is new."""
    store = _service(_create_app()).store
    if not store.delete_user(user_id):
        raise click.ClickException(f"no user {user_id}")
    _audit("users delete", user_id=user_id)
    click.echo(f"deleted {user_id} and everything personal of it")


@main.group("db")
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@_one_line
def db_upgrade() -> None:
    """Migrate the database to the newest schema (start-up does this too)."""
    version = _service(_create_app()).store.migrate()
    _audit("db upgrade", schema_version=version)
    click.echo(f"database schema is at version {version}")
