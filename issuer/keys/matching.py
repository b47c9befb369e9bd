"""Do the data keys match the data? Check values in the database, checked at start-up.

For each data key the database keeps a *check value*: a known plaintext sealed with that key
(AES-256-GCM, bound to the key id) -- never the key, nor anything from which it could be
found. A start whose key directory (or ``ISSUER_DATA_KEY``) lacks a key the database's rows
or check values name, or holds a key under that id that does not open its check value, does
not match the data: a wrong or empty ``ISSUER_KEYS_DIR``, a lost ``ISSUER_DATA_KEY``. Serving
then would fail every refresh of every existing session, so start-up stops instead, and
``/readyz`` reports the same condition if it arises later.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..sealing import Sealed, Sealer, UnsealError, associated_data
from ..store import Store
from .ring import KeyRing

CHECK_PLAINTEXT = b"issuer data key check value"


def _aad(kid: str) -> bytes:
    return associated_data("data_key_check", kid)


def check_value(key: bytes, kid: str) -> bytes:
    """A fresh check value for data key ``kid``."""
    return Sealer({kid: key}, kid).seal(CHECK_PLAINTEXT, _aad(kid)).blob


def opens(key: bytes, kid: str, value: bytes) -> bool:
    """Does this key open this check value?"""
    try:
        return Sealer({kid: key}, kid).open(Sealed(kid, value), _aad(kid)) == CHECK_PLAINTEXT
    except UnsealError:
        return False


def mismatch(
    data_keys: Mapping[str, bytes], checks: Mapping[str, bytes], sealed_with: set[str]
) -> str | None:
    """Why these keys do not match the data, in one sentence; None when they do.

    :param checks: the check values the database holds, by key id.
    :param sealed_with: the ids of the data keys stored rows are sealed with.
    """
    missing = sorted((set(checks) | sealed_with) - set(data_keys))
    if missing:
        return (
            f"the database holds data sealed with data key {', '.join(missing)}, which "
            "neither ISSUER_KEYS_DIR nor ISSUER_DATA_KEY holds"
        )
    wrong = sorted(kid for kid, value in checks.items() if not opens(data_keys[kid], kid, value))
    if wrong:
        return f"data key {', '.join(wrong)} does not open its check value in the database"
    return None


def record_checks(ring: KeyRing, store: Store, checks: Mapping[str, bytes], now: float) -> None:
    """Store a check value for every data key of the ring that has none yet."""
    for kid, key in ring.data_keys.items():
        if kid not in checks:
            store.add_data_key_check(kid, check_value(key, kid), now)
