"""The ``issuer`` command: Flask's CLI with the app's configuration, plus operator commands.

``issuer dev`` runs development mode with the WeChat emulator and prints a walkthrough;
``keys list|rotate|revoke``, ``data-key rotate``, ``db upgrade``, ``prune`` and
``users show`` operate a deployment (SPEC §9). Every command exits non-zero with one clear
line when it fails or the configuration or keys are unusable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext

from . import create_app
from .errors import StartupError
from .keys import KeyManager
from .keys.reseal import reseal_all
from .service import AuthService, rfc3339

WALKTHROUGH = """\
issuer is running in development mode, with a WeChat emulator at {url}/_wechat.
Try the whole flow from another terminal:

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

  # The public keys downstream services verify access tokens with
  curl -s {url}/.well-known/jwks.json
"""


def _create_app() -> Flask:
    try:
        return create_app()
    except StartupError as error:
        raise click.ClickException(str(error)) from None


@click.group(
    cls=FlaskGroup,
    create_app=_create_app,
    add_version_option=False,
    load_dotenv=False,
    set_debug_flag=False,
)
def main() -> None:
    """Operate issuer: run it, migrate its database, manage its keys."""


@main.command("dev", with_appcontext=False)
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


def _service() -> AuthService:
    service: AuthService = current_app.extensions["issuer"]
    return service


def _manager() -> KeyManager:
    return _service().keys


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else rfc3339(timestamp)


@main.group("keys")
def keys() -> None:
    """Signing keys: list, rotate, revoke."""


@keys.command("list")
@with_appcontext
def keys_list() -> None:
    """Every signing key with its state and times."""
    manager = _manager()
    statuses = manager.directory.statuses(manager.policy)
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
@with_appcontext
def keys_rotate(immediately: bool) -> None:
    """Publish a new next key; it signs once verifiers' caches hold it."""
    manager = _manager()
    kid = manager.directory.rotate(manager.policy, immediately=immediately)
    if immediately:
        click.echo(f"new key {kid} signs from now")
    else:
        status = next(
            item for item in manager.directory.statuses(manager.policy) if item.kid == kid
        )
        click.echo(f"new key {kid} published; it signs from {rfc3339(status.activates_at)}")


# A kid is base64url and may begin with "-": take it as the argument, never as an option.
ID_ARGUMENT = {"ignore_unknown_options": True}


@keys.command("revoke", context_settings=ID_ARGUMENT)
@click.argument("kid")
@with_appcontext
def keys_revoke(kid: str) -> None:
    """Remove KID from the JWKS and from verification at once."""
    manager = _manager()
    try:
        manager.directory.revoke(kid, manager.policy)
    except KeyError:
        raise click.ClickException(f"no published signing key has kid {kid}") from None
    ring = manager.reload()
    click.echo(f"key {kid} revoked; {ring.active.kid} signs")


@main.group("data-key")
def data_key() -> None:
    """The data key that seals stored secrets."""


@data_key.command("rotate")
@with_appcontext
def data_key_rotate() -> None:
    """Make a new data key, re-seal every stored secret with it, drop unneeded old keys."""
    service = _service()
    if service.settings.data_key is not None:
        raise click.ClickException(
            "ISSUER_DATA_KEY is set: rotate it there (add the new key, keep the old key file)"
        )
    manager = _manager()
    kid = manager.directory.add_data_key()
    manager.reload()
    report = reseal_all(service.store, service.sealer)
    unneeded = [
        old
        for old in manager.directory.data_key_ids()[1]
        if old != kid and report.remaining.get(old, 0) == 0
    ]
    manager.directory.drop_data_keys(unneeded)
    click.echo(f"new data key {kid}; {report.resealed} stored secrets re-sealed")
    still = {old: count for old, count in report.remaining.items() if old != kid and count}
    if still or report.unreadable:
        click.echo(f"old keys still needed by rows written meanwhile: {still}; run it again")
        if report.unreadable:
            raise click.ClickException(f"{report.unreadable} stored secrets cannot be opened")


@main.command("prune")
@with_appcontext
def prune() -> None:
    """Delete ended sessions (expired or revoked) and stale login code hashes."""
    removed = _service().store.prune(time.time())
    click.echo(f"removed {removed['sessions']} sessions, {removed['login_codes']} login codes")


@main.group("users")
def users() -> None:
    """Look users up."""


@users.command("show", context_settings=ID_ARGUMENT)
@click.argument("user_id")
@with_appcontext
def users_show(user_id: str) -> None:
    """A user, its identities and live sessions, as JSON (no secrets)."""
    store = _service().store
    user = store.get_user(user_id)
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


@main.group("db")
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@with_appcontext
def db_upgrade() -> None:
    """Migrate the database to the newest schema (start-up does this too)."""
    version = current_app.extensions["issuer"].store.migrate()
    click.echo(f"database schema is at version {version}")
