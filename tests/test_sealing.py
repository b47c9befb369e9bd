"""Encryption at rest (SPEC §4 data key): AES-256-GCM bound to its row, with rotatable keys."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from issuer.sealing import Sealed, Sealer, UnsealError, associated_data

KEY_A = os.urandom(32)
KEY_B = os.urandom(32)
APPID = "wx0123456789abcdef"
OPENID = "oGZUI0egBJY1zhBYw2KhdUfwVJJE"
AAD = associated_data("session_key", APPID, OPENID)
SESSION_KEY = b"tiihtNczf5v6AKRyjwEUhQ=="


def sealer_a() -> Sealer:
    return Sealer({"a": KEY_A}, "a")


@pytest.mark.parametrize(
    "plaintext", [b"", b"x", SESSION_KEY, os.urandom(1000)], ids=["empty", "one", "key", "1k"]
)
def test_seal_then_open_gives_the_plaintext_back(plaintext: bytes) -> None:
    sealer = sealer_a()
    sealed = sealer.seal(plaintext, AAD)
    assert sealed.kid == "a"
    if len(plaintext) >= 16:  # shorter strings turn up in random bytes by chance
        assert plaintext not in sealed.blob
    assert sealer.open(sealed, AAD) == plaintext


@pytest.mark.parametrize(
    "other",
    [
        associated_data("session_key", "wxfedcba9876543210", OPENID),
        associated_data("session_key", APPID, "oGZUI0egBJY1zhBYw2KhdUfwVJJF"),
        associated_data("phone_number", APPID, OPENID),
        associated_data("session_key", APPID),
        b"",
    ],
    ids=["other appid", "other openid", "other purpose", "missing openid", "empty"],
)
def test_other_associated_data_does_not_open(other: bytes) -> None:
    sealer = sealer_a()
    sealed = sealer.seal(SESSION_KEY, AAD)
    with pytest.raises(UnsealError):
        sealer.open(sealed, other)


def flip(index: int) -> Callable[[bytes], bytes]:
    def change(blob: bytes) -> bytes:
        data = bytearray(blob)
        data[index] ^= 0x01
        return bytes(data)

    return change


TAMPERING: dict[str, Callable[[bytes], bytes]] = {
    "bit flipped in the nonce": flip(0),
    "bit flipped in the ciphertext": flip(12),
    "bit flipped in the last ciphertext byte": flip(12 + len(SESSION_KEY) - 1),
    "bit flipped in the tag": flip(-1),
    "byte appended": lambda blob: blob + b"\x00",
    "tag cut short": lambda blob: blob[:-1],
    "nonce only": lambda blob: blob[:12],
    "shorter than a nonce": lambda blob: blob[:5],
    "empty": lambda blob: b"",
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampered_blob_does_not_open(tamper: Callable[[bytes], bytes]) -> None:
    sealer = sealer_a()
    sealed = sealer.seal(SESSION_KEY, AAD)
    with pytest.raises(UnsealError):
        sealer.open(Sealed(sealed.kid, tamper(sealed.blob)), AAD)


def test_unknown_key_id_does_not_open() -> None:
    sealed = sealer_a().seal(SESSION_KEY, AAD)
    with pytest.raises(UnsealError):
        Sealer({"b": KEY_B}, "b").open(sealed, AAD)


def test_another_key_under_the_same_id_does_not_open() -> None:
    sealed = sealer_a().seal(SESSION_KEY, AAD)
    with pytest.raises(UnsealError):
        Sealer({"a": KEY_B}, "a").open(sealed, AAD)


def test_each_seal_uses_a_fresh_nonce() -> None:
    sealer = sealer_a()
    blobs = [sealer.seal(SESSION_KEY, AAD).blob for _ in range(20)]
    assert len(set(blobs)) == len(blobs)
    assert len({blob[:12] for blob in blobs}) == len(blobs)


def test_old_key_still_opens_after_the_active_key_changes() -> None:
    before = sealer_a().seal(SESSION_KEY, AAD)
    rotated = Sealer({"a": KEY_A, "b": KEY_B}, "b")
    after = rotated.seal(SESSION_KEY, AAD)
    assert after.kid == "b"
    assert rotated.open(before, AAD) == SESSION_KEY
    assert rotated.open(after, AAD) == SESSION_KEY
    with pytest.raises(UnsealError):
        sealer_a().open(after, AAD)  # the old sealer does not know the new key


def test_active_key_must_be_among_the_keys() -> None:
    with pytest.raises(ValueError, match="active"):
        Sealer({"a": KEY_A}, "b")


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("p", "ab", "c"), ("p", "a", "bc")),
        (("pa", "b"), ("p", "ab")),
        (("p", "", "a"), ("p", "a", "")),
        (("p", "a"), ("p", "a", "")),
        (("p", "ä"), ("p", "a")),
    ],
)
def test_associated_data_never_collides(left: tuple[str, ...], right: tuple[str, ...]) -> None:
    assert associated_data(*left) != associated_data(*right)


def test_associated_data_encoding_is_pinned() -> None:
    # Stored ciphertexts depend on these exact bytes: changing the encoding would make every
    # stored session_key unreadable.
    assert associated_data("p", "ab", "c") == b"\x00\x01p\x00\x02ab\x00\x01c"
