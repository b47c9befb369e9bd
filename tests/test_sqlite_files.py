"""The SQLite database holds sealed secrets: its directory is the service user's alone (0700)
and the database, ``-wal`` and ``-shm`` files are 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from issuer.wechat.emulator import WeChatEmulator
from tests.conftest import APPID


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o000])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_a_new_database_is_private_whatever_the_umask(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator, tmp_path: Path, umask: int
) -> None:
    assert os.umask(umask) == umask  # the fixture's umask is in force
    database = tmp_path / "instance" / "nested" / "issuer.db"
    client = app_factory(database_url=f"sqlite:///{database}").test_client()
    # A login writes: the connection this thread keeps open holds the -wal and -shm files.
    response = client.post("/auth/login", json={"code": wechat.mint_code(APPID, "filer")})
    assert response.status_code == 200, response.get_json()
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    for path in files:
        assert path.exists(), path
        assert oct(mode(path)) == oct(0o600), path
    for directory in (database.parent, database.parent.parent):
        assert oct(mode(directory)) == oct(0o700), directory


def test_an_existing_world_readable_database_is_narrowed(
    app_factory: Callable[..., Flask], tmp_path: Path
) -> None:
    database = tmp_path / "issuer.db"
    database.touch()
    os.chmod(database, 0o644)
    os.chmod(tmp_path, 0o755)
    app_factory(database_url=f"sqlite:///{database}")
    assert oct(mode(database)) == oct(0o600)
    assert oct(mode(tmp_path)) == oct(0o755)  # not made here: left as the operator made it
