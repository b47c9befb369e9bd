"""Signing keys and data keys: their files in ``ISSUER_KEYS_DIR``, and the loaded key ring.

The directory holds ``keyring.json`` (each signing key's kid, algorithm and state; the active
data key id) beside one file per secret, each written atomically with mode 0600. Whoever
writes holds an exclusive ``flock`` on ``.lock``, so workers or hosts that start together on
an empty directory make exactly one key between them. A file that exists but cannot be read or
parsed stops start-up: a replacement is never generated over it, since that would silently
invalidate every token and every stored ``session_key``.

Signing key states (SPEC §4): *next* (published, not yet signing), *active* (signs),
*retired* (published until every token it signed has expired).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .config import StartupError

MANIFEST = "keyring.json"
LOCK = ".lock"
MANIFEST_VERSION = 1
STATES = ("next", "active", "retired")
RSA_KEY_BITS = 2048

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
class SigningKey:
    """One signing key with its place in the life cycle."""

    kid: str
    alg: str
    state: str
    private_key: PrivateKey = field(repr=False)
    jwk: dict[str, str]
    created_at: float
    activated_at: float | None = None
    retired_at: float | None = None

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()


@dataclass(frozen=True)
class KeyRing:
    """The keys one process signs and verifies with, and the JWKS built from them once.

    ``keys`` lists every key that verifies (next, active, retired); exactly one is active.
    """

    keys: tuple[SigningKey, ...]
    data_keys: Mapping[str, bytes] = field(repr=False)
    active_data_kid: str
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


class KeyDirectory:
    """The key files of one ``ISSUER_KEYS_DIR``: reads them, and creates what is missing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(
        self,
        alg: str,
        *,
        retired_lifetime: float,
        data_key: bytes | None = None,
        now: float | None = None,
    ) -> KeyRing:
        """Load the key ring, creating a signing key of ``alg`` and a data key if none exist.

        A configured ``alg`` that differs from the active key's makes a new active key of
        ``alg``; the old one is retired and stays published for ``retired_lifetime`` seconds.

        :param data_key: ``ISSUER_DATA_KEY``; when given it is the active data key.
        :raises KeyFileError: the directory or a key file cannot be read or is corrupt.
        """
        now = time.time() if now is None else now
        self._ensure_directory()
        # Shared lock: a writer puts key files in place before the manifest that names them.
        with self._locked(exclusive=False):
            manifest = self._read_manifest()
        if self._needs_writing(manifest, alg, data_key):
            with self._locked(exclusive=True):
                manifest = self._read_manifest()  # another process may have written it
                if self._needs_writing(manifest, alg, data_key):
                    manifest = self._complete(manifest, alg, data_key, now)
        return self._ring(manifest, data_key, now, retired_lifetime)

    # -- reading

    def _ensure_directory(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise KeyFileError(
                f"ISSUER_KEYS_DIR: cannot create {self.path}: {error.strerror}"
            ) from None
        if not os.access(self.path, os.R_OK | os.W_OK | os.X_OK):
            raise KeyFileError(f"ISSUER_KEYS_DIR: {self.path} is not readable and writable")

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
            if manifest.get("version") != MANIFEST_VERSION:
                raise ValueError("unknown version")
            for entry in manifest["signing"]:
                if not {"kid", "alg", "state", "created_at"} <= set(entry):
                    raise ValueError("incomplete signing entry")
                if entry["state"] not in STATES:
                    raise ValueError("unknown state")
                if entry["state"] == "retired" and not isinstance(
                    entry.get("retired_at"), int | float
                ):
                    raise ValueError("retired key without retired_at")
            if not isinstance(manifest["data"]["keys"], list):
                raise ValueError("data keys must be a list")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyFileError(f"{file} is corrupt; restore it from backup") from None
        return dict(manifest)

    def _needs_writing(
        self, manifest: dict[str, Any] | None, alg: str, data_key: bytes | None
    ) -> bool:
        if manifest is None:
            return True
        active = [entry for entry in manifest["signing"] if entry["state"] == "active"]
        if len(active) != 1 or active[0]["alg"] != alg:
            return True
        return data_key is None and not manifest["data"].get("active")

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
        self,
        manifest: dict[str, Any] | None,
        data_key: bytes | None,
        now: float,
        retired_lifetime: float,
    ) -> KeyRing:
        assert manifest is not None
        keys = []
        for entry in manifest["signing"]:
            retired_at = entry.get("retired_at")
            if entry["state"] == "retired" and retired_at + retired_lifetime < now:
                continue  # every token it signed has expired
            private_key = self._read_private_key(entry["kid"], entry["alg"])
            jwk = public_jwk(private_key.public_key())
            if thumbprint(jwk) != entry["kid"]:
                file = self.path / f"signing-{entry['kid']}.pem"
                raise KeyFileError(f"signing key {file} does not match its kid; restore it")
            keys.append(
                SigningKey(
                    kid=entry["kid"],
                    alg=entry["alg"],
                    state=entry["state"],
                    private_key=private_key,
                    jwk=jwk,
                    created_at=entry["created_at"],
                    activated_at=entry.get("activated_at"),
                    retired_at=retired_at,
                )
            )
        data_keys = {kid: self._read_data_key(kid) for kid in manifest["data"]["keys"]}
        active_data_kid = manifest["data"].get("active")
        if data_key is not None:
            active_data_kid = data_key_id(data_key)
            data_keys[active_data_kid] = data_key
        return KeyRing(tuple(keys), data_keys, active_data_kid)

    # -- writing (only under the lock)

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

    def _complete(
        self, manifest: dict[str, Any] | None, alg: str, data_key: bytes | None, now: float
    ) -> dict[str, Any]:
        manifest = manifest or {"version": MANIFEST_VERSION, "signing": [], "data": {"keys": []}}
        signing = [dict(entry) for entry in manifest["signing"]]
        active = [entry for entry in signing if entry["state"] == "active"]
        if len(active) != 1 or active[0]["alg"] != alg:
            for entry in active:
                entry.update(state="retired", retired_at=now)
            signing.append(self._new_signing_key(alg, now))
        data = dict(manifest["data"])
        if data_key is None and not data.get("active"):
            kid = self._new_data_key()
            data = {"active": kid, "keys": [*data["keys"], kid]}
        manifest = {**manifest, "signing": signing, "data": data}
        write_secret(self.path / MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
        return manifest

    def _new_signing_key(self, alg: str, now: float) -> dict[str, Any]:
        private_key = generate_private_key(alg)
        kid = thumbprint(public_jwk(private_key.public_key()))
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_secret(self.path / f"signing-{kid}.pem", pem)
        return {"kid": kid, "alg": alg, "state": "active", "created_at": now, "activated_at": now}

    def _new_data_key(self) -> str:
        key = os.urandom(32)
        kid = data_key_id(key)
        write_secret(self.path / f"data-{kid}.key", b64url(key).encode() + b"\n")
        return kid


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
