"""Data-key rotation: re-seal every stored secret with the active data key.

A new data key seals new secrets at once (every process follows the key ring); this walks
the rows still sealed with older keys, re-seals each with the active key (a compare-and-swap,
so a row rewritten meanwhile is simply left to its writer), and reports which old keys no row
needs any more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..sealing import AAD_OF_KIND, Seals, UnsealError
from ..store import Store

log = logging.getLogger("issuer.datakeys")

BATCH = 500


@dataclass(frozen=True)
class ResealReport:
    resealed: int
    unreadable: int  # rows no known data key opens (they stay as they are)
    remaining: dict[str, int]  # data key id -> rows it still seals


def reseal_all(store: Store, sealer: Seals) -> ResealReport:
    """Re-seal every stored secret not sealed with the active data key."""
    resealed = 0
    unreadable: set[tuple[str, tuple[str, ...]]] = set()
    while True:
        rows = [
            row
            for row in store.sealed_rows(sealer.active_kid, BATCH + len(unreadable))
            if (row.kind, row.key) not in unreadable
        ]
        if not rows:
            break
        for row in rows:
            aad = AAD_OF_KIND[row.kind](*row.key)
            try:
                plaintext = sealer.open(row.sealed, aad)
            except UnsealError:
                log.error("a stored %s cannot be opened with any known data key", row.kind)
                unreadable.add((row.kind, row.key))
                continue
            if store.replace_sealed(row, sealer.seal(plaintext, aad)):
                resealed += 1
    return ResealReport(resealed, len(unreadable), store.sealed_kid_counts())
