"""The worker's session lifecycle (whatsapp/worker/lifecycle.py): the table of
what each event does to each state, and the rules that hold for every pair.

Pure: no database, no loop. The I/O around it (whatsapp/worker/session.py)
is exercised with the scripted transport in test_worker_supervisor.py and
with real processes in the e2e tests.
"""

import itertools

import pytest

from whatsapp.worker.lifecycle import (
    WITH_CLIENT,
    Action,
    Ending,
    Event,
    Lifecycle,
    Phase,
    step,
)

A = Action
E = Event
OWNED, HANDING_OVER, CLOSED = Ending.OWNED, Ending.HANDING_OVER, Ending.CLOSED


def s(phase=Phase.IDLE, ending=OWNED, ever_connected=False, qr_recorded=False):
    return Lifecycle(phase, ending, ever_connected, qr_recorded)


IDLE = s()
STARTING = s(Phase.STARTING)
PAIRING = s(Phase.AWAITING_PAIRING, qr_recorded=True)
UP = s(Phase.CONNECTED, ever_connected=True)
DROPPED = s(Phase.DROPPED, ever_connected=True)

# (state, event, next state, actions in order)
TABLE = [
    # a connect attempt: announce, create, then the client's first answer
    (IDLE, E.ANNOUNCE, s(Phase.ANNOUNCED), ()),
    (s(Phase.ANNOUNCED), E.CREATED, STARTING, ()),
    (s(Phase.ANNOUNCED, qr_recorded=True), E.CREATED, STARTING, ()),  # a new client's first QR
    (STARTING, E.CONNECTED, UP, (A.RECORD_CONNECTED, A.SETTLE_ATTEMPT, A.DRAIN)),
    (STARTING, E.QR, PAIRING, (A.RECORD_QR, A.SETTLE_ATTEMPT, A.NUDGE)),
    (PAIRING, E.QR, PAIRING, (A.REFRESH_QR, A.SETTLE_ATTEMPT, A.NUDGE)),
    (
        PAIRING,
        E.CONNECTED,
        s(Phase.CONNECTED, ever_connected=True, qr_recorded=True),
        (A.RECORD_CONNECTED, A.SETTLE_ATTEMPT, A.DRAIN),
    ),
    # only one attempt at a time; none once closed
    (s(Phase.ANNOUNCED), E.ANNOUNCE, s(Phase.ANNOUNCED), ()),
    (UP, E.ANNOUNCE, UP, ()),
    (s(ending=CLOSED), E.ANNOUNCE, s(ending=CLOSED), ()),
    (s(ending=HANDING_OVER), E.ANNOUNCE, s(Phase.ANNOUNCED, HANDING_OVER), ()),
    (IDLE, E.CREATED, IDLE, ()),
    # drops and reconnects
    (UP, E.DISCONNECTED, DROPPED, (A.RECORD_RECONNECTING,)),
    (DROPPED, E.DISCONNECTED, DROPPED, ()),
    (STARTING, E.DISCONNECTED, STARTING, ()),
    (PAIRING, E.DISCONNECTED, PAIRING, ()),
    (DROPPED, E.CONNECTED, UP, (A.RECORD_RECONNECTED, A.SETTLE_ATTEMPT, A.DRAIN)),
    (UP, E.CONNECTED, UP, (A.RECORD_CONNECTED, A.SETTLE_ATTEMPT, A.DRAIN)),
    # a new client after one that was up: its Connected is a reconnect
    (
        s(Phase.STARTING, ever_connected=True),
        E.CONNECTED,
        UP,
        (A.RECORD_RECONNECTED, A.SETTLE_ATTEMPT, A.DRAIN),
    ),
    # stopping: a client is stopped, recorded, and its attempt settled
    (
        UP,
        E.CLIENT_STOPPED,
        s(ever_connected=True),
        (A.STOP_CLIENT, A.RECORD_STOPPED, A.SETTLE_ATTEMPT),
    ),
    (STARTING, E.CLIENT_STOPPED, IDLE, (A.STOP_CLIENT, A.RECORD_STOPPED, A.SETTLE_ATTEMPT)),
    (
        PAIRING,
        E.CLIENT_STOPPED,
        s(qr_recorded=True),
        (A.STOP_CLIENT, A.RECORD_STOPPED, A.SETTLE_ATTEMPT),
    ),
    (s(Phase.ANNOUNCED), E.CLIENT_STOPPED, IDLE, (A.RECORD_NEVER_STARTED,)),
    (IDLE, E.CLIENT_STOPPED, IDLE, ()),
    # closing: hand-over first (a send in flight finishes), then closed for good
    (UP, E.HAND_OVER, s(Phase.CONNECTED, HANDING_OVER, ever_connected=True), ()),
    (s(Phase.CONNECTED, HANDING_OVER, True), E.CLOSE, s(Phase.CONNECTED, CLOSED, True), ()),
    (
        s(Phase.CONNECTED, CLOSED, True),
        E.CLIENT_STOPPED,
        s(ending=CLOSED, ever_connected=True),
        (A.STOP_CLIENT, A.RECORD_STOPPED, A.SETTLE_ATTEMPT),
    ),
    (s(Phase.ANNOUNCED, CLOSED), E.CLIENT_STOPPED, s(ending=CLOSED), (A.RECORD_NEVER_STARTED,)),
    (s(ending=CLOSED), E.HAND_OVER, s(ending=CLOSED), ()),
    (IDLE, E.CLOSE, s(ending=CLOSED), ()),
    # while handing over the client's events are still recorded, but nothing is sent
    (
        s(Phase.STARTING, HANDING_OVER),
        E.CONNECTED,
        s(Phase.CONNECTED, HANDING_OVER, ever_connected=True),
        (A.RECORD_CONNECTED, A.SETTLE_ATTEMPT),
    ),
    (
        s(Phase.CONNECTED, HANDING_OVER, True),
        E.DISCONNECTED,
        s(Phase.DROPPED, HANDING_OVER, True),
        (A.RECORD_RECONNECTING,),
    ),
    # once closed, or without a client, the client's events are late ones
    (s(Phase.CONNECTED, CLOSED, True), E.DISCONNECTED, s(Phase.CONNECTED, CLOSED, True), ()),
    (s(Phase.STARTING, CLOSED), E.QR, s(Phase.STARTING, CLOSED), ()),
    (IDLE, E.CONNECTED, IDLE, ()),
    (s(Phase.ANNOUNCED), E.QR, s(Phase.ANNOUNCED), ()),
]


@pytest.mark.parametrize(
    "state,event,expected,actions",
    TABLE,
    ids=[f"{r[0].phase}/{r[0].ending}+{r[1].name}" for r in TABLE],
)
def test_the_transition_table(state, event, expected, actions):
    assert step(state, event) == (expected, actions)


ALL_STATES = [
    Lifecycle(phase, ending, ever, qr)
    for phase, ending, ever, qr in itertools.product(Phase, Ending, (False, True), (False, True))
]


@pytest.mark.parametrize("event", list(Event), ids=lambda e: e.name)
def test_rules_that_hold_for_every_state(event):
    for state in ALL_STATES:
        after, actions = step(state, event)
        assert isinstance(after, Lifecycle) and all(isinstance(a, Action) for a in actions)
        # Nothing sends unless the client is connected and the session owned.
        if A.DRAIN in actions:
            assert after.may_send
        # Closed is for good; a closed session announces no new client.
        if state.closed:
            assert after.closed
            if event is E.ANNOUNCE:
                assert after == state
        # The client is stopped exactly when one existed, and then there is none.
        assert (A.STOP_CLIENT in actions) == (
            event is E.CLIENT_STOPPED and state.phase in WITH_CLIENT
        )
        if event is E.CLIENT_STOPPED:
            assert after.phase is Phase.IDLE
        # Only the client's events move it between the phases that have a client.
        if state.phase not in WITH_CLIENT and after.phase in WITH_CLIENT:
            assert event is E.CREATED


def test_what_a_session_may_do_in_each_phase():
    assert IDLE.may_start and not IDLE.may_send and not IDLE.has_client
    assert UP.may_send and UP.connected and not UP.may_start
    assert not s(Phase.CONNECTED, HANDING_OVER, True).may_send
    assert not s(ending=CLOSED).may_start
    assert not DROPPED.may_send and DROPPED.has_client
    assert not PAIRING.may_send and not s(Phase.ANNOUNCED).may_start
