"""The ``issuer`` command: Flask's CLI with the app's configuration, plus operator commands.

``issuer dev`` runs development mode with the WeChat emulator and prints a walkthrough;
``issuer db upgrade`` migrates the database. Every command exits non-zero with one clear line
when the configuration or the keys are unusable.
"""

from __future__ import annotations

import os
import sys

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext

from . import create_app
from .config import StartupError

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
    os.environ.setdefault("ISSUER_URL", f"http://{host}:{port}")
    app = _create_app()
    from werkzeug.serving import run_simple

    click.echo(WALKTHROUGH.format(url=app.extensions["issuer"].settings.url.rstrip("/")))
    sys.stdout.flush()
    # Threaded: a login calls the emulator, which this same server answers.
    run_simple(host, port, app, threaded=True, use_reloader=False)


@main.group("db")
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@with_appcontext
def db_upgrade() -> None:
    """Migrate the database to the newest schema (start-up does this too)."""
    version = current_app.extensions["issuer"].store.migrate()
    click.echo(f"database schema is at version {version}")
