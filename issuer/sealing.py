"""Encryption at rest of the WeChat secrets issuer stores (``session_key``, session secrets).

AES-256-GCM with a fresh 96-bit nonce per value. The associated data binds each ciphertext to
the row it belongs to -- ``(purpose, appid, openid)`` for a ``session_key`` -- so a ciphertext
copied onto another row does not decrypt. The id of the data key travels beside the
ciphertext, so keys can be rotated while old rows stay readable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class UnsealError(Exception):
    """A stored value cannot be decrypted: unknown key id, or tampered or misplaced data."""


def associated_data(purpose: str, *parts: str) -> bytes:
    """Length-prefixed, so ("ab", "c") and ("a", "bc") never collide."""
    fields = (purpose, *parts)
    return b"".join(len(item.encode()).to_bytes(2, "big") + item.encode() for item in fields)


# What each stored secret is bound to. A ciphertext opens only in its own row.
def session_key_aad(appid: str, openid: str) -> bytes:
    return associated_data("session_key", appid, openid)


def phone_aad(appid: str, openid: str) -> bytes:
    return associated_data("phone_number", appid, openid)


def refresh_secret_aad(sid: str) -> bytes:
    return associated_data("refresh_secret", sid)


def server_token_aad(appid: str) -> bytes:
    return associated_data("server_token", appid)


# Stored secret kinds (as the store names them) -> how their associated data is made from
# the row's key columns.
AAD_OF_KIND: dict[str, Callable[..., bytes]] = {
    "session_key": session_key_aad,
    "phone": phone_aad,
    "refresh_secret": refresh_secret_aad,
    "server_token": server_token_aad,
}


@dataclass(frozen=True)
class Sealed:
    """A ciphertext (nonce + ciphertext + tag) and the id of the key that made it."""

    kid: str
    blob: bytes = field(repr=False)


class Seals(Protocol):
    """What the rest of issuer needs: seal with the active key, open with any known one."""

    @property
    def active_kid(self) -> str: ...

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed: ...

    def open(self, sealed: Sealed, aad: bytes) -> bytes: ...


class Sealer:
    """Seals with the active data key; opens with any known one."""

    def __init__(self, keys: Mapping[str, bytes], active_kid: str) -> None:
        if active_kid not in keys:
            raise ValueError("the active data key is not among the keys")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._active_kid = active_kid

    @property
    def active_kid(self) -> str:
        return self._active_kid

    def knows(self, kid: str) -> bool:
        """Whether this sealer holds the data key ``kid``."""
        return kid in self._ciphers

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        blob = nonce + self._ciphers[self.active_kid].encrypt(nonce, plaintext, aad)
        return Sealed(self.active_kid, blob)

    def open(self, sealed: Sealed, aad: bytes) -> bytes:
        """:raises UnsealError: unknown key id, or the ciphertext or its context changed."""
        cipher = self._ciphers.get(sealed.kid)
        if cipher is None:
            raise UnsealError(f"unknown data key {sealed.kid}")
        nonce, body = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        try:
            return cipher.decrypt(nonce, body, aad)
        except (InvalidTag, ValueError) as error:  # ValueError: too short to hold a nonce
            raise UnsealError("ciphertext does not authenticate") from error


class LiveSealer:
    """A :class:`Sealer` that follows the data keys of the current key ring, so a data-key
    rotation made by any process is used here within seconds."""

    def __init__(
        self,
        source: Callable[[], tuple[Mapping[str, bytes], str]],
        refresh: Callable[[], object] | None = None,
    ) -> None:
        """:param source: returns (data keys by id, active id); the same mapping object for
            as long as the keys do not change.
        :param refresh: looks at the keys again now (the key directory's manifest), before a
            value sealed with a key this process does not know yet is called unreadable: a
            rotation made by another process is seen here within seconds, and a value that
            process sealed with its new key may arrive first.
        """
        self._source = source
        self._refresh = refresh
        self._cached: tuple[Mapping[str, bytes], Sealer] | None = None

    def _current(self) -> Sealer:
        keys, active = self._source()
        cached = self._cached
        if cached is None or cached[0] is not keys or cached[1].active_kid != active:
            cached = (keys, Sealer(keys, active))
            self._cached = cached
        return cached[1]

    @property
    def active_kid(self) -> str:
        return self._current().active_kid

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        return self._current().seal(plaintext, aad)

    def open(self, sealed: Sealed, aad: bytes) -> bytes:
        current = self._current()
        if not current.knows(sealed.kid) and self._refresh is not None:
            self._refresh()
            current = self._current()
        return current.open(sealed, aad)
