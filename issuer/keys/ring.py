"""The signing-key life cycle as pure functions of the manifest and the clock (no files).

A key's state follows from its manifest entry and ``now`` alone, so every worker and host that
shares a key directory agrees without further writes (RFC 7517 for the published form):

- *next*: published, not yet signing: its ``activates_at`` is in the future. A rotation
  announces a key ``jwks_max_age`` + a margin ahead, so every verifier's cached JWKS already
  holds it when its first token arrives;
- *active*: the key with the latest ``activates_at`` that has passed: it signs;
- *retired*: an earlier key, published until every token it signed has expired (its
  successor's ``activates_at`` + the access token lifetime + leeway), then dropped;
- *revoked*: ``revoked_at`` set: dropped from the JWKS and from verification at once.

Also here: JWK export and the RFC 7638 thumbprint that is each key's ``kid``, and the
:class:`KeyRing` a process signs and verifies with. :mod:`issuer.keys.directory` owns the files.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ..errors import KeyFileError

MANIFEST = "keyring.json"
RSA_KEY_BITS = 2048
SIGNING_ALGORITHMS = ("ES256", "RS256", "EdDSA")
# Announced keys wait this long beyond the JWKS max-age before they sign.
PUBLISH_MARGIN = 60.0

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

# RFC 7638 §3.2: the members of each key type that its thumbprint covers.
THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


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


def key_matches(alg: str, key: Any) -> bool:
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
    # The manifest's generation this ring was built from: workers report it to the CLI.
    generation: int = 0
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


def _signed_from(entry: Mapping[str, Any]) -> float:
    """When a key began signing (or will): never before it was made."""
    return max(float(entry["activates_at"]), float(entry["created_at"]))


def _started(entry: Mapping[str, Any], now: float) -> bool:
    """The key signed at some point before ``now``. A revoked key only if it signed before
    its revocation: a next key revoked before its time never signed."""
    revoked_at = entry.get("revoked_at")
    start = _signed_from(entry)
    return start <= now and (revoked_at is None or start < revoked_at)


def _order(entry: Mapping[str, Any]) -> tuple[float, float]:
    return (entry["activates_at"], entry["created_at"])


def key_states(
    entries: list[dict[str, Any]], now: float, retired_lifetime: float
) -> list[KeyStatus]:
    """The state of every signing key at ``now``, from the manifest entries alone.

    A key stops signing when the next key that *did* sign started -- revoked keys included.
    So revoking the active key cannot move an older key's retirement forward and bring a key
    that had already left the JWKS back: retirement times only ever depend on keys that
    signed, and a revocation never changes when a key signed.
    """
    live = sorted((entry for entry in entries if entry.get("revoked_at") is None), key=_order)
    started = [entry for entry in live if entry["activates_at"] <= now]
    # A host whose clock lags the writer's may see no key started yet: the first one signs.
    active = started[-1] if started else (live[0] if live else None)
    signed = sorted((entry for entry in entries if _started(entry, now)), key=_order)
    statuses: list[KeyStatus] = []
    for entry in live:
        retired_at = unpublish_at = None
        if entry is active:
            state = "active"
        elif active is not None and _order(entry) > _order(active):
            state = "next"
        else:
            retired_at = min(
                (_signed_from(later) for later in signed if _order(later) > _order(entry)),
                default=now,
            )
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


def published(entries: list[dict[str, Any]], now: float, retired_lifetime: float) -> set[str]:
    """The kids the JWKS carries at ``now``: next, active and retired keys."""
    return {
        status.kid
        for status in key_states(entries, now, retired_lifetime)
        if status.state in ("next", "active", "retired")
    }


def expired(entries: list[dict[str, Any]], now: float, retired_lifetime: float) -> set[str]:
    """The kids of retired keys whose tokens have all expired: they leave the manifest."""
    return {
        status.kid
        for status in key_states(entries, now, retired_lifetime)
        if status.state == "expired"
    }


def revoke_entries(
    entries: list[dict[str, Any]],
    kid: str,
    now: float,
    retired_lifetime: float,
    fresh: Callable[[], dict[str, Any]],
) -> list[dict[str, Any]]:
    """The manifest entries after revoking ``kid`` at ``now`` (expired keys dropped).

    Revoking the active key first promotes the earliest next key (or ``fresh()``, a new key
    signing from ``now``), so signing never stops. No key outside the JWKS before comes back:
    only the promoted or fresh key can be published afterwards that was not before.

    :raises KeyError: ``kid`` is not a published key.
    """
    states = {status.kid: status.state for status in key_states(entries, now, retired_lifetime)}
    if states.get(kid) not in ("next", "active", "retired"):
        raise KeyError(kid)
    gone = expired(entries, now, retired_lifetime)
    changed = [dict(entry) for entry in entries if entry["kid"] not in gone]
    if states[kid] == "active":
        upcoming = [entry for entry in changed if states.get(entry["kid"]) == "next"]
        if upcoming:
            min(upcoming, key=_order)["activates_at"] = now
        else:
            changed.append(fresh())
    for entry in changed:
        if entry["kid"] == kid:
            entry["revoked_at"] = now
    return changed


def is_next(entry: Mapping[str, Any], now: float) -> bool:
    """A live manifest entry that has not started signing."""
    return entry.get("revoked_at") is None and entry["activates_at"] > now


def signer_missing(statuses: list[KeyStatus], policy: KeyPolicy) -> bool:
    """No key signs, or none of the configured algorithm is active or coming."""
    live = [status for status in statuses if status.state in ("active", "next")]
    has_active = any(status.state == "active" for status in live)
    return not has_active or not any(status.alg == policy.alg for status in live)


def next_key_due(active_since: float, policy: KeyPolicy) -> float:
    """When the automatic rotation must publish the next key of a key active since
    ``active_since``: early enough that it is announced ``policy.lead`` before it signs."""
    return active_since + policy.rotation_days * 86_400 - policy.lead


def rotation_due(statuses: list[KeyStatus], policy: KeyPolicy, now: float) -> bool:
    """The automatic rotation is on, no next key is published, and the active key's is due."""
    if policy.rotation_days <= 0 or any(status.state == "next" for status in statuses):
        return False
    active = next((status for status in statuses if status.state == "active"), None)
    return active is not None and now >= next_key_due(active.activates_at, policy)
