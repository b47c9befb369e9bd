"""The key files of one ``ISSUER_KEYS_DIR``: the manifest, one file per secret, and the locks.

The directory holds ``keyring.json`` (each signing key's kid, algorithm, and the time it
starts signing; the data key ids) beside one file per secret, each written atomically with
mode 0600. Writers hold an exclusive ``flock`` on ``.lock`` (readers a shared one), so workers
or hosts that start together on an empty directory make exactly one key between them. A file
that exists but cannot be read or parsed stops start-up: a replacement is never generated over
it, since that would silently invalidate every token and every stored ``session_key``.

Every manifest write bumps its ``generation``. Each serving process, when it checks the
directory, records the generation it now serves in ``workers/<host>-<pid>.json`` (or why it
cannot read the directory), so an operator command can wait until every worker has picked a
change up, or say which did not.

What each key's state is at a given moment is :mod:`issuer.keys.ring`'s to say.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import pwd
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..errors import KeyFileError
from .ring import (
    MANIFEST,
    SIGNING_ALGORITHMS,
    KeyPolicy,
    KeyRing,
    KeyStatus,
    PrivateKey,
    SigningKey,
    b64url,
    data_key_id,
    expired,
    generate_private_key,
    is_next,
    key_matches,
    key_states,
    next_key_due,
    public_jwk,
    revoke_entries,
    rotation_due,
    signer_missing,
    thumbprint,
)

LOCK = ".lock"
MANIFEST_VERSION = 1
WORKERS = "workers"

log = logging.getLogger("issuer.keys")


class NoKeys(KeyFileError):
    """The directory holds no keys, and making them was not asked for."""


@dataclass(frozen=True)
class WorkerReport:
    """What one serving process last said about the key directory."""

    host: str
    pid: int
    generation: int
    failure: str | None
    at: float
    # Same host and the process is gone: its report means nothing any more.
    dead: bool


def signing_key_file(kid: str) -> str:
    """The name of the PEM file of signing key ``kid``."""
    return f"signing-{kid}.pem"


def data_key_file(kid: str) -> str:
    """The name of the file of data key ``kid``."""
    return f"data-{kid}.key"


class KeyDirectory:
    """The key files of one ``ISSUER_KEYS_DIR``: reads them, and makes every change to them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Made once: ``fingerprint`` runs on every JWKS request.
        self._manifest = os.fspath(path / MANIFEST)

    # -- reading

    def load(
        self,
        policy: KeyPolicy,
        *,
        data_key: bytes | None = None,
        now: float | None = None,
        create: bool = True,
    ) -> KeyRing:
        """The key ring at ``now``, after making whatever is due: a first signing key and data
        key, a key of a newly configured algorithm (active at once), or the next key of an
        automatic rotation (``rotation_days``), and dropping keys whose tokens have expired.

        :param data_key: ``ISSUER_DATA_KEY``; when given it is the active data key.
        :param create: make the first keys when the directory has none; when False an empty
            directory raises :class:`NoKeys` instead.
        :raises KeyFileError: the directory or a key file cannot be read or is corrupt.
        """
        now = time.time() if now is None else now
        if not create and self._read_manifest() is None:
            raise NoKeys(f"ISSUER_KEYS_DIR: {self.path} holds no keys")
        self._ensure_directory()
        # Shared lock: a writer puts key files in place before the manifest that names them.
        with self._locked(exclusive=False):
            manifest = self._read_manifest()
        if manifest is None and not create:
            raise NoKeys(f"ISSUER_KEYS_DIR: {self.path} holds no keys")
        if self._due(manifest, policy, data_key, now):
            with self._locked(exclusive=True):
                manifest = self._read_manifest()  # another process may have written it
                if self._due(manifest, policy, data_key, now):
                    manifest = self._complete(manifest, policy, data_key, now)
        assert manifest is not None
        return self._ring(manifest, policy, data_key, now)

    def statuses(self, policy: KeyPolicy, now: float | None = None) -> list[KeyStatus]:
        """Every signing key in the manifest with its state, for operators.

        Reads only (no lock file, no directory is made): the manifest is replaced atomically,
        so reading it alone is always consistent.

        :raises NoKeys: the directory holds no keys.
        """
        now = time.time() if now is None else now
        manifest = self._read_manifest()
        if manifest is None:
            raise NoKeys(f"ISSUER_KEYS_DIR: {self.path} holds no keys")
        return key_states(manifest["signing"], now, policy.retired_lifetime)

    def data_key_ids(self) -> tuple[str | None, list[str]]:
        """(active data key id, every data key id in the manifest)."""
        manifest = self._read_manifest()
        if manifest is None:
            return None, []
        return manifest["data"].get("active"), list(manifest["data"]["keys"])

    def generation(self) -> int:
        """The manifest's generation: bumped by every write (0 when there is none)."""
        manifest = self._read_manifest()
        return int(manifest.get("generation", 0)) if manifest else 0

    def owner(self) -> int | None:
        """The uid owning the directory, or None when it does not exist."""
        try:
            return os.stat(self.path).st_uid
        except FileNotFoundError:
            return None

    def check_owner(self) -> None:
        """Refuse to change keys as a user other than the directory's owner.

        Files are written with mode 0600 by whoever writes them: a manifest written by root
        (``sudo issuer keys revoke``) could not be read by the workers, which would then stop
        serving keys. Asking the operator to run the command as the owner keeps one owner for
        every file, instead of quietly re-owning files as root.

        :raises KeyFileError: the caller is not the owner.
        """
        uid = self.owner()
        if uid is None or uid == os.geteuid():
            return
        name = _user_name(uid)
        raise KeyFileError(
            f"ISSUER_KEYS_DIR: {self.path} belongs to {name}; run this command as {name} "
            f"(e.g. sudo -u {name} issuer ...) so the workers can read what it writes"
        )

    # -- what the serving processes report

    def report(self, generation: int, failure: str | None = None) -> None:
        """Record that this process serves ``generation`` (or cannot, and why). Best effort:
        a report that cannot be written never fails a request."""
        host, pid = socket.gethostname(), os.getpid()
        body = {"host": host, "pid": pid, "generation": generation, "failure": failure}
        body["at"] = time.time()
        try:
            folder = self.path / WORKERS
            folder.mkdir(mode=0o700, exist_ok=True)
            write_secret(folder / f"{host}-{pid}.json", json.dumps(body).encode(), sync=False)
        except OSError as error:
            log.warning("cannot record the key generation this process serves: %s", error)

    def reports(self) -> list[WorkerReport]:
        """What every serving process last reported; a report of a process of this host that
        has exited is marked ``dead`` (and removed)."""
        here = socket.gethostname()
        found: list[WorkerReport] = []
        for file in sorted((self.path / WORKERS).glob("*.json")):
            try:
                body = json.loads(file.read_text())
                report = WorkerReport(
                    str(body["host"]),
                    int(body["pid"]),
                    int(body["generation"]),
                    body.get("failure"),
                    float(body["at"]),
                    dead=body["host"] == here and not _alive(int(body["pid"])),
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if report.dead:
                file.unlink(missing_ok=True)
            found.append(report)
        return found

    def fingerprint(self) -> tuple[int, int, int] | None:
        """Changes whenever the manifest is rewritten; None when it is missing."""
        try:
            stat = os.stat(self._manifest)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    # -- operator changes (each under the exclusive lock)

    def rotate(
        self, policy: KeyPolicy, *, immediately: bool = False, now: float | None = None
    ) -> str:
        """Publish a fresh next key, replacing a next key that has not signed yet.

        It signs from ``now + jwks_max_age + margin``, or at once when ``immediately`` (for
        emergencies: verifiers that cached the JWKS refetch on the unknown kid).

        :returns: the new key's kid.
        """
        now = time.time() if now is None else now
        with self._locked(exclusive=True):
            manifest = self._required_manifest()
            signing = [entry for entry in manifest["signing"] if not is_next(entry, now)]
            entry = self._new_signing_key(
                policy.alg, now, now if immediately else now + policy.lead
            )
            self._write({**manifest, "signing": [*signing, entry]}, policy, now)
            # Only once the manifest no longer names them: a failed write loses nothing.
            self._remove_key_files(manifest["signing"], keep=signing)
        return str(entry["kid"])

    def revoke(self, kid: str, policy: KeyPolicy, *, now: float | None = None) -> None:
        """Drop a key from the JWKS and from verification at once. Revoking the active key
        first promotes the next key (or a new one), so signing never stops.

        :raises KeyError: no live key has this kid.
        """
        now = time.time() if now is None else now
        with self._locked(exclusive=True):
            manifest = self._required_manifest()
            signing = revoke_entries(
                manifest["signing"],
                kid,
                now,
                policy.retired_lifetime,
                lambda: self._new_signing_key(policy.alg, now, now),
            )
            self._write({**manifest, "signing": signing}, policy, now)
            (self.path / signing_key_file(kid)).unlink(missing_ok=True)

    def add_data_key(self) -> str:
        """Make a new active data key; older ones stay for the rows they sealed."""
        with self._locked(exclusive=True):
            manifest = self._required_manifest()
            kid = self._new_data_key()
            data = {"active": kid, "keys": [*manifest["data"]["keys"], kid]}
            self._write_manifest({**manifest, "data": data})
        return kid

    def drop_data_keys(self, kids: list[str]) -> None:
        """Forget data keys no stored row needs any more (never the active one)."""
        with self._locked(exclusive=True):
            manifest = self._required_manifest()
            active = manifest["data"].get("active")
            drop = [kid for kid in kids if kid != active]
            keep = [kid for kid in manifest["data"]["keys"] if kid not in drop]
            self._write_manifest({**manifest, "data": {"active": active, "keys": keep}})
            for kid in drop:
                (self.path / data_key_file(kid)).unlink(missing_ok=True)

    # -- internals

    def _ensure_directory(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise KeyFileError(
                f"ISSUER_KEYS_DIR: cannot create {self.path}: {error.strerror}"
            ) from None
        if not os.access(self.path, os.R_OK | os.W_OK | os.X_OK):
            raise KeyFileError(f"ISSUER_KEYS_DIR: {self.path} is not readable and writable")

    def _required_manifest(self) -> dict[str, Any]:
        manifest = self._read_manifest()
        if manifest is None:
            raise KeyFileError(f"{self.path / MANIFEST} does not exist; start issuer once first")
        return manifest

    def _read_manifest(self) -> dict[str, Any] | None:
        file = self.path / MANIFEST
        try:
            text = file.read_text()
        except FileNotFoundError:
            if any(self.path.glob("signing-*.pem")) or any(self.path.glob("data-*.key")):
                raise KeyFileError(
                    f"{file} is missing but key files are present; restore it from backup"
                ) from None
            return None
        except OSError as error:
            raise KeyFileError(f"cannot read {file}: {error.strerror}") from None
        try:
            manifest = json.loads(text)
            _check_manifest(manifest)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyFileError(f"{file} is corrupt; restore it from backup") from None
        return dict(manifest)

    def _due(
        self,
        manifest: dict[str, Any] | None,
        policy: KeyPolicy,
        data_key: bytes | None,
        now: float,
    ) -> bool:
        if manifest is None:
            return True
        if data_key is None and not manifest["data"].get("active"):
            return True
        statuses = key_states(manifest["signing"], now, policy.retired_lifetime)
        return (
            signer_missing(statuses, policy)
            or rotation_due(statuses, policy, now)
            # Keys whose tokens have all expired leave the manifest and the disk as soon as
            # any process sees it, not at the next operator change.
            or any(status.state == "expired" for status in statuses)
        )

    def _complete(
        self,
        manifest: dict[str, Any] | None,
        policy: KeyPolicy,
        data_key: bytes | None,
        now: float,
    ) -> dict[str, Any]:
        manifest = manifest or {"version": MANIFEST_VERSION, "signing": [], "data": {"keys": []}}
        signing = [dict(entry) for entry in manifest["signing"]]
        statuses = key_states(signing, now, policy.retired_lifetime)
        if signer_missing(statuses, policy):
            # First start, or a new algorithm: it signs at once; verifiers refetch the JWKS
            # on its unknown kid.
            signing.append(self._new_signing_key(policy.alg, now, now))
        elif rotation_due(statuses, policy, now):
            active = next(status for status in statuses if status.state == "active")
            starts = next_key_due(active.activates_at, policy) + policy.lead
            starts = max(now + policy.lead, starts)
            signing.append(self._new_signing_key(policy.alg, now, starts))
        data = dict(manifest["data"])
        if data_key is None and not data.get("active"):
            kid = self._new_data_key()
            data = {"active": kid, "keys": [*data["keys"], kid]}
        return self._write({**manifest, "signing": signing, "data": data}, policy, now)

    def _write(self, manifest: dict[str, Any], policy: KeyPolicy, now: float) -> dict[str, Any]:
        """Write the manifest, dropping retired keys whose tokens have all expired."""
        gone = expired(manifest["signing"], now, policy.retired_lifetime)
        signing = [entry for entry in manifest["signing"] if entry["kid"] not in gone]
        manifest = self._write_manifest({**manifest, "signing": signing})
        for kid in gone:
            (self.path / signing_key_file(kid)).unlink(missing_ok=True)
        return manifest

    def _write_manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        manifest = {**manifest, "generation": int(manifest.get("generation", 0)) + 1}
        write_secret(self.path / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
        return manifest

    def _remove_key_files(self, entries: list[dict[str, Any]], keep: list[dict[str, Any]]) -> None:
        kept = {entry["kid"] for entry in keep}
        for entry in entries:
            if entry["kid"] not in kept:
                (self.path / signing_key_file(entry["kid"])).unlink(missing_ok=True)

    def _read_private_key(self, kid: str, alg: str) -> PrivateKey:
        file = self.path / signing_key_file(kid)
        try:
            key = serialization.load_pem_private_key(file.read_bytes(), password=None)
        except OSError as error:
            raise KeyFileError(f"cannot read signing key {file}: {error.strerror}") from None
        except (ValueError, TypeError):
            raise KeyFileError(f"signing key {file} is corrupt; restore it from backup") from None
        if not key_matches(alg, key):
            raise KeyFileError(f"signing key {file} is not an {alg} key")
        assert isinstance(
            key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        )
        if thumbprint(public_jwk(key.public_key())) != kid:
            raise KeyFileError(f"signing key {file} does not match its kid; restore it")
        return key

    def _read_data_key(self, kid: str) -> bytes:
        file = self.path / data_key_file(kid)
        try:
            text = file.read_text().strip()
        except OSError as error:
            raise KeyFileError(f"cannot read data key {file}: {error.strerror}") from None
        try:
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            key = b""
        if len(key) != 32 or data_key_id(key) != kid:
            raise KeyFileError(f"data key {file} is corrupt; restore it from backup")
        return key

    def _ring(
        self, manifest: dict[str, Any], policy: KeyPolicy, data_key: bytes | None, now: float
    ) -> KeyRing:
        keys = []
        changes = [float("inf")]
        for status in key_states(manifest["signing"], now, policy.retired_lifetime):
            if status.state in ("revoked", "expired"):
                continue
            if status.state == "next":
                changes.append(status.activates_at)
            if status.unpublish_at is not None:
                changes.append(status.unpublish_at)
            private_key = self._read_private_key(status.kid, status.alg)
            keys.append(
                SigningKey(
                    kid=status.kid,
                    alg=status.alg,
                    state=status.state,
                    private_key=private_key,
                    jwk=public_jwk(private_key.public_key()),
                    created_at=status.created_at,
                    activates_at=status.activates_at,
                    retired_at=status.retired_at,
                )
            )
        if policy.rotation_days > 0:
            active = next(key for key in keys if key.state == "active")
            if not any(key.state == "next" for key in keys):
                changes.append(next_key_due(active.activates_at, policy))
        data_keys = {kid: self._read_data_key(kid) for kid in manifest["data"]["keys"]}
        active_data_kid = manifest["data"].get("active")
        if data_key is not None:
            active_data_kid = data_key_id(data_key)
            data_keys[active_data_kid] = data_key
        return KeyRing(
            tuple(keys),
            data_keys,
            active_data_kid,
            valid_until=min(changes),
            generation=int(manifest.get("generation", 0)),
        )

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise KeyFileError(f"cannot lock {self.path / LOCK}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _new_signing_key(self, alg: str, now: float, activates_at: float) -> dict[str, Any]:
        private_key = generate_private_key(alg)
        kid = thumbprint(public_jwk(private_key.public_key()))
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_secret(self.path / signing_key_file(kid), pem)
        log.info("generated signing key %s (%s) in %s", kid, alg, self.path)
        return {"kid": kid, "alg": alg, "created_at": now, "activates_at": activates_at}

    def _new_data_key(self) -> str:
        key = os.urandom(32)
        kid = data_key_id(key)
        write_secret(self.path / data_key_file(kid), b64url(key).encode() + b"\n")
        log.info("generated data key %s in %s", kid, self.path)
        return kid


def _check_manifest(manifest: Any) -> None:
    """:raises ValueError: (or KeyError/TypeError) when the manifest is not well formed."""
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError("unknown version")
    for entry in manifest["signing"]:
        if not isinstance(entry["kid"], str) or entry["alg"] not in SIGNING_ALGORITHMS:
            raise ValueError("bad signing entry")
        for name in ("created_at", "activates_at"):
            if isinstance(entry[name], bool) or not isinstance(entry[name], int | float):
                raise ValueError(f"{name} must be a number")
        revoked_at = entry.get("revoked_at")
        if revoked_at is not None and (
            isinstance(revoked_at, bool) or not isinstance(revoked_at, int | float)
        ):
            raise ValueError("revoked_at must be a number")
    generation = manifest.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise ValueError("generation must be an integer")
    data = manifest["data"]
    if not isinstance(data["keys"], list) or not all(isinstance(k, str) for k in data["keys"]):
        raise ValueError("data keys must be a list of ids")
    if data.get("active") is not None and data["active"] not in data["keys"]:
        raise ValueError("the active data key is not listed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def write_secret(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename), mode 0600."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if not sync:
        return
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
