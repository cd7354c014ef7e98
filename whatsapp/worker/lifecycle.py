"""What one company's live client is doing, as a state machine without I/O.

A ManagedSession (session.py) owns at most one client at a time. What it
knows about that client is one `Lifecycle` value: the client's `Phase`
(none, announced, starting, showing a QR code, connected, dropped) and the
session's `Ending` (owned, handing over, closed), plus two memories. `step`
is the "what next" function: a lifecycle and an `Event` in, the next
lifecycle and the `Action`s to carry out (in order) out. The session does the
I/O the actions name (write the row through whatsapp.services.sessions, stop
the client, wake the waiting connect attempt, drain the outbox) and nothing
else decides.

The stored `SessionState` on the row is what the worker tells the world;
this is what one worker process knows of its own client. The table of
transitions is tested in tests/whatsapp/test_session_lifecycle.py.
"""

import enum
from dataclasses import dataclass, replace


class Phase(enum.StrEnum):
    IDLE = "idle"  # no client
    ANNOUNCED = "announced"  # "client N connecting" is recorded; the client does not exist yet
    STARTING = "starting"  # created and started; neither connected nor showing a QR code yet
    AWAITING_PAIRING = "awaiting_pairing"  # not logged in: it shows a QR code
    CONNECTED = "connected"  # logged in, events flowing: sends may go
    DROPPED = "dropped"  # the connection dropped after it was up; the client reconnects itself


# Phases in which a client exists (its events are handled; stopping it is I/O).
WITH_CLIENT = frozenset({Phase.STARTING, Phase.AWAITING_PAIRING, Phase.CONNECTED, Phase.DROPPED})


class Ending(enum.StrEnum):
    OWNED = "owned"  # this worker holds the lease and acts on the session
    HANDING_OVER = "handing_over"  # closing: a send in flight may finish, no new send starts
    CLOSED = "closed"  # for good: the client's late events are ignored, no client starts


class Event(enum.Enum):
    ANNOUNCE = "a connect attempt recorded 'client N connecting'"
    CREATED = "the transport created the client (it starts next)"
    CONNECTED = "the client is logged in"
    QR = "the client shows a QR code"
    DISCONNECTED = "the connection dropped (the client reconnects)"
    CLIENT_STOPPED = "the client is stopped, or an announced start abandoned"
    HAND_OVER = "closing begins (lease lost, released, rebalanced, worker stopping)"
    CLOSE = "closed for good"


class Action(enum.Enum):
    RECORD_CONNECTED = "mark the row connected"
    RECORD_RECONNECTED = "mark the row connected again (a reconnect)"
    RECORD_QR = "mark the row awaiting pairing, with the QR code on the timeline"
    REFRESH_QR = "store the refreshed QR code (not on the timeline again)"
    RECORD_RECONNECTING = "mark the row reconnecting"
    STOP_CLIENT = "stop the client (the transport's stop, within the stop timeout)"
    RECORD_STOPPED = "record 'client N stopped' (unless a hand-over records it for all)"
    RECORD_NEVER_STARTED = "record 'client N stopped ... (before it started)'"
    SETTLE_ATTEMPT = "the waiting connect attempt has its outcome"
    DRAIN = "send the company's queued messages"
    NUDGE = "reconcile the company now (a pending phone pairing can go)"


@dataclass(frozen=True)
class Lifecycle:
    phase: Phase = Phase.IDLE
    ending: Ending = Ending.OWNED
    # A Connected after an earlier one (of this client or a previous one) is a reconnect.
    ever_connected: bool = False
    # This client's first QR code is on the timeline; later ones only refresh it.
    qr_recorded: bool = False

    @property
    def has_client(self):
        return self.phase in WITH_CLIENT

    @property
    def connected(self):
        return self.phase is Phase.CONNECTED

    @property
    def closing(self):
        """Closing has begun (or ended): no new send starts."""
        return self.ending is not Ending.OWNED

    @property
    def closed(self):
        return self.ending is Ending.CLOSED

    @property
    def may_start(self):
        """A connect attempt may announce and create a client."""
        return self.phase is Phase.IDLE and self.ending is not Ending.CLOSED

    @property
    def may_send(self):
        return self.phase is Phase.CONNECTED and self.ending is Ending.OWNED


NOTHING = ()


def step(state, event):
    """(Lifecycle, Event) -> (next Lifecycle, tuple of Actions in order)."""
    phase, ending = state.phase, state.ending
    if event is Event.ANNOUNCE:
        if not state.may_start:
            return state, NOTHING
        return replace(state, phase=Phase.ANNOUNCED), NOTHING
    if event is Event.CREATED:
        if phase is not Phase.ANNOUNCED:
            return state, NOTHING
        return replace(state, phase=Phase.STARTING, qr_recorded=False), NOTHING
    if event is Event.CLIENT_STOPPED:
        if phase is Phase.ANNOUNCED:
            return replace(state, phase=Phase.IDLE), (Action.RECORD_NEVER_STARTED,)
        if phase in WITH_CLIENT:
            actions = (Action.STOP_CLIENT, Action.RECORD_STOPPED, Action.SETTLE_ATTEMPT)
            return replace(state, phase=Phase.IDLE), actions
        return state, NOTHING
    if event is Event.HAND_OVER:
        if ending is Ending.OWNED:
            return replace(state, ending=Ending.HANDING_OVER), NOTHING
        return state, NOTHING
    if event is Event.CLOSE:
        return replace(state, ending=Ending.CLOSED), NOTHING
    # Events of the client itself: none without a client, none once closed.
    if phase not in WITH_CLIENT or ending is Ending.CLOSED:
        return state, NOTHING
    if event is Event.CONNECTED:
        record = Action.RECORD_RECONNECTED
        if not state.ever_connected or phase is Phase.CONNECTED:
            record = Action.RECORD_CONNECTED
        actions = (record, Action.SETTLE_ATTEMPT)
        if ending is Ending.OWNED:
            actions += (Action.DRAIN,)
        return replace(state, phase=Phase.CONNECTED, ever_connected=True), actions
    if event is Event.QR:
        record = Action.REFRESH_QR if state.qr_recorded else Action.RECORD_QR
        actions = (record, Action.SETTLE_ATTEMPT, Action.NUDGE)
        return replace(state, phase=Phase.AWAITING_PAIRING, qr_recorded=True), actions
    if event is Event.DISCONNECTED:
        if phase is not Phase.CONNECTED:
            return state, NOTHING
        return replace(state, phase=Phase.DROPPED), (Action.RECORD_RECONNECTING,)
    raise ValueError(f"not a lifecycle event: {event!r}")
