"""The pure signing-key life cycle of :mod:`issuer.keys.ring`: states from manifest entries
and the clock, and what a revocation may and may not change. No files."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from issuer.keys.ring import (
    KeyPolicy,
    expired,
    key_states,
    next_key_due,
    published,
    revoke_entries,
    rotation_due,
    signer_missing,
)

T0 = 1_700_000_000.0
LIFETIME = 905.0
LEAD = 360.0


def entry(
    kid: str, activates_at: float, created_at: float | None = None, **more: Any
) -> dict[str, Any]:
    made = activates_at if created_at is None else created_at
    return {"kid": kid, "alg": "ES256", "created_at": made, "activates_at": activates_at, **more}


def states(entries: list[dict[str, Any]], now: float) -> dict[str, str]:
    return {status.kid: status.state for status in key_states(entries, now, LIFETIME)}


def fresh_at(now: float) -> Any:
    return lambda: entry("fresh", now)


def test_a_single_key_is_active_from_the_start() -> None:
    assert states([entry("a", T0)], T0) == {"a": "active"}


def test_next_active_retired_expired_and_their_boundaries() -> None:
    entries = [entry("a", T0), entry("b", T0 + 100, created_at=T0 + 10)]
    assert states(entries, T0 + 99.999) == {"a": "active", "b": "next"}
    assert states(entries, T0 + 100) == {"a": "retired", "b": "active"}
    assert states(entries, T0 + 100 + LIFETIME - 0.001) == {"a": "retired", "b": "active"}
    assert states(entries, T0 + 100 + LIFETIME) == {"a": "expired", "b": "active"}
    assert expired(entries, T0 + 100 + LIFETIME, LIFETIME) == {"a"}
    assert published(entries, T0 + 100 + LIFETIME, LIFETIME) == {"b"}


def test_a_lagging_clock_that_sees_no_key_started_lets_the_first_one_sign() -> None:
    assert states([entry("a", T0 + 5), entry("b", T0 + 500)], T0) == {"a": "active", "b": "next"}


def test_a_revoked_key_is_revoked_whatever_its_times() -> None:
    entries = [entry("a", T0), entry("b", T0 + 100, revoked_at=T0 + 50)]
    assert states(entries, T0 + 200) == {"a": "active", "b": "revoked"}


def test_revoking_the_active_key_never_brings_back_an_expired_key() -> None:
    # e signed, then a took over; e's tokens have all expired by `now`, and e is still in the
    # manifest (no write since). A fresh next key n waits.
    now = T0 + 100 + LIFETIME + 5
    entries = [entry("e", T0), entry("a", T0 + 100), entry("n", now + LEAD, created_at=now)]
    assert states(entries, now)["e"] == "expired"

    # What revoking `a` writes: n promoted to now, a revoked. e stays expired.
    by_hand = [entry("e", T0), entry("a", T0 + 100, revoked_at=now), entry("n", now, now)]
    assert states(by_hand, now) == {"e": "expired", "a": "revoked", "n": "active"}
    assert published(by_hand, now, LIFETIME) == {"n"}

    after = revoke_entries(entries, "a", now, LIFETIME, fresh_at(now))
    assert published(after, now, LIFETIME) == {"n"}
    assert "e" not in {item["kid"] for item in after}  # dropped from the manifest too


def test_revoking_the_only_key_makes_a_fresh_one_that_signs_at_once() -> None:
    after = revoke_entries([entry("a", T0)], "a", T0 + 10, LIFETIME, fresh_at(T0 + 10))
    assert states(after, T0 + 10) == {"a": "revoked", "fresh": "active"}


def test_a_next_key_revoked_before_it_signed_retires_nobody() -> None:
    entries = [entry("a", T0), entry("n", T0 + 500, created_at=T0 + 10)]
    after = revoke_entries(entries, "n", T0 + 20, LIFETIME, fresh_at(T0 + 20))
    later = T0 + 500 + LIFETIME + 1
    assert states(after, later) == {"a": "active", "n": "revoked"}


@pytest.mark.parametrize("state", ["expired", "revoked", "unknown"])
def test_only_a_published_key_can_be_revoked(state: str) -> None:
    now = T0 + 100 + LIFETIME
    entries = [
        entry("expired", T0),
        entry("a", T0 + 100),
        entry("revoked", T0 + 50, revoked_at=T0 + 60),
    ]
    with pytest.raises(KeyError):
        revoke_entries(entries, state, now, LIFETIME, fresh_at(now))


def test_no_revocation_ever_publishes_a_key_that_was_not_published() -> None:
    """Every order of revocations over a ring with retired, expired, active and next keys, at
    several moments: only the promoted next key or the fresh key may appear."""
    base = [
        entry("old", T0),
        entry("mid", T0 + 1000),
        entry("act", T0 + 1000 + LIFETIME - 100),
        entry("nxt", T0 + 5000, created_at=T0 + 1500),
    ]
    for moment in (T0 + 1000 + LIFETIME - 50, T0 + 1000 + LIFETIME + 50, T0 + 4000):
        for order in itertools.permutations(["old", "mid", "act", "nxt"]):
            entries = [dict(item) for item in base]
            now = moment
            for kid in order:
                before = published(entries, now, LIFETIME)
                try:
                    entries = revoke_entries(entries, kid, now, LIFETIME, fresh_at(now))
                except KeyError:
                    continue
                after = published(entries, now, LIFETIME)
                assert kid not in after
                assert after - before <= {"nxt", "fresh"}, (moment, order, kid)
                now += 1
                # Nor later, by the clock alone.
                for later in (now + 10, now + LIFETIME, now + 10 * LIFETIME):
                    assert published(entries, later, LIFETIME) <= after | {"nxt"}


def test_signer_missing_and_rotation_due() -> None:
    policy = KeyPolicy("ES256", jwks_max_age=300, rotation_days=1, retired_lifetime=LIFETIME)
    statuses = key_states([entry("a", T0)], T0, LIFETIME)
    assert not signer_missing(statuses, policy)
    assert signer_missing(statuses, KeyPolicy("RS256", 300, 1, LIFETIME))
    assert signer_missing([], policy)
    due = next_key_due(T0, policy)
    assert due == T0 + 86_400 - policy.lead
    assert not rotation_due(key_states([entry("a", T0)], due - 1, LIFETIME), policy, due - 1)
    assert rotation_due(key_states([entry("a", T0)], due, LIFETIME), policy, due)
    with_next = key_states([entry("a", T0), entry("b", due + 500, due)], due, LIFETIME)
    assert not rotation_due(with_next, policy, due)
    off = KeyPolicy("ES256", jwks_max_age=300, rotation_days=0, retired_lifetime=LIFETIME)
    assert not rotation_due(key_states([entry("a", T0)], T0 + 10**8, LIFETIME), off, T0 + 10**8)
