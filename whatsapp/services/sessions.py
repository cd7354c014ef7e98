"""Worker-side state transitions of a session, written onto its row.

Every transition is one conditional UPDATE plus one ConnectionEvent row, in
one transaction. The UPDATE is fenced by the lease: it applies only while
the writing worker still holds the lease with the epoch it acquired
(``Held``), so a worker that lost a lease without noticing yet cannot
overwrite what the new owner wrote. Counters only ever move with F().

These functions are synchronous (the worker calls them through
``database_sync_to_async``) and return whether the write applied.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from whatsapp.models import (
    ConnectionEvent,
    SessionLease,
    SessionState,
    WhatsAppSession,
    backoff_delay,
)
from whatsapp.models.sessions import LIVE_STATES
from whatsapp.transport.jids import phone_or_empty

from . import live
from .leases import Held, release_all_leases
from .webhooks import companies_with_webhooks, emit_session_changes

logger = logging.getLogger(__name__)

Kind = ConnectionEvent.Kind
MIN_RETRY_DELAY = 1.0  # full jitter may draw ~0 s: never retry in a tight loop


def load_session(session_id):
    """The session row with its company (for decisions), or None."""
    return WhatsAppSession.objects.select_related("company").filter(pk=session_id).first()


def load_sessions(session_ids):
    return {
        s.pk: s
        for s in WhatsAppSession.objects.select_related("company").filter(pk__in=session_ids)
    }


def _fenced(held: Held):
    return WhatsAppSession.objects.filter(
        pk=held.session_id, lease__owner=held.owner, lease__epoch=held.epoch
    )


def record_event(held: Held, kind, reason="", state=None):
    """A ConnectionEvent row for a session this worker holds (no state change)."""
    if state is None:
        state = (
            WhatsAppSession.objects.filter(pk=held.session_id)
            .values_list("state", flat=True)
            .first()
            or ""
        )
    ConnectionEvent.objects.create(
        session_id=held.session_id,
        kind=kind,
        reason=str(reason)[:500],
        state=state,
        worker_id=held.owner,
    )
    live.session_changed(held.company_id, state)


def transition(held: Held, state=None, kind=None, reason="", from_states=None, **fields):
    """Set `state` (and `fields`) if the lease still fences us (and the current
    state is one of `from_states`, when given); record `kind`."""
    now = timezone.now()
    updates = dict(fields)
    if state is not None:
        updates["state"] = state
        # state_changed_at moves only when the state really changes.
        updates["state_changed_at"] = Case(
            When(state=state, then=F("state_changed_at")), default=Value(now)
        )
    rows = _fenced(held)
    if from_states is not None:
        rows = rows.filter(state__in=list(from_states))
    with transaction.atomic():
        before = rows.values_list("state", flat=True).first() if state is not None else None
        applied = rows.update(**updates) if updates else rows.exists()
        if applied:  # webhook events, recorded with the change
            emit_session_changes(held.company_id, before, state, reason, fields.get("qr_code"))
        if applied and kind:
            record_event(held, kind, reason, state=state)  # publishes the change
        elif applied:
            live.session_changed(held.company_id, state)  # e.g. a rotated QR code
    if not applied:
        logger.info(
            "session %s: %s not applied, lease epoch %s of %s is gone",
            held.session_id,
            kind or state,
            held.epoch,
            held.owner,
        )
    return bool(applied)


def _phone_of(jid):
    return phone_or_empty(jid)


# --- the state machine -------------------------------------------------------
def mark_starting(held, reason="connecting"):
    return transition(
        held,
        SessionState.STARTING,
        Kind.STARTING,
        reason,
        disconnected_since=Coalesce(F("disconnected_since"), Value(timezone.now())),
        connected_since=None,
    )


def mark_awaiting_pairing(held, qr_code, record=True):
    now = timezone.now()
    return transition(
        held,
        SessionState.AWAITING_PAIRING,
        Kind.QR if record else None,
        "QR code issued; scan it in WhatsApp > Linked devices",
        qr_code=qr_code[:2000],
        qr_updated_at=now,
        last_event_at=now,
    )


def mark_paired(held, jid, push_name=""):
    fields = {"jid": jid[:128], "qr_code": "", "pairing_code": "", "last_event_at": timezone.now()}
    phone = _phone_of(jid)
    if phone:
        fields["phone"] = phone
    if push_name:
        fields["push_name"] = push_name[:200]
    return transition(held, None, Kind.PAIRED, f"paired as {jid}", **fields)


def mark_connected(held, jid="", push_name="", reconnected=False):
    now = timezone.now()
    fields = {
        "connected_since": now,
        "disconnected_since": None,
        "consecutive_failures": 0,
        "next_connect_at": None,
        "last_event_at": now,
        "qr_code": "",
        "pairing_code": "",
        "pairing_requested_at": None,
    }
    if jid:
        fields["jid"] = jid[:128]
        phone = _phone_of(jid)
        if phone:
            fields["phone"] = phone
    if push_name:
        fields["push_name"] = push_name[:200]
    if reconnected:
        fields["reconnect_count"] = F("reconnect_count") + 1
    kind = Kind.RECONNECTED if reconnected else Kind.CONNECTED
    return transition(held, SessionState.CONNECTED, kind, jid or "connected", **fields)


def mark_reconnecting(held, reason="connection dropped; whatsmeow reconnects"):
    return transition(
        held,
        SessionState.RECONNECTING,
        Kind.DISCONNECTED,
        reason,
        disconnected_since=Coalesce(F("disconnected_since"), Value(timezone.now())),
        connected_since=None,
        last_event_at=timezone.now(),
    )


def mark_connect_failed(held, error, permanent=False, rng=None):
    """A failed (initial) connect: count it and schedule the next attempt.

    Returns the delay in seconds before the retry (None if the lease is gone).
    Exponential backoff with full jitter, capped; a permanent failure waits
    the cap."""
    conf = settings.WHATSAPP
    now = timezone.now()
    with transaction.atomic():
        before = _fenced(held).values_list("state", flat=True).first()
        applied = _fenced(held).update(
            state=SessionState.FAILED,
            state_changed_at=Case(
                When(state=SessionState.FAILED, then=F("state_changed_at")), default=Value(now)
            ),
            consecutive_failures=F("consecutive_failures") + 1,
            connect_failure_count=F("connect_failure_count") + 1,
            last_error=str(error)[:2000],
            last_error_at=now,
            connected_since=None,
            disconnected_since=Coalesce(F("disconnected_since"), Value(now)),
        )
        if not applied:
            return None
        failures = (
            WhatsAppSession.objects.filter(pk=held.session_id)
            .values_list("consecutive_failures", flat=True)
            .get()
        )
        if permanent:
            delay = conf["BACKOFF_CAP"]
        else:
            kwargs = {"rng": rng} if rng is not None else {}
            delay = backoff_delay(failures - 1, conf["BACKOFF_BASE"], conf["BACKOFF_CAP"], **kwargs)
            delay = max(delay, min(MIN_RETRY_DELAY, conf["BACKOFF_BASE"]))
        WhatsAppSession.objects.filter(pk=held.session_id).update(
            next_connect_at=now + timedelta(seconds=delay)
        )
        kind_reason = f"{error} (failure {failures}; retry in {delay:.1f}s)"
        record_event(held, Kind.CONNECT_FAILED, kind_reason, state=SessionState.FAILED)
        emit_session_changes(held.company_id, before, SessionState.FAILED, str(error))
    return delay


def mark_replaced(held):
    """440 "conflict: replaced": park the session and back off long."""
    conf = settings.WHATSAPP
    now = timezone.now()
    retry_at = now + timedelta(seconds=conf["REPLACED_BACKOFF"])
    return transition(
        held,
        SessionState.REPLACED,
        Kind.REPLACED,
        f"another connection with these credentials took over; parked until "
        f"{retry_at:%Y-%m-%d %H:%M:%S} UTC or a restart",
        conflict_count=F("conflict_count") + 1,
        next_connect_at=retry_at,
        connected_since=None,
        disconnected_since=Coalesce(F("disconnected_since"), Value(now)),
        last_error="stream replaced (440 conflict): another client uses this device",
        last_error_at=now,
    )


def mark_logged_out(held, reason=""):
    """The device was logged out: forget it; a new pairing is required."""
    now = timezone.now()
    return transition(
        held,
        SessionState.LOGGED_OUT,
        Kind.LOGGED_OUT,
        reason or "logged out",
        jid="",
        qr_code="",
        pairing_code="",
        connected_since=None,
        disconnected_since=Coalesce(F("disconnected_since"), Value(now)),
        consecutive_failures=0,
        next_connect_at=None,
        logout_requested_at=None,
        last_error=f"logged out: {reason}" if reason else "logged out",
        last_error_at=now,
    )


def mark_banned(held, code, expires_in_seconds):
    now = timezone.now()
    seconds = max(int(expires_in_seconds or 0), 60)
    expires = now + timedelta(seconds=seconds)
    return transition(
        held,
        SessionState.BANNED,
        Kind.BANNED,
        f"temporary ban {code or ''} until {expires:%Y-%m-%d %H:%M:%S} UTC".replace("  ", " "),
        ban_expires_at=expires,
        next_connect_at=expires,
        connected_since=None,
        disconnected_since=Coalesce(F("disconnected_since"), Value(now)),
        last_error=f"temporarily banned by WhatsApp ({code or 'no reason given'})",
        last_error_at=now,
    )


def mark_stopped(held, reason="stopped", only_live=False):
    """No client any more. `only_live`: leave parked and failed states as they are
    (a worker handing a session over must not erase `logged_out` or a retry plan)."""
    return transition(
        held,
        SessionState.STOPPED,
        Kind.STOPPED,
        reason,
        from_states=LIVE_STATES if only_live else None,
        connected_since=None,
        disconnected_since=None,
        qr_code="",
    )


def hand_over(worker_id, helds, reason, clients=None, keep=()):
    """A stopping worker gives all its sessions up at once, after their clients
    stopped: in one transaction, every session still fenced by `worker_id` that
    claims a live client is marked stopped (with its event), each stopped client
    gets its event (fenced or not: it is a fact about this process's client, as
    record_event writes it), and every lease of the worker except `keep`
    (clients that would not stop) is released (leases.release_all_leases).

    `clients` maps session id -> number of the client just stopped. Returns
    (leases released, [(company id, state)] of the sessions that changed): the caller publishes
    those hints once other workers have been told to take over, so telling staff
    browsers never delays the hand-over."""
    clients = clients or {}
    keep = set(keep)
    helds = [h for h in helds if h.session_id not in keep]
    note = f"{reason}; another worker takes over"
    with transaction.atomic():
        epochs = dict(
            SessionLease.objects.select_for_update()
            .filter(owner=worker_id, session_id__in=[h.session_id for h in helds])
            .values_list("session_id", "epoch")
        )
        fenced = {h.session_id for h in helds if epochs.get(h.session_id) == h.epoch}
        # Session rows locked in company order, as inbound recording locks them
        # (services/inbound.py): the two never deadlock.
        before = dict(
            WhatsAppSession.objects.select_for_update()
            .filter(pk__in=[h.session_id for h in helds])
            .order_by("company_id")
            .values_list("pk", "state")
        )
        live_ids = [pk for pk, state in before.items() if pk in fenced and state in LIVE_STATES]
        WhatsAppSession.objects.filter(pk__in=live_ids, state__in=list(LIVE_STATES)).update(
            state=SessionState.STOPPED,
            state_changed_at=timezone.now(),
            connected_since=None,
            disconnected_since=None,
            qr_code="",
        )
        events, changed = [], []
        hooked = companies_with_webhooks(h.company_id for h in helds if h.session_id in live_ids)
        for h in helds:
            state = SessionState.STOPPED if h.session_id in live_ids else before.get(h.session_id)
            if h.session_id in clients:
                number = clients[h.session_id]
                text = f"client {number} stopped: {reason}"
                events.append((h, text, state))
            if h.session_id in live_ids:
                events.append((h, note, state))
                if h.company_id in hooked:
                    emit_session_changes(h.company_id, before[h.session_id], state, note)
            if h.session_id in clients or h.session_id in live_ids:
                changed.append((h.company_id, state))
        ConnectionEvent.objects.bulk_create(
            ConnectionEvent(
                session_id=h.session_id,
                kind=Kind.STOPPED,
                reason=text[:500],
                state=state or "",
                worker_id=worker_id,
            )
            for h, text, state in events
        )
        released = release_all_leases(worker_id, reason, keep)
    return released, changed


def unpark(held, reason):
    """Leave replaced / logged out / failed / banned for a fresh start (operator asked)."""
    return transition(
        held,
        SessionState.STOPPED,
        Kind.STARTING,
        reason,
        consecutive_failures=0,
        next_connect_at=None,
        ban_expires_at=None,
    )


def record_error(held, reason):
    """An error worth a row (handler exception, bad event) without a state change."""
    now = timezone.now()
    with transaction.atomic():
        applied = _fenced(held).update(last_error=str(reason)[:2000], last_error_at=now)
        if applied:
            record_event(held, Kind.ERROR, reason)
    return bool(applied)


def touch(held):
    """Events are flowing: feed the watchdog."""
    return bool(_fenced(held).update(last_event_at=timezone.now()))


def store_pairing_code(held, code):
    now = timezone.now()
    return transition(
        held,
        None,
        Kind.PAIRING_CODE,
        "pairing code issued; enter it in WhatsApp > Linked devices > Link with phone number",
        pairing_code=code[:16],
        pairing_code_at=now,
        pairing_requested_at=None,
        last_event_at=now,
    )


def fail_pairing_request(held, error):
    return transition(
        held,
        None,
        Kind.ERROR,
        f"pairing code request failed: {error}",
        pairing_requested_at=None,
        last_error=f"pairing code request failed: {error}"[:2000],
        last_error_at=timezone.now(),
    )


def clear_request(held, field, seen):
    """Clear restart/logout/pairing request `field` if it is still the one we acted on."""
    if field not in {"restart_requested_at", "logout_requested_at", "pairing_requested_at"}:
        raise ValueError(f"not a request field: {field}")
    return bool(_fenced(held).filter(**{field: seen}).update(**{field: None}))
