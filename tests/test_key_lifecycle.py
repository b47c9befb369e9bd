"""Signing-key and data-key life cycle (SPEC §4, §9): rotation, activation, retirement,
revocation, automatic rotation, and how a running process follows changes made by another.

Unit tests pass an explicit ``now``; :class:`KeyManager` gets an injected clock. Files are
real, in tmp_path.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

import issuer.keys.directory as keys_module
from issuer import key_policy
from issuer.keys import KeyDirectory, KeyManager, KeyPolicy, KeyRing
from issuer.keys.manager import KeyRingUnavailable
from issuer.keys.reseal import reseal_all
from issuer.keys.ring import MANIFEST, PUBLISH_MARGIN, key_states
from issuer.sealing import LiveSealer, UnsealError, associated_data, phone_aad
from issuer.service import AuthService
from issuer.wechat.emulator import WeChatEmulator

from .conftest import APPID, FakeClock

T0 = 1_700_000_000.0
MAX_AGE = 300.0
LEAD = MAX_AGE + PUBLISH_MARGIN
LIFETIME = 905.0  # access token TTL + leeway
DAY = 86_400.0
POLICY = KeyPolicy("ES256", jwks_max_age=MAX_AGE, rotation_days=0, retired_lifetime=LIFETIME)


def kids(ring: KeyRing) -> set[str]:
    """The kids the ring publishes (and verifies with)."""
    published = {entry["kid"] for entry in json.loads(ring.jwks_json)["keys"]}
    assert published == {key.kid for key in ring.keys}
    return published


def state(ring: KeyRing, kid: str) -> str | None:
    key = ring.verification_key(kid)
    return None if key is None else key.state


def pem(directory: Path, kid: str) -> Path:
    return directory / f"signing-{kid}.pem"


def manifest_kids(directory: Path) -> list[str]:
    return [entry["kid"] for entry in json.loads((directory / MANIFEST).read_bytes())["signing"]]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def keys(directory: Path) -> KeyDirectory:
    return KeyDirectory(directory)


@pytest.fixture
def first(keys: KeyDirectory) -> str:
    """The kid of the key made on first start, at T0."""
    return keys.load(POLICY, now=T0).active.kid


# -- rotate()


def test_rotated_key_is_published_at_once_and_signs_after_the_lead(
    keys: KeyDirectory, directory: Path, first: str
) -> None:
    t1 = T0 + 1000
    new = keys.rotate(POLICY, now=t1)
    assert new != first

    ring = keys.load(POLICY, now=t1)
    assert kids(ring) == {first, new}
    assert state(ring, new) == "next"
    assert ring.active.kid == first
    assert ring.verification_key(new).activates_at == t1 + MAX_AGE + 60  # type: ignore[union-attr]
    assert ring.valid_until == t1 + LEAD

    # Not one moment early.
    assert keys.load(POLICY, now=t1 + LEAD - 0.001).active.kid == first

    # From exactly now + max-age + margin it signs; the old key is retired and published.
    at_switch = keys.load(POLICY, now=t1 + LEAD)
    assert at_switch.active.kid == new
    assert state(at_switch, first) == "retired"
    assert at_switch.verification_key(first).retired_at == t1 + LEAD  # type: ignore[union-attr]
    assert kids(at_switch) == {first, new}
    assert at_switch.valid_until == t1 + LEAD + LIFETIME

    # Published until every token it signed has expired, then dropped.
    last = keys.load(POLICY, now=t1 + LEAD + LIFETIME - 0.001)
    assert kids(last) == {first, new}
    gone = keys.load(POLICY, now=t1 + LEAD + LIFETIME)
    assert kids(gone) == {new}
    assert gone.verification_key(first) is None
    # The load that saw it expire forgot it and deleted its file: an expired key can never
    # be published again, whatever is revoked later.
    states = {
        status.kid: status.state for status in keys.statuses(POLICY, now=t1 + LEAD + LIFETIME)
    }
    assert states == {new: "active"}
    assert not pem(directory, first).exists()
    assert manifest_kids(directory) == [new]
    third = keys.rotate(POLICY, now=t1 + LEAD + LIFETIME + 1)
    assert manifest_kids(directory) == [new, third]


def test_second_rotate_before_activation_replaces_the_next_key(
    keys: KeyDirectory, directory: Path, first: str
) -> None:
    second = keys.rotate(POLICY, now=T0 + 10)
    third = keys.rotate(POLICY, now=T0 + 20)
    assert not pem(directory, second).exists()
    assert pem(directory, third).exists()
    assert manifest_kids(directory) == [first, third]

    ring = keys.load(POLICY, now=T0 + 30)
    assert kids(ring) == {first, third}
    assert ring.active.kid == first
    assert ring.verification_key(third).activates_at == T0 + 20 + LEAD  # type: ignore[union-attr]
    assert keys.load(POLICY, now=T0 + 20 + LEAD).active.kid == third


def test_rotate_immediately_signs_at_once_and_retires_the_previous_key(
    keys: KeyDirectory, first: str
) -> None:
    t1 = T0 + 500
    new = keys.rotate(POLICY, immediately=True, now=t1)
    ring = keys.load(POLICY, now=t1)
    assert ring.active.kid == new
    assert ring.active.activates_at == t1
    assert state(ring, first) == "retired"
    assert ring.valid_until == t1 + LIFETIME
    assert kids(keys.load(POLICY, now=t1 + LIFETIME)) == {new}


def test_rotate_immediately_replaces_a_pending_next_key(
    keys: KeyDirectory, directory: Path, first: str
) -> None:
    pending = keys.rotate(POLICY, now=T0 + 10)
    urgent = keys.rotate(POLICY, immediately=True, now=T0 + 20)
    ring = keys.load(POLICY, now=T0 + 20)
    assert ring.active.kid == urgent
    assert kids(ring) == {first, urgent}
    assert not pem(directory, pending).exists()


# -- revoke()


def test_revoking_the_next_key_unpublishes_it_at_once(
    keys: KeyDirectory, directory: Path, first: str
) -> None:
    upcoming = keys.rotate(POLICY, now=T0 + 10)
    keys.revoke(upcoming, POLICY, now=T0 + 20)
    ring = keys.load(POLICY, now=T0 + 20)
    assert kids(ring) == {first}
    assert ring.active.kid == first
    assert not pem(directory, upcoming).exists()
    # It never comes back, not even at its planned activation.
    assert kids(keys.load(POLICY, now=T0 + 10 + LEAD + 1)) == {first}
    states = {status.kid: status.state for status in keys.statuses(POLICY, now=T0 + 30)}
    assert states == {first: "active", upcoming: "revoked"}


def test_revoking_a_retired_key_unpublishes_it_at_once(
    keys: KeyDirectory, directory: Path, first: str
) -> None:
    new = keys.rotate(POLICY, immediately=True, now=T0 + 10)
    assert state(keys.load(POLICY, now=T0 + 20), first) == "retired"
    keys.revoke(first, POLICY, now=T0 + 20)
    ring = keys.load(POLICY, now=T0 + 20)
    assert kids(ring) == {new}
    assert ring.verification_key(first) is None
    assert not pem(directory, first).exists()


def test_revoking_the_active_key_promotes_the_next_key_at_once(
    keys: KeyDirectory, directory: Path, first: str
) -> None:
    upcoming = keys.rotate(POLICY, now=T0 + 10)
    keys.revoke(first, POLICY, now=T0 + 20)
    ring = keys.load(POLICY, now=T0 + 20)
    assert ring.active.kid == upcoming
    assert ring.active.activates_at == T0 + 20
    assert kids(ring) == {upcoming}
    assert not pem(directory, first).exists()
    assert pem(directory, upcoming).exists()


def test_revoking_the_only_key_makes_a_new_one_that_signs_at_once(
    keys: KeyDirectory, directory: Path, first: str
) -> None:
    keys.revoke(first, POLICY, now=T0 + 20)
    ring = keys.load(POLICY, now=T0 + 20)
    assert ring.active.kid != first
    assert ring.active.activates_at == T0 + 20
    assert kids(ring) == {ring.active.kid}
    assert not pem(directory, first).exists()


def test_revoking_an_unknown_or_revoked_kid_is_a_key_error(
    keys: KeyDirectory, directory: Path, first: str
) -> None:
    before = (directory / MANIFEST).read_bytes()
    with pytest.raises(KeyError):
        keys.revoke("no-such-kid", POLICY, now=T0 + 1)
    assert (directory / MANIFEST).read_bytes() == before
    upcoming = keys.rotate(POLICY, now=T0 + 2)
    keys.revoke(upcoming, POLICY, now=T0 + 3)
    with pytest.raises(KeyError):
        keys.revoke(upcoming, POLICY, now=T0 + 4)


# -- a change that fails half-way (disk full, a crash) leaves a directory that still loads


def fail_manifest_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every write of the manifest fails, as a crash just before it would."""
    real = keys_module.write_secret

    def write_secret(path: Path, data: bytes, *, sync: bool = True) -> None:
        if path.name == MANIFEST:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, sync=sync)

    monkeypatch.setattr(keys_module, "write_secret", write_secret)


def test_failed_rotate_over_a_next_key_leaves_the_directory_loadable(
    keys: KeyDirectory, directory: Path, first: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upcoming = keys.rotate(POLICY, now=T0 + 10)
    fail_manifest_writes(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        keys.rotate(POLICY, now=T0 + 20)
    monkeypatch.undo()

    # The manifest still names the next key, so its file must still be there.
    ring = KeyDirectory(directory).load(POLICY, now=T0 + 30)
    assert kids(ring) == {first, upcoming}


def test_revoking_the_active_key_never_brings_back_a_key_still_in_the_manifest(
    keys: KeyDirectory, directory: Path, first: str
) -> None:
    """The reported case: a retired key past its lifetime is still in the manifest (no process
    loaded the directory since), then the active key is revoked."""
    second = keys.rotate(POLICY, immediately=True, now=T0 + 10)
    later = T0 + 10 + LIFETIME + 5  # `first` expired; nothing has loaded since
    assert first in manifest_kids(directory)
    assert pem(directory, first).exists()

    keys.revoke(second, POLICY, now=later)

    ring = KeyDirectory(directory).load(POLICY, now=later)
    assert first not in kids(ring)
    assert ring.verification_key(first) is None
    assert first not in manifest_kids(directory)
    assert not pem(directory, first).exists()


def test_a_failed_cleanup_write_still_serves_without_the_expired_key(
    keys: KeyDirectory,
    directory: Path,
    first: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    second = keys.rotate(POLICY, immediately=True, now=T0 + 10)
    fail_manifest_writes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="issuer.keys"):
        ring = KeyDirectory(directory).load(POLICY, now=T0 + 10 + LIFETIME + 5)
    assert kids(ring) == {second}
    assert "No space left" in caplog.text


@pytest.mark.parametrize("which", ["next", "active"])
def test_failed_revoke_leaves_the_directory_loadable(
    keys: KeyDirectory, directory: Path, first: str, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    upcoming = keys.rotate(POLICY, now=T0 + 10)
    fail_manifest_writes(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        keys.revoke(upcoming if which == "next" else first, POLICY, now=T0 + 20)
    monkeypatch.undo()

    # Nothing was revoked, and every key the manifest names can still be read.
    ring = KeyDirectory(directory).load(POLICY, now=T0 + 30)
    assert kids(ring) == {first, upcoming}
    assert ring.active.kid == first


def test_key_states_from_entries_alone() -> None:
    entries: list[dict[str, Any]] = [
        {"kid": "a", "alg": "ES256", "created_at": T0, "activates_at": T0},
        {"kid": "b", "alg": "ES256", "created_at": T0 + 1, "activates_at": T0 + 100},
        {"kid": "c", "alg": "ES256", "created_at": T0 + 2, "activates_at": T0 + 500},
        {
            "kid": "x",
            "alg": "ES256",
            "created_at": T0 + 3,
            "activates_at": T0,
            "revoked_at": T0 + 3,
        },
    ]
    at = {s.kid: s for s in key_states(entries, T0 + 200, LIFETIME)}
    assert {kid: s.state for kid, s in at.items()} == {
        "a": "retired",
        "b": "active",
        "c": "next",
        "x": "revoked",
    }
    assert at["a"].retired_at == T0 + 100
    assert at["a"].unpublish_at == T0 + 100 + LIFETIME
    assert at["x"].revoked_at == T0 + 3
    later = {s.kid: s.state for s in key_states(entries, T0 + 100 + LIFETIME, LIFETIME)}
    assert later == {"a": "expired", "b": "retired", "c": "active", "x": "revoked"}


# -- automatic rotation


def test_automatic_rotation_announces_the_next_key_one_lead_ahead(
    keys: KeyDirectory, directory: Path
) -> None:
    daily = KeyPolicy("ES256", jwks_max_age=MAX_AGE, rotation_days=1, retired_lifetime=LIFETIME)
    first = keys.load(daily, now=T0).active.kid

    before = keys.load(daily, now=T0 + DAY - LEAD - 1)
    assert kids(before) == {first}
    assert before.valid_until == T0 + DAY - LEAD

    due = keys.load(daily, now=T0 + DAY - LEAD)
    assert len(due.keys) == 2
    (upcoming,) = (key for key in due.keys if key.state == "next")
    assert upcoming.activates_at == T0 + DAY
    assert due.active.kid == first
    written = (directory / MANIFEST).read_bytes()

    # Loading again (this or another process) adds no second one.
    again = keys.load(daily, now=T0 + DAY - LEAD + 5)
    assert kids(again) == kids(due)
    assert kids(KeyDirectory(directory).load(daily, now=T0 + DAY - 1)) == kids(due)
    assert (directory / MANIFEST).read_bytes() == written

    switched = keys.load(daily, now=T0 + DAY)
    assert switched.active.kid == upcoming.kid
    assert state(switched, first) == "retired"


def test_automatic_rotation_after_a_long_stop_still_publishes_before_signing(
    keys: KeyDirectory,
) -> None:
    daily = KeyPolicy("ES256", jwks_max_age=MAX_AGE, rotation_days=1, retired_lifetime=LIFETIME)
    first = keys.load(daily, now=T0).active.kid
    late = T0 + 3 * DAY
    ring = keys.load(daily, now=late)
    assert ring.active.kid == first
    (upcoming,) = (key for key in ring.keys if key.state == "next")
    assert upcoming.activates_at == late + LEAD


def test_automatic_rotation_with_rotation_off_never_adds_a_key(keys: KeyDirectory) -> None:
    first = keys.load(POLICY, now=T0).active.kid
    ring = keys.load(POLICY, now=T0 + 400 * DAY)
    assert kids(ring) == {first}
    assert ring.valid_until == float("inf")


# -- KeyManager: one process following the directory


def manager(directory: Path, clock: FakeClock, **options: Any) -> KeyManager:
    options.setdefault("check_interval", 0)
    return KeyManager(KeyDirectory(directory), POLICY, clock=clock, **options)


def test_manager_sees_a_rotation_written_by_another_process(directory: Path) -> None:
    clock = FakeClock(T0)
    keys = manager(directory, clock)
    first = keys().active.kid

    other = KeyDirectory(directory)  # as another worker or host would
    new = other.rotate(POLICY, now=clock())
    ring = keys()
    assert kids(ring) == {first, new}
    assert state(ring, new) == "next"
    assert ring.active.kid == first

    newest = other.rotate(POLICY, immediately=True, now=clock())
    assert keys().active.kid == newest
    other.revoke(first, POLICY, now=clock())
    assert kids(keys()) == {newest}


def test_manager_reads_no_file_within_its_check_interval(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(T0)
    keys = manager(directory, clock, check_interval=3600)
    ring = keys()
    KeyDirectory(directory).rotate(POLICY, immediately=True, now=clock())

    def no_reads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the manager read the key directory within its check interval")

    monkeypatch.setattr(keys.directory, "fingerprint", no_reads)
    monkeypatch.setattr(keys.directory, "load", no_reads)
    clock.advance(10 * DAY)  # even a due clock change waits for the check interval
    for _ in range(100):
        assert keys() is ring
    monkeypatch.undo()

    assert keys.reload().active.kid != ring.active.kid


def test_manager_switches_keys_by_the_clock_without_a_file_change(directory: Path) -> None:
    clock = FakeClock(T0)
    keys = manager(directory, clock)
    first = keys().active.kid
    new = KeyDirectory(directory).rotate(POLICY, now=T0)
    assert state(keys(), new) == "next"
    written = {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}

    clock.advance(LEAD - 1)
    assert keys().active.kid == first
    clock.advance(1)
    ring = keys()
    assert ring.active.kid == new
    assert state(ring, first) == "retired"

    # Switching by the clock writes no key file...
    assert {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()} == (
        written
    )

    # ...but a key whose tokens have all expired leaves the manifest and the disk at once.
    clock.advance(LIFETIME)
    assert kids(keys()) == {new}
    assert manifest_kids(directory) == [new]
    assert not pem(directory, first).exists()


def test_manager_makes_the_automatic_rotation_when_it_is_due(directory: Path) -> None:
    clock = FakeClock(T0)
    daily = KeyPolicy("ES256", jwks_max_age=MAX_AGE, rotation_days=1, retired_lifetime=LIFETIME)
    keys = KeyManager(KeyDirectory(directory), daily, clock=clock, check_interval=0)
    first = keys().active.kid
    clock.advance(DAY - LEAD - 1)
    assert kids(keys()) == {first}
    clock.advance(1)
    (upcoming,) = (key for key in keys().keys if key.state == "next")
    assert upcoming.activates_at == T0 + DAY
    clock.advance(LEAD)
    assert keys().active.kid == upcoming.kid


def test_manager_fails_closed_when_the_manifest_turns_corrupt(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    keys = manager(directory, clock)
    ring = keys()
    good = (directory / MANIFEST).read_bytes()

    # The ring it holds may carry a key that was just revoked: it serves none at all.
    (directory / MANIFEST).write_bytes(b"{half a manif")
    with caplog.at_level(logging.ERROR, logger="issuer.keys"):
        with pytest.raises(KeyRingUnavailable):
            keys()
        with pytest.raises(KeyRingUnavailable):
            keys.verification_key(ring.active.kid)
        clock.advance(LEAD)
        with pytest.raises(KeyRingUnavailable):
            keys()
    assert keys.failure is not None
    assert "corrupt" in keys.failure
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, "a broken key directory is logged once, not on every call"
    assert all(record.name == "issuer.keys" for record in errors)

    # Repaired: the manager picks the directory up again.
    (directory / MANIFEST).write_bytes(good)
    assert keys().active.kid == ring.active.kid
    assert keys.failure is None
    new = KeyDirectory(directory).rotate(POLICY, now=clock())
    assert new in kids(keys())


# -- through the app


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "app-keys"


@pytest.fixture
def app(app_factory: Callable[..., Flask], keys_dir: Path) -> Flask:
    """An app on its own keys directory that looks at it on every request."""
    app = app_factory(keys_dir=str(keys_dir))
    service(app).keys.check_interval = 0  # type: ignore[attr-defined]
    return app


def service(app: Flask) -> AuthService:
    found: AuthService = app.extensions["issuer"]
    return found


def policy_of(app: Flask) -> KeyPolicy:
    return key_policy(service(app).settings)


def me(client: FlaskClient, token: str) -> Any:
    return client.get("/me", headers={"Authorization": f"Bearer {token}"})


def test_jwks_shows_a_rotation_by_another_process_within_the_check_interval(
    app_factory: Callable[..., Flask], keys_dir: Path, clock: FakeClock
) -> None:
    app = app_factory(keys_dir=str(keys_dir))  # the default check interval: one second
    client = app.test_client()
    before = client.get("/.well-known/jwks.json")
    assert len(before.get_json()["keys"]) == 1

    new = KeyDirectory(keys_dir).rotate(policy_of(app), now=clock())
    started = time.monotonic()
    while True:
        after = client.get("/.well-known/jwks.json")
        if len(after.get_json()["keys"]) == 2 or time.monotonic() - started > 3:
            break
        time.sleep(0.05)
    assert time.monotonic() - started < 2.5
    assert new in {entry["kid"] for entry in after.get_json()["keys"]}
    assert after.headers["ETag"] != before.headers["ETag"]
    assert (
        client.get(
            "/.well-known/jwks.json", headers={"If-None-Match": before.headers["ETag"]}
        ).status_code
        == 200
    )
    assert (
        client.get(
            "/.well-known/jwks.json", headers={"If-None-Match": after.headers["ETag"]}
        ).status_code
        == 304
    )


def test_tokens_signed_before_an_immediate_rotation_still_verify(
    app: Flask,
    client: FlaskClient,
    login: Callable[..., dict[str, Any]],
    keys_dir: Path,
    clock: FakeClock,
) -> None:
    old_token = login("alice")["access_token"]
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    new = KeyDirectory(keys_dir).rotate(policy_of(app), immediately=True, now=clock())

    assert me(client, old_token).status_code == 200
    new_token = login("alice")["access_token"]
    assert jwt.get_unverified_header(new_token)["kid"] == new != old_kid
    assert me(client, new_token).status_code == 200
    published = {entry["kid"] for entry in client.get("/.well-known/jwks.json").get_json()["keys"]}
    assert published == {old_kid, new}


def test_revoking_the_signing_key_rejects_its_tokens_at_once(
    app: Flask,
    client: FlaskClient,
    login: Callable[..., dict[str, Any]],
    keys_dir: Path,
    clock: FakeClock,
) -> None:
    body = login("alice")
    token = body["access_token"]
    kid = jwt.get_unverified_header(token)["kid"]
    assert me(client, token).status_code == 200

    KeyDirectory(keys_dir).revoke(kid, policy_of(app), now=clock())

    rejected = me(client, token)
    assert rejected.status_code == 401
    assert rejected.get_json()["error"] == "invalid_token"
    published = {entry["kid"] for entry in client.get("/.well-known/jwks.json").get_json()["keys"]}
    assert kid not in published
    # Signing never stopped: a refresh gets a token from the promoted key, and it works.
    refreshed = client.post("/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert refreshed.status_code == 200
    fresh = refreshed.get_json()["access_token"]
    assert jwt.get_unverified_header(fresh)["kid"] in published
    assert me(client, fresh).status_code == 200


def test_a_worker_that_cannot_read_the_key_ring_serves_no_key_until_it_can(
    app: Flask,
    client: FlaskClient,
    login: Callable[..., dict[str, Any]],
    wechat: WeChatEmulator,
    keys_dir: Path,
) -> None:
    body = login("alice")
    token = body["access_token"]
    assert client.get("/readyz").status_code == 200
    manifest = keys_dir / MANIFEST
    good = manifest.read_bytes()

    # A revocation this process cannot read (here: a manifest it cannot parse) must not
    # leave it signing and verifying with the key it held.
    manifest.write_bytes(b"{not json")
    bobs_code = wechat.mint_code(APPID, "bob")
    for answer in (
        me(client, token),
        client.post("/auth/refresh", json={"refresh_token": body["refresh_token"]}),
        client.post("/auth/login", json={"code": bobs_code}),
        client.get("/.well-known/jwks.json"),
    ):
        assert answer.status_code == 503
        assert answer.get_json()["error"] == "temporarily_unavailable"
        assert answer.headers["Retry-After"]
        assert str(keys_dir) not in answer.get_data(as_text=True)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["signing_key"] == "unavailable"
    assert "key directory cannot be read" in ready.get_json()["error_description"]

    manifest.write_bytes(good)
    assert client.get("/readyz").status_code == 200
    assert me(client, token).status_code == 200
    # The login refused meanwhile did not spend bob's one-time code at WeChat.
    assert client.post("/auth/login", json={"code": bobs_code}).status_code == 200


def test_a_value_sealed_with_a_data_key_another_process_just_made_opens_here(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator, tmp_path: Path
) -> None:
    keys_dir = tmp_path / "shared-keys"
    first = app_factory(keys_dir=str(keys_dir))
    second = app_factory(keys_dir=str(keys_dir))  # another process on the same directory
    # A data-key rotation that the first process has picked up and the second not yet (it
    # looks at the manifest at most once a second).
    KeyDirectory(keys_dir).add_data_key()
    first.extensions["issuer"].keys.reload()
    code = wechat.mint_code(APPID, "carol")
    body = first.test_client().post("/auth/login", json={"code": code}).get_json()

    answer = second.test_client().post(
        "/auth/refresh", json={"refresh_token": body["refresh_token"]}
    )
    assert answer.status_code == 200, answer.get_json()


# -- data keys


def test_new_data_key_seals_new_values_and_old_ones_still_open(directory: Path) -> None:
    clock = FakeClock(T0)
    keys = manager(directory, clock)

    def current() -> tuple[Any, str]:
        ring = keys()
        return ring.data_keys, ring.active_data_kid

    sealer = LiveSealer(current)
    aad = associated_data("test", "row-1")
    old = sealer.seal(b"first secret", aad)

    new_kid = KeyDirectory(directory).add_data_key()  # another process
    assert new_kid != old.kid
    assert sealer.active_kid == new_kid
    new = sealer.seal(b"second secret", aad)
    assert new.kid == new_kid
    assert sealer.open(old, aad) == b"first secret"
    assert sealer.open(new, aad) == b"second secret"
    assert KeyDirectory(directory).data_key_ids() == (new_kid, [old.kid, new_kid])

    # Once dropped, the old key opens nothing any more; the active one is never dropped.
    KeyDirectory(directory).drop_data_keys([old.kid, new_kid])
    assert KeyDirectory(directory).data_key_ids() == (new_kid, [new_kid])
    assert not (directory / f"data-{old.kid}.key").exists()
    assert (directory / f"data-{new_kid}.key").exists()
    with pytest.raises(UnsealError):
        sealer.open(old, aad)
    assert sealer.open(new, aad) == b"second secret"


def test_reseal_all_moves_every_stored_secret_to_the_new_data_key(
    app: Flask,
    client: FlaskClient,
    login: Callable[..., dict[str, Any]],
    wechat: WeChatEmulator,
    keys_dir: Path,
    clock: FakeClock,
) -> None:
    svc = service(app)
    store, sealer = svc.store, svc.sealer
    sessions = {user: login(user) for user in ("alice", "bob", "carol")}
    alice = sessions["alice"]["access_token"]
    # A phone number and the app's server token: every kind of stored secret.
    phone = client.post(
        "/wechat/phone",
        json={"code": wechat.mint_phone_code(APPID, "alice")},
        headers={"Authorization": f"Bearer {alice}"},
    )
    assert phone.status_code == 200, phone.get_json()
    bob_openid, _ = wechat.identity(APPID, "bob")
    store.set_phone(
        APPID, bob_openid, sealer.seal(b"5550100", phone_aad(APPID, bob_openid)), "1", clock()
    )
    old_kid = sealer.active_kid
    counts = store.sealed_kid_counts()
    assert set(counts) == {old_kid}
    total = counts[old_kid]
    assert total >= 3 + 3 + 2  # session keys, session secrets, phones (+ server token)

    new_kid = KeyDirectory(keys_dir).add_data_key()
    assert sealer.active_kid == new_kid
    dave = login("dave")  # written meanwhile, already with the new key
    assert set(store.sealed_kid_counts()) == {old_kid, new_kid}
    total = sum(store.sealed_kid_counts().values())

    report = reseal_all(store, sealer)
    assert report.resealed == counts[old_kid]
    assert report.unreadable == 0
    assert report.remaining == {new_kid: total}
    assert store.sealed_kid_counts() == {new_kid: total}

    KeyDirectory(keys_dir).drop_data_keys([old_kid])
    assert not (keys_dir / f"data-{old_kid}.key").exists()
    assert set(svc.keys().data_keys) == {new_kid}

    # Everything still opens: phone (in /me), session_key (session check), session secrets
    # (refresh), and a new login of a known user.
    shown = me(client, alice).get_json()
    assert shown["phone_number"] == wechat.phone_of("alice")
    checked = client.get("/wechat/session", headers={"Authorization": f"Bearer {alice}"})
    assert checked.status_code == 200
    assert checked.get_json() == {"valid": True}
    for body in (*sessions.values(), dave):
        refreshed = client.post("/auth/refresh", json={"refresh_token": body["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.get_json()
    again = login("bob")
    assert again["is_new_user"] is False
    assert set(store.sealed_kid_counts()) == {new_kid}


def test_app_sealer_survives_a_data_key_rotation_between_its_ring_reads(
    app: Flask, keys_dir: Path
) -> None:
    """The app's sealer reads the key ring twice per use (keys, then active id). A data-key
    rotation by another process that lands between the two reads must not break sealing."""
    svc = service(app)
    manager = svc.keys
    assert isinstance(manager, KeyManager)
    refreshes = 0
    refresh = manager._refresh

    def refresh_then_rotate_elsewhere(**kwargs: bool) -> None:
        nonlocal refreshes
        refresh(**kwargs)
        refreshes += 1
        if refreshes == 1:
            KeyDirectory(keys_dir).add_data_key()

    manager._refresh = refresh_then_rotate_elsewhere  # type: ignore[method-assign]
    aad = associated_data("test", "row")
    sealed = svc.sealer.seal(b"secret", aad)
    assert svc.sealer.open(sealed, aad) == b"secret"
