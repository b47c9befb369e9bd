"""Refresh-token rotation rules (SPEC §3, RFC 9700 §4.14.2): what a presented token earns.

A pure decision over the session's state; the caller applies it to the store. Kept apart so
the rules read in one screen and are tested without a server.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    ROTATE = "rotate"  # the current token: spend it, answer with its successor
    REPLAY = "replay"  # the previous token inside the grace: answer with the current successor
    REUSE = "reuse"  # an older token, or the previous one after the grace: theft, revoke all
    DEAD = "dead"  # the session is revoked or past its absolute lifetime


@dataclass(frozen=True)
class ChainState:
    """Where a session's refresh chain stands."""

    counter: int  # number of the current (unspent) token
    rotated_at: float | None  # when the current token was minted by a rotation
    expires_at: float  # absolute end of the session; refreshes never move it
    revoked: bool


def judge(presented: int, state: ChainState, *, now: float, grace: float) -> Verdict:
    """Decide what presenting token number ``presented`` earns at ``now``.

    "Within the grace" means strictly less than ``grace`` seconds since the rotation, measured
    with sub-second precision; ``grace == 0`` disables replays altogether.
    """
    if state.revoked or now >= state.expires_at:
        return Verdict.DEAD
    if presented == state.counter:
        return Verdict.ROTATE
    if (
        grace > 0
        and presented == state.counter - 1
        and state.rotated_at is not None
        and now - state.rotated_at < grace
    ):
        return Verdict.REPLAY
    if presented < state.counter:
        return Verdict.REUSE
    # A valid MAC on a number the chain has not reached cannot come from us.
    return Verdict.DEAD
