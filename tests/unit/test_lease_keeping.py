"""The lease keeper's decisions: pending wake-ups as a set, most urgent first, none lost."""

from pyflannel.subnet.keeping import (
    TRANSITIONS,
    Action,
    State,
    Wake,
    after_reacquire,
    allowed,
    decide,
)


def test_new_attrs_then_verify_does_both_readvertise_first():
    pending = {Wake.ATTRS: "", Wake.VERIFY: ""}
    action, wake = decide(pending, renewal_due=False)
    assert (action, wake) == (Action.READVERTISE, Wake.ATTRS)
    pending.pop(wake)
    assert decide(pending, renewal_due=False) == (Action.CHECK, Wake.VERIFY)


def test_a_conflict_beats_everything_and_a_loss_beats_checks():
    every = {w: "" for w in Wake}
    assert decide(every, renewal_due=True)[0] is Action.STOP
    assert decide({Wake.LOST: "x", Wake.VERIFY: ""}, renewal_due=True)[0] is Action.REACQUIRE


def test_renew_only_when_due_and_nothing_pending():
    assert decide({}, renewal_due=True) == (Action.RENEW, None)
    assert decide({}, renewal_due=False) == (Action.WAIT, None)
    assert decide({Wake.REPAIR: ""}, renewal_due=True) == (Action.REPAIR, Wake.REPAIR)


def test_after_a_reacquire_only_new_attributes_still_matter():
    assert after_reacquire({Wake.ATTRS: "", Wake.VERIFY: "", Wake.REPAIR: ""}) == {Wake.ATTRS: ""}


def test_transitions_conflict_is_final_and_work_returns_to_holding():
    assert TRANSITIONS[State.CONFLICT] == frozenset()
    assert allowed(State.HOLDING, State.RENEWING) and allowed(State.RENEWING, State.HOLDING)
    assert allowed(State.CHECKING, State.REACQUIRING)
    assert not allowed(State.ACQUIRING, State.RENEWING)
    assert set(TRANSITIONS) == set(State)
