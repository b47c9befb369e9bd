"""Signing keys and data keys: their files in ``ISSUER_KEYS_DIR``, their life cycle, and the
key ring each process signs and verifies with.

The directory holds ``keyring.json`` (each signing key's kid, algorithm, and the time it
starts signing; the data key ids) beside one file per secret, each written atomically with
mode 0600. Writers hold an exclusive ``flock`` on ``.lock`` (readers a shared one), so workers
or hosts that start together on an empty directory make exactly one key between them. A file
that exists but cannot be read or parsed stops start-up: a replacement is never generated over
it, since that would silently invalidate every token and every stored ``session_key``.

Life cycle (SPEC §4). A key's state follows from the manifest and the clock alone, so every
worker and host that shares the directory agrees without further writes:

- *next*: published, not yet signing: its ``activates_at`` is in the future. A rotation
  announces a key ``jwks_max_age`` + a margin ahead, so every verifier's cached JWKS already
  holds it when its first token arrives;
- *active*: the key with the latest ``activates_at`` that has passed: it signs;
- *retired*: an earlier key, published until every token it signed has expired (its
  successor's ``activates_at`` + the access token lifetime + leeway), then dropped;
- *revoked*: ``revoked_at`` set: dropped from the JWKS and from verification at once.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .config import StartupError

log = logging.getLogger("issuer.keys")

MANIFEST = "keyring.json"
LOCK = ".lock"
MANIFEST_VERSION = 1
RSA_KEY_BITS = 2048
SIGNING_ALGORITHMS = ("ES256", "RS256", "EdDSA")
# Announced keys wait this long beyond the JWKS max-age before they sign.
PUBLISH_MARGIN = 60.0
# How often a process looks at the manifest for changes made by other processes.
CHECK_INTERVAL = 1.0

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

# RFC 7638 §3.2: the members of each key type that its thumbprint covers.
THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


class KeyFileError(StartupError):
    """A key file or the key directory cannot be used; the message names the file."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_private_key(alg: str) -> PrivateKey:
    """A fresh private key for ``alg`` (ES256: P-256, RS256: RSA-2048, EdDSA: Ed25519)."""
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported signing algorithm {alg!r}")


def public_jwk(public_key: PublicKey) -> dict[str, str]:
    """The public members of a key as a JWK (RFC 7517); never a private member."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    return {
        name: str(value)
        for name, value in jwk.items()
        if name in {"kty", "crv", "x", "y", "n", "e"}
    }


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the key's stable ``kid``."""
    members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _key_matches(alg: str, key: Any) -> bool:
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    if alg == "RS256":
        return isinstance(key, rsa.RSAPrivateKey) and key.key_size >= RSA_KEY_BITS
    return alg == "EdDSA" and isinstance(key, ed25519.Ed25519PrivateKey)


def data_key_id(key: bytes) -> str:
    """A stable id for a data key, stored beside each ciphertext it made."""
    return b64url(hashlib.sha256(b"issuer data key id\x00" + key).digest())[:16]


@dataclass(frozen=True)
class KeyPolicy:
    """What the life cycle needs from the settings."""

    alg: str
    jwks_max_age: float
    rotation_days: int
    # How long a retired key stays published: access token lifetime + leeway.
    retired_lifetime: float

    @property
    def lead(self) -> float:
        """How far ahead of signing a new key is published."""
        return self.jwks_max_age + PUBLISH_MARGIN


@dataclass(frozen=True)
class SigningKey:
    """One published signing key and its state at the time the ring was built."""

    kid: str
    alg: str
    state: str  # "next", "active" or "retired"
    private_key: PrivateKey = field(repr=False)
    jwk: dict[str, str]
    created_at: float
    activates_at: float
    # When it stopped signing (its successor's activation), for retired keys.
    retired_at: float | None = None

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()


@dataclass(frozen=True)
class KeyRing:
    """The keys one process signs and verifies with, and the JWKS built from them once.

    ``keys`` lists every published key (next, active, retired); exactly one is active.
    ``valid_until`` is the next moment a state changes by the clock alone.
    """

    keys: tuple[SigningKey, ...]
    data_keys: Mapping[str, bytes] = field(repr=False)
    active_data_kid: str
    valid_until: float = float("inf")
    jwks_json: bytes = field(init=False, repr=False)
    jwks_etag: str = field(init=False)

    def __post_init__(self) -> None:
        actives = [key for key in self.keys if key.state == "active"]
        if len(actives) != 1:
            raise KeyFileError(f"{MANIFEST}: exactly one active signing key is required")
        document = {
            "keys": [{**key.jwk, "kid": key.kid, "alg": key.alg, "use": "sig"} for key in self.keys]
        }
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        object.__setattr__(self, "jwks_json", body)
        object.__setattr__(self, "jwks_etag", hashlib.sha256(body).hexdigest()[:32])

    @property
    def active(self) -> SigningKey:
        """The key that signs new tokens."""
        return next(key for key in self.keys if key.state == "active")

    def verification_key(self, kid: str) -> SigningKey | None:
        """The published key with this kid, or None: unknown kids never verify."""
        for key in self.keys:
            if key.kid == kid:
                return key
        return None

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(sorted({key.alg for key in self.keys}))


@dataclass(frozen=True)
class KeyStatus:
    """One manifest entry as ``issuer keys list`` shows it."""

    kid: str
    alg: str
    state: str  # next, active, retired, expired (retired past publication), revoked
    created_at: float
    activates_at: float
    retired_at: float | None
    unpublish_at: float | None
    revoked_at: float | None


def key_states(
    entries: list[dict[str, Any]], now: float, retired_lifetime: float
) -> list[KeyStatus]:
    """The state of every signing key at ``now``, from the manifest entries alone."""
    live = sorted(
        (entry for entry in entries if entry.get("revoked_at") is None),
        key=lambda entry: (entry["activates_at"], entry["created_at"]),
    )
    started = [entry for entry in live if entry["activates_at"] <= now]
    # A host whose clock lags the writer's may see no key started yet: the first one signs.
    active = started[-1] if started else (live[0] if live else None)
    statuses: list[KeyStatus] = []
    for position, entry in enumerate(live):
        retired_at = unpublish_at = None
        if entry is active:
            state = "active"
        elif active is not None and entry["activates_at"] > active["activates_at"]:
            state = "next"
        else:
            retired_at = live[position + 1]["activates_at"]
            unpublish_at = retired_at + retired_lifetime
            state = "retired" if now < unpublish_at else "expired"
        statuses.append(
            KeyStatus(
                entry["kid"],
                entry["alg"],
                state,
                entry["created_at"],
                entry["activates_at"],
                retired_at,
                unpublish_at,
                None,
            )
        )
    for entry in entries:
        if entry.get("revoked_at") is not None:
            statuses.append(
                KeyStatus(
                    entry["kid"],
                    entry["alg"],
                    "revoked",
                    entry["created_at"],
                    entry["activates_at"],
                    None,
                    None,
                    entry["revoked_at"],
                )
            )
    return statuses


class KeyDirectory:
    """The key files of one ``ISSUER_KEYS_DIR``: reads them, and makes every change to them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Made once: ``fingerprint`` runs on every JWKS request.
        self._manifest = os.fspath(path / MANIFEST)

    # -- reading

    def load(
        self, policy: KeyPolicy, *, data_key: bytes | None = None, now: float | None = None
    ) -> KeyRing:
        """The key ring at ``now``, after making whatever is due: a first signing key and data
        key, a key of a newly configured algorithm (active at once), or the next key of an
        automatic rotation (``rotation_days``).

        :param data_key: ``ISSUER_DATA_KEY``; when given it is the active data key.
        :raises KeyFileError: the directory or a key file cannot be read or is corrupt.
        """
        now = time.time() if now is None else now
        self._ensure_directory()
        # Shared lock: a writer puts key files in place before the manifest that names them.
        with self._locked(exclusive=False):
            manifest = self._read_manifest()
        if self._due(manifest, policy, data_key, now):
            with self._locked(exclusive=True):
                manifest = self._read_manifest()  # another process may have written it
                if self._due(manifest, policy, data_key, now):
                    manifest = self._complete(manifest, policy, data_key, now)
        assert manifest is not None
        return self._ring(manifest, policy, data_key, now)

    def statuses(self, policy: KeyPolicy, now: float | None = None) -> list[KeyStatus]:
        """Every signing key in the manifest with its state, for operators."""
        now = time.time() if now is None else now
        with self._locked(exclusive=False):
            manifest = self._read_manifest()
        return key_states(manifest["signing"] if manifest else [], now, policy.retired_lifetime)

    def data_key_ids(self) -> tuple[str | None, list[str]]:
        """(active data key id, every data key id in the manifest)."""
        with self._locked(exclusive=False):
            manifest = self._read_manifest()
        if manifest is None:
            return None, []
        return manifest["data"].get("active"), list(manifest["data"]["keys"])

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
            signing = [entry for entry in manifest["signing"] if not _is_next(entry, now)]
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
            signing = [dict(entry) for entry in manifest["signing"]]
            states = {
                status.kid: status.state
                for status in key_states(signing, now, policy.retired_lifetime)
            }
            if states.get(kid) not in ("next", "active", "retired", "expired"):
                raise KeyError(kid)
            if states[kid] == "active":
                upcoming = [entry for entry in signing if states.get(entry["kid"]) == "next"]
                if upcoming:
                    min(upcoming, key=lambda entry: entry["activates_at"])["activates_at"] = now
                else:
                    signing.append(self._new_signing_key(policy.alg, now, now))
            for entry in signing:
                if entry["kid"] == kid:
                    entry["revoked_at"] = now
            self._write({**manifest, "signing": signing}, policy, now)
            (self.path / f"signing-{kid}.pem").unlink(missing_ok=True)

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
                (self.path / f"data-{kid}.key").unlink(missing_ok=True)

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
        return _signer_missing(statuses, policy) or _rotation_due(statuses, policy, now)

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
        if _signer_missing(statuses, policy):
            # First start, or a new algorithm: it signs at once; verifiers refetch the JWKS
            # on its unknown kid.
            signing.append(self._new_signing_key(policy.alg, now, now))
        elif _rotation_due(statuses, policy, now):
            active = next(status for status in statuses if status.state == "active")
            starts = max(now + policy.lead, active.activates_at + policy.rotation_days * 86_400)
            signing.append(self._new_signing_key(policy.alg, now, starts))
        data = dict(manifest["data"])
        if data_key is None and not data.get("active"):
            kid = self._new_data_key()
            data = {"active": kid, "keys": [*data["keys"], kid]}
        return self._write({**manifest, "signing": signing, "data": data}, policy, now)

    def _write(self, manifest: dict[str, Any], policy: KeyPolicy, now: float) -> dict[str, Any]:
        """Write the manifest, dropping retired keys whose tokens have all expired."""
        expired = {
            status.kid
            for status in key_states(manifest["signing"], now, policy.retired_lifetime)
            if status.state == "expired"
        }
        signing = [entry for entry in manifest["signing"] if entry["kid"] not in expired]
        manifest = {**manifest, "signing": signing}
        self._write_manifest(manifest)
        for kid in expired:
            (self.path / f"signing-{kid}.pem").unlink(missing_ok=True)
        return manifest

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        write_secret(self.path / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")

    def _remove_key_files(self, entries: list[dict[str, Any]], keep: list[dict[str, Any]]) -> None:
        kept = {entry["kid"] for entry in keep}
        for entry in entries:
            if entry["kid"] not in kept:
                (self.path / f"signing-{entry['kid']}.pem").unlink(missing_ok=True)

    def _read_private_key(self, kid: str, alg: str) -> PrivateKey:
        file = self.path / f"signing-{kid}.pem"
        try:
            key = serialization.load_pem_private_key(file.read_bytes(), password=None)
        except OSError as error:
            raise KeyFileError(f"cannot read signing key {file}: {error.strerror}") from None
        except (ValueError, TypeError):
            raise KeyFileError(f"signing key {file} is corrupt; restore it from backup") from None
        if not _key_matches(alg, key):
            raise KeyFileError(f"signing key {file} is not an {alg} key")
        assert isinstance(
            key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        )
        if thumbprint(public_jwk(key.public_key())) != kid:
            raise KeyFileError(f"signing key {file} does not match its kid; restore it")
        return key

    def _read_data_key(self, kid: str) -> bytes:
        file = self.path / f"data-{kid}.key"
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
                changes.append(active.activates_at + policy.rotation_days * 86_400 - policy.lead)
        data_keys = {kid: self._read_data_key(kid) for kid in manifest["data"]["keys"]}
        active_data_kid = manifest["data"].get("active")
        if data_key is not None:
            active_data_kid = data_key_id(data_key)
            data_keys[active_data_kid] = data_key
        return KeyRing(tuple(keys), data_keys, active_data_kid, valid_until=min(changes))

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
        write_secret(self.path / f"signing-{kid}.pem", pem)
        return {"kid": kid, "alg": alg, "created_at": now, "activates_at": activates_at}

    def _new_data_key(self) -> str:
        key = os.urandom(32)
        kid = data_key_id(key)
        write_secret(self.path / f"data-{kid}.key", b64url(key).encode() + b"\n")
        return kid


class KeyManager:
    """This process's current key ring, kept in step with the key directory.

    At most once a second (monotonic clock) it looks at the manifest's ``stat``; the ring is
    rebuilt only when the manifest changed (a rotation or revocation by any process or host)
    or a state change by the clock is due. Requests never read key files.
    """

    def __init__(
        self,
        directory: KeyDirectory,
        policy: KeyPolicy,
        *,
        data_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self.data_key = data_key
        self.clock = clock
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._ring = directory.load(policy, data_key=data_key, now=clock())
        self._fingerprint = directory.fingerprint()
        self._checked = time.monotonic()

    def __call__(self) -> KeyRing:
        """The current ring (cheap: a clock read on almost every call)."""
        if time.monotonic() - self._checked >= self.check_interval:
            self._refresh(blocking=False)
        return self._ring

    def fresh(self) -> KeyRing:
        """The ring, reloaded first if the manifest changed (one ``stat``).

        For the JWKS and for unknown kids: a key another process just made active (``keys
        rotate --now``, revoking the active key) must be published and verifiable by every
        process before the first token it signed can reach them.
        """
        if self.directory.fingerprint() != self._fingerprint:
            self._refresh(blocking=True)
        return self()

    def verification_key(self, kid: str) -> SigningKey | None:
        """The published key with this kid, looking at the directory again if it is unknown."""
        return self().verification_key(kid) or self.fresh().verification_key(kid)

    def reload(self) -> KeyRing:
        """Rebuild the ring now, whatever changed."""
        with self._lock:
            self._ring = self.directory.load(self.policy, data_key=self.data_key, now=self.clock())
            self._fingerprint = self.directory.fingerprint()
            self._checked = time.monotonic()
        return self._ring

    def _refresh(self, *, blocking: bool) -> None:
        """Rebuild the ring if the manifest changed or a state change by the clock is due.

        Not ``blocking``: when another thread is already at it, keep the current ring.
        """
        if not self._lock.acquire(blocking=blocking):
            return
        try:
            self._checked = time.monotonic()
            fingerprint = self.directory.fingerprint()
            if fingerprint == self._fingerprint and self.clock() < self._ring.valid_until:
                return
            try:
                self._ring = self.directory.load(
                    self.policy, data_key=self.data_key, now=self.clock()
                )
            except KeyFileError:
                # A broken change must not take a serving process down: keep signing with
                # the ring it has, and say so loudly.
                log.exception("key directory changed but cannot be loaded; keeping the old ring")
                return
            self._fingerprint = self.directory.fingerprint()
        finally:
            self._lock.release()


def _is_next(entry: dict[str, Any], now: float) -> bool:
    return entry.get("revoked_at") is None and entry["activates_at"] > now


def _signer_missing(statuses: list[KeyStatus], policy: KeyPolicy) -> bool:
    """No key signs, or none of the configured algorithm is active or coming."""
    live = [status for status in statuses if status.state in ("active", "next")]
    has_active = any(status.state == "active" for status in live)
    return not has_active or not any(status.alg == policy.alg for status in live)


def _rotation_due(statuses: list[KeyStatus], policy: KeyPolicy, now: float) -> bool:
    if policy.rotation_days <= 0 or any(status.state == "next" for status in statuses):
        return False
    active = next((status for status in statuses if status.state == "active"), None)
    if active is None:
        return False
    return now >= active.activates_at + policy.rotation_days * 86_400 - policy.lead


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
    data = manifest["data"]
    if not isinstance(data["keys"], list) or not all(isinstance(k, str) for k in data["keys"]):
        raise ValueError("data keys must be a list of ids")
    if data.get("active") is not None and data["active"] not in data["keys"]:
        raise ValueError("the active data key is not listed")


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename), mode 0600."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
