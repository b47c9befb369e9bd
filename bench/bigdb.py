"""A SQLite database of a million users, each with one WeChat identity and one live login
session, for the refresh-at-scale scenario. Built once and cached outside the repository.

The schema is the store's own: an empty file is migrated with
``SQLiteStore.from_url(...).migrate()``, and the rows go in with plain SQL in one transaction
(journal off while building: a crash leaves only a temporary file, deleted on the next try).
The cache file's name carries the schema version and a hash of the schema's SQL, so a
migration added later, or a changed table, builds a new file instead of reusing a stale one.

The filler rows look like issuer's: the identities are the WeChat stand-in's test users
0 .. users-1 (so the bench can log them in again, as returning users), random ids of the
same lengths, sealed blobs of the same
sizes (random bytes under the id of :data:`FILLER_DATA_KEY`, a fixed key the bench hands the
issuer that serves this file: issuer refuses to start on data sealed with keys it lacks, and
nothing ever opens these blobs), sessions expiring 30 days after the build. Issuer's own
sessions for the run are made by real logins.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from issuer.keys.ring import data_key_id
from issuer.store.sqlite import SQLiteStore

from .wechat import identity

BATCH = 50_000
# The filler's identities are the WeChat stand-in's test users 0 .. users-1 (named in the
# cache file's name: a file of random identities from before is not reused).
IDENTITIES = "testusers-keyed"
# Not a secret: it seals only random filler, in a file outside the repository.
FILLER_DATA_KEY = hashlib.sha256(b"issuer bench filler data key").digest()
FILLER_KID = data_key_id(FILLER_DATA_KEY)
SESSION_TTL = 30 * 86_400


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "issuer-bench"


def cached_database(
    cache_dir: Path, users: int, appid: str, progress: Callable[[str], None] = print
) -> Path:
    """The path of a cached database holding ``users`` filler users; built when missing.

    :raises RuntimeError: the store's tables no longer have the columns filled here.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = cache_dir / f".building-{os.getpid()}.db"
    _remove(building)
    try:
        store = SQLiteStore.from_url(f"sqlite:///{building}")
        try:
            store.migrate()
        finally:
            store.close()
        final = cache_dir / f"issuer-{users}-users-{IDENTITIES}-{_schema_tag(building)}.db"
        if final.exists():
            return final
        for stale in cache_dir.glob(f"issuer-{users}-users-*.db"):
            _remove(stale)  # an older schema's
        started = time.monotonic()
        progress(f"building a database of {users:,} users in {cache_dir} (once; cached) ...")
        _fill(building, users, appid)
        progress(f"built in {time.monotonic() - started:.0f} s: {final}")
        os.replace(building, final)
        return final
    finally:
        _remove(building)


def _schema_tag(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        schema = "\n".join(
            row[0]
            for row in db.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
            )
        )
    return f"v{version}-{hashlib.sha256(schema.encode()).hexdigest()[:12]}"


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _text(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Random bytes per row: user id, openid, unionid, sealed session_key, session id, sealed
# session secret (a sealed value is a 12-byte nonce + the ciphertext + a 16-byte tag).
ROW_LAYOUT = (16, 21, 21, 12 + 24 + 16, 16, 12 + 32 + 16)


Rows = list[tuple[object, ...]]


def _rows(users: int, appid: str, now: float) -> Iterator[tuple[Rows, Rows, Rows]]:
    """Batches of (users, identities, sessions) rows."""
    row_bytes = sum(ROW_LAYOUT)
    for start in range(0, users, BATCH):
        count = min(users, start + BATCH) - start
        pool = memoryview(os.urandom(count * row_bytes))  # one read per batch, not per value
        user_rows: Rows = []
        identity_rows: Rows = []
        session_rows: Rows = []
        for row in range(count):
            offset, fields = row * row_bytes, []
            for size in ROW_LAYOUT:
                fields.append(bytes(pool[offset : offset + size]))
                offset += size
            user_bytes, _, _, session_key, sid_bytes, secret = fields
            # Test user number n of the WeChat stand-in: a code minted for n logs in as a
            # returning user of this database.
            openid, unionid = identity(appid, start + row)
            user_id = "usr_" + _text(user_bytes)
            user_rows.append((user_id, unionid, now))
            identity_rows.append((appid, openid, user_id, session_key, FILLER_KID, now, now))
            session_rows.append(
                (
                    _text(sid_bytes),
                    user_id,
                    appid,
                    openid,
                    secret,
                    FILLER_KID,
                    now,
                    now + SESSION_TTL,
                )
            )
        yield user_rows, identity_rows, session_rows


def _fill(path: Path, users: int, appid: str) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-262144")  # 256 MiB: the indexes stay in memory
        db.execute("BEGIN")
        try:
            for user_rows, identity_rows, session_rows in _rows(users, appid, time.time()):
                db.executemany(
                    "INSERT INTO users (id, unionid, created_at) VALUES (?, ?, ?)", user_rows
                )
                db.executemany(
                    """INSERT INTO identities (appid, openid, user_id, session_key,
                    session_key_kid, session_key_updated_at, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)""",
                    identity_rows,
                )
                db.executemany(
                    """INSERT INTO sessions (id, user_id, appid, openid, secret, secret_kid,
                    counter, rotated_at, created_at, expires_at)
                    VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?, ?)""",
                    session_rows,
                )
            db.execute("COMMIT")
        except sqlite3.OperationalError as error:
            raise RuntimeError(
                f"the store's schema changed ({error}): update the inserts in bench/bigdb.py"
            ) from error
        # Back to what issuer expects of its file.
        db.execute("PRAGMA journal_mode=WAL")
