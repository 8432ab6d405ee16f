"""The lease keeper's states and decisions, as data and a pure function.

Modelled on pyroute2's DHCP client: the states are an enum, the allowed transitions one table,
and what to do next is decided from the set of pending wake-ups and whether the renewal timer
is due. Wake-ups are kept in a set (with a detail each), so none is lost: an underlay change
("advertise new attributes") followed by a re-list ("verify our key") before the loop runs
does both, in order of urgency.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Wake(enum.Enum):
    """Why the keeper should act before its renewal timer."""

    CONFLICT = "conflict"  # another node with our public IP rewrote our lease: stop
    LOST = "lost"  # deleted, expired or taken: re-acquire
    REPAIR = "repair"  # an undecodable value over our key: put ours back
    ATTRS = "attrs"  # advertise new attributes (the underlay changed)
    VERIFY = "verify"  # events may have been missed: check our key


class Action(enum.Enum):
    STOP = "stop"
    REACQUIRE = "reacquire"
    REPAIR = "repair"
    READVERTISE = "readvertise"
    CHECK = "check"
    RENEW = "renew"
    WAIT = "wait"


class State(enum.Enum):
    ACQUIRING = "acquiring"
    HOLDING = "holding"
    RENEWING = "renewing"
    CHECKING = "checking"
    REPAIRING = "repairing"
    READVERTISING = "readvertising"
    REACQUIRING = "reacquiring"
    CONFLICT = "conflict"  # final: the daemon stops with the conflict error


# Most urgent first: a conflict ends everything; a lost lease makes checks moot.
PRIORITY = (Wake.CONFLICT, Wake.LOST, Wake.REPAIR, Wake.ATTRS, Wake.VERIFY)

ACTION_FOR = {
    Wake.CONFLICT: Action.STOP,
    Wake.LOST: Action.REACQUIRE,
    Wake.REPAIR: Action.REPAIR,
    Wake.ATTRS: Action.READVERTISE,
    Wake.VERIFY: Action.CHECK,
}

STATE_FOR = {
    Action.STOP: State.CONFLICT,
    Action.REACQUIRE: State.REACQUIRING,
    Action.REPAIR: State.REPAIRING,
    Action.READVERTISE: State.READVERTISING,
    Action.CHECK: State.CHECKING,
    Action.RENEW: State.RENEWING,
}

_WORKING = (State.RENEWING, State.CHECKING, State.REPAIRING, State.READVERTISING)
TRANSITIONS: dict[State, frozenset[State]] = {
    State.ACQUIRING: frozenset({State.HOLDING, State.CONFLICT}),
    State.HOLDING: frozenset({*_WORKING, State.REACQUIRING, State.CONFLICT}),
    **{s: frozenset({State.HOLDING, State.REACQUIRING, State.CONFLICT}) for s in _WORKING},
    State.REACQUIRING: frozenset({State.HOLDING, State.CONFLICT}),
    State.CONFLICT: frozenset(),
}


def decide(pending: Mapping[Wake, str], renewal_due: bool) -> tuple[Action, Wake | None]:
    """What to do now: the most urgent pending wake-up, else renew if due, else wait."""
    for wake in PRIORITY:
        if wake in pending:
            return ACTION_FOR[wake], wake
    return (Action.RENEW if renewal_due else Action.WAIT), None


def after_reacquire(pending: Mapping[Wake, str]) -> dict[Wake, str]:
    """Wake-ups that still matter once a lease was acquired anew: only new attributes (the
    checks and repairs were about the old lease)."""
    return {w: d for w, d in pending.items() if w is Wake.ATTRS}


def allowed(old: State, new: State) -> bool:
    return new in TRANSITIONS[old]
