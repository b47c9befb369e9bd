"""A throwaway PostgreSQL for the tests, and backend-neutral ways to look into a test database.

:class:`PostgresServer` runs ``initdb`` into a temporary directory and starts ``postgres`` on
a free loopback port, its unix socket in that directory, ``fsync=off`` (nothing here has to
survive a power cut); it is stopped and deleted afterwards. The binaries come from PATH, else
from the newest ``/usr/lib/postgresql/*/bin``; when there are none the test fails (never
skips) saying that ``make test`` installs them. PostgreSQL refuses to run as root, so as root
the server commands run as the ``postgres`` system user, which owns the temporary directory.

The server has a superuser ``postgres`` (trusted, over the unix socket only: the fixtures'
own door) and a login role ``issuer`` with a password, owning the database ``issuer``; issuer
connects as that role over TCP, with the password in the URL as a deployment would. Each test
gets an empty schema of its own (``CREATE SCHEMA`` costs well under a millisecond, ``CREATE
DATABASE`` about 100 ms) selected by the URL's ``options=-csearch_path=…``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from psycopg import sql

from issuer.store.postgres import close_all
from tests.processes import free_port

ROLE = "issuer"
DATABASE = "issuer"
COMMAND_TIMEOUT = 60
# Superuser "postgres" trusted on the unix socket only; TCP logins need their password.
INITDB_OPTIONS = (
    "-U",
    "postgres",
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--no-sync",
    "--no-locale",
    "--encoding=UTF8",
)
WAIT = ("-w", "-t", "30")
MISSING = "PostgreSQL's initdb, pg_ctl and postgres are not installed; make test installs them"


def postgres_bin() -> Path:
    """The directory of ``initdb``/``pg_ctl``/``postgres``: PATH first, else the newest
    ``/usr/lib/postgresql/*/bin``. Fails the test when there is none."""
    found = [shutil.which(name) for name in ("initdb", "pg_ctl", "postgres")]
    if all(found):
        return Path(str(found[0])).resolve().parent
    versions = sorted(
        (path for path in Path("/usr/lib/postgresql").glob("*/bin") if (path / "initdb").exists()),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.name)] or [0],
    )
    if not versions:
        pytest.fail(MISSING)
    return versions[-1]


class PostgresServer:
    """One throwaway cluster: ``start()``, ``stop()`` and ``start()`` again, ``delete()``."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="issuer-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.password = f"pw-{secrets.token_hex(8)}/@:%"  # URL-special: it must be quoted
        self.user: pwd.struct_passwd | None = None
        if os.getuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root needs the postgres system user; " + MISSING)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), *INITDB_OPTIONS)
        self.start()
        with self.admin() as db:
            db.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)
                )
            )
            db.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(ROLE)
                )
            )

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.user is not None:
            # PostgreSQL refuses to run as root.
            if shutil.which("runuser"):
                command = ["runuser", "-u", "postgres", "--", *command]
            else:
                command = [
                    "setpriv",
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    *command,
                ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{program} failed:\n{done.stdout}{done.stderr}\n{log}")

    def start(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "full_page_writes": "off",
        }
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, *WAIT, "start"
        )

    def stop(self) -> None:
        """A fast shutdown: the server ends every session (as an operator's restart does)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", *WAIT, "stop")

    def delete(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """A superuser connection over the unix socket (autocommit)."""
        return psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def url(self, schema: str | None = None, *, password: str | None = None, **options: str) -> str:
        """issuer's URL: role ``issuer`` over TCP, the schema and any ``-c`` options given."""
        settings = {**({"search_path": schema} if schema else {}), **options}
        query = ""
        if settings:
            value = " ".join(f"-c{name}={setting}" for name, setting in settings.items())
            query = "?options=" + quote(value, safe="")
        secret = quote(self.password if password is None else password, safe="")
        return f"postgresql://{ROLE}:{secret}@127.0.0.1:{self.port}/{DATABASE}{query}"

    @contextlib.contextmanager
    def fresh_schema(self) -> Iterator[str]:
        """The URL of a new, empty schema; dropped (with every pool on it closed) after."""
        schema = f"t_{secrets.token_hex(6)}"
        with self.admin(DATABASE) as db:
            db.execute(
                sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                    sql.Identifier(schema), sql.Identifier(ROLE)
                )
            )
        try:
            yield self.url(schema)
        finally:
            close_all()
            with self.admin(DATABASE) as db:
                db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))

    def stored_bytes(self) -> bytes:
        """Every byte the cluster holds on disk for the test database: its heap and index
        files and the write-ahead log (where a just-committed row surely is)."""
        with self.admin(DATABASE) as db:
            row = db.execute("SELECT oid FROM pg_database WHERE datname = %s", (DATABASE,))
            oid = row.fetchone()
        assert oid is not None
        files = [*(self.data / "base" / str(oid[0])).iterdir(), *(self.data / "pg_wal").iterdir()]
        return b"".join(path.read_bytes() for path in sorted(files) if path.is_file())


# Running servers by port, so that a test holding only a URL can look into its files.
SERVERS: dict[int, PostgresServer] = {}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL, started on first use."""
    server = PostgresServer()
    SERVERS[server.port] = server
    yield server
    close_all()
    del SERVERS[server.port]
    server.delete()


# -- looking into a test database, whichever backend it is


def query(database_url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Run ``?``-style SQL on a connection of the test's own; the rows."""
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            return db.execute(statement, params).fetchall()
    with psycopg.connect(database_url, autocommit=True) as db:
        cursor = db.execute(statement.replace("?", "%s"), params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def stored_bytes(database_url: str) -> bytes:
    """What the database holds on disk: the SQLite file with its WAL and shared memory, or
    the PostgreSQL test database's files and the cluster's WAL."""
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        return b"".join(
            item.read_bytes()
            for item in sorted(path.parent.glob(path.name + "*"))
            if item.is_file()
        )
    port = urlsplit(database_url).port
    assert port in SERVERS, database_url
    return SERVERS[port].stored_bytes()
