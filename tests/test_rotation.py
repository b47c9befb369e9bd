"""The pure refresh-token rotation rules of :mod:`issuer.rotation` (RFC 9700 §4.14.2): what
presenting token number *n* earns, for every verdict, at the grace boundary, and with the
grace off. No store, no server."""

from __future__ import annotations

import pytest

from issuer.rotation import ChainState, Verdict, judge

NOW = 1_700_000_000.0
GRACE = 10.0


def chain(
    counter: int = 5,
    rotated_at: float | None = NOW - 1,
    expires_at: float = NOW + 3600,
    revoked: bool = False,
) -> ChainState:
    return ChainState(counter, rotated_at, expires_at, revoked)


def test_the_current_token_rotates() -> None:
    assert judge(5, chain(), now=NOW, grace=GRACE) is Verdict.ROTATE


def test_the_first_token_of_a_fresh_session_rotates() -> None:
    assert judge(0, chain(counter=0, rotated_at=None), now=NOW, grace=GRACE) is Verdict.ROTATE


def test_the_previous_token_within_the_grace_replays() -> None:
    assert judge(4, chain(), now=NOW, grace=GRACE) is Verdict.REPLAY


def test_the_grace_is_strict_and_sub_second() -> None:
    state = chain(rotated_at=NOW - GRACE)
    assert judge(4, state, now=NOW - 0.001, grace=GRACE) is Verdict.REPLAY
    assert judge(4, state, now=NOW, grace=GRACE) is Verdict.REUSE
    assert judge(4, state, now=NOW + 0.001, grace=GRACE) is Verdict.REUSE


def test_a_grace_of_zero_never_replays() -> None:
    assert judge(4, chain(rotated_at=NOW), now=NOW, grace=0) is Verdict.REUSE
    assert judge(5, chain(rotated_at=NOW), now=NOW, grace=0) is Verdict.ROTATE


def test_an_older_token_is_reuse_even_within_the_grace() -> None:
    assert judge(3, chain(), now=NOW, grace=GRACE) is Verdict.REUSE
    assert judge(0, chain(), now=NOW, grace=GRACE) is Verdict.REUSE


def test_the_previous_token_without_a_recorded_rotation_is_reuse() -> None:
    assert judge(4, chain(rotated_at=None), now=NOW, grace=GRACE) is Verdict.REUSE


def test_a_number_the_chain_has_not_reached_is_dead() -> None:
    assert judge(6, chain(), now=NOW, grace=GRACE) is Verdict.DEAD


@pytest.mark.parametrize("presented", [3, 4, 5, 6])
def test_a_revoked_session_is_dead_whatever_is_presented(presented: int) -> None:
    assert judge(presented, chain(revoked=True), now=NOW, grace=GRACE) is Verdict.DEAD


@pytest.mark.parametrize("presented", [3, 4, 5])
def test_a_session_past_its_lifetime_is_dead_from_the_exact_second(presented: int) -> None:
    state = chain(expires_at=NOW)
    assert judge(presented, state, now=NOW, grace=GRACE) is Verdict.DEAD
    alive = judge(presented, state, now=NOW - 0.001, grace=GRACE)
    assert alive is not Verdict.DEAD


def test_the_grace_never_extends_the_lifetime() -> None:
    state = chain(rotated_at=NOW - 1, expires_at=NOW)
    assert judge(4, state, now=NOW, grace=GRACE) is Verdict.DEAD
