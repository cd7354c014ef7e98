"""Operator commands on a company's session: start, stop, restart, logout, pair.

Each writes the wish to the session row (the truth), records a connection
event, and on commit hints the owning worker. The API, the admin and the
management commands all call these functions; none of them talks to a client.
"""

from django.db import transaction
from django.utils import timezone

from companies.models import Company
from companies.phones import InvalidPhoneNumber, parse_phone
from whatsapp.models import (
    ConnectionEvent,
    DesiredState,
    SessionLease,
    SessionState,
    WhatsAppSession,
)

from . import live
from .worker_hints import notify_owner


class SessionCommandError(ValueError):
    """The command cannot be carried out in the session's current situation."""


def ensure_session(company_id):
    """The company's session row (and its lease row), created on first use."""
    if not Company.objects.filter(pk=company_id).exists():
        raise Company.DoesNotExist(f"company {company_id!r} does not exist")
    session, _ = WhatsAppSession.objects.get_or_create(company_id=company_id)
    SessionLease.objects.get_or_create(session=session)
    return session


def _record(session, kind, reason):
    ConnectionEvent.objects.create(session=session, kind=kind, reason=reason, state=session.state)
    live.session_changed(session.company_id, session.state)


# Parked states an operator's Start leaves (a ban is WhatsApp's, not ours to lift):
# after a logout a start means "pair again", after a 440 conflict "try once more".
START_UNPARKS = {SessionState.LOGGED_OUT, SessionState.REPLACED}


def start_session(company_id, actor=""):
    """Want the session running. From a parked logged-out or replaced session
    this asks the worker for a fresh start (as a restart does): after a logout
    that means a new QR code."""
    with transaction.atomic():
        session = ensure_session(company_id)
        if not session.company.is_active:
            raise SessionCommandError("the company is inactive; activate it first")
        fields = {
            "desired_state": DesiredState.RUNNING,
            "next_connect_at": None,
            "consecutive_failures": 0,
        }
        if session.state in START_UNPARKS:
            fields["restart_requested_at"] = timezone.now()
        WhatsAppSession.objects.filter(pk=session.pk).update(**fields)
        _record(session, ConnectionEvent.Kind.STARTING, f"start requested {actor}".strip())
        transaction.on_commit(lambda: notify_owner(company_id, "session.start"))
    return WhatsAppSession.objects.get(pk=session.pk)


def stop_session(company_id, actor=""):
    with transaction.atomic():
        session = ensure_session(company_id)
        WhatsAppSession.objects.filter(pk=session.pk).update(desired_state=DesiredState.STOPPED)
        _record(session, ConnectionEvent.Kind.STOPPED, f"stop requested {actor}".strip())
        transaction.on_commit(lambda: notify_owner(company_id, "session.stop"))
    return WhatsAppSession.objects.get(pk=session.pk)


def restart_session(company_id, actor=""):
    """Stop the live client and start a new one (close before create).

    Also the way out of the parked states `replaced` and `failed`."""
    with transaction.atomic():
        session = ensure_session(company_id)
        if not session.company.is_active:
            raise SessionCommandError("the company is inactive; activate it first")
        WhatsAppSession.objects.filter(pk=session.pk).update(
            desired_state=DesiredState.RUNNING,
            restart_requested_at=timezone.now(),
            next_connect_at=None,
            consecutive_failures=0,
        )
        _record(session, ConnectionEvent.Kind.STARTING, f"restart requested {actor}".strip())
        transaction.on_commit(lambda: notify_owner(company_id, "session.restart"))
    return WhatsAppSession.objects.get(pk=session.pk)


def logout_session(company_id, actor=""):
    """Log the device out of WhatsApp and forget its keys; pairing is needed again."""
    with transaction.atomic():
        session = ensure_session(company_id)
        if not session.is_paired:
            raise SessionCommandError("the session is not paired; there is nothing to log out")
        WhatsAppSession.objects.filter(pk=session.pk).update(logout_requested_at=timezone.now())
        _record(session, ConnectionEvent.Kind.STOPPED, f"logout requested {actor}".strip())
        transaction.on_commit(lambda: notify_owner(company_id, "session.logout"))
    return WhatsAppSession.objects.get(pk=session.pk)


def request_pairing_code(company_id, phone, actor=""):
    """Ask for an 8-character pairing code for `phone` (alternative to the QR).

    The worker fetches the code from WhatsApp and stores it on the row."""
    try:
        e164 = parse_phone(phone)
    except InvalidPhoneNumber as exc:
        raise SessionCommandError(str(exc)) from None
    with transaction.atomic():
        session = ensure_session(company_id)
        if session.is_paired:
            raise SessionCommandError("the session is already paired; log out first")
        if not session.company.is_active:
            raise SessionCommandError("the company is inactive; activate it first")
        WhatsAppSession.objects.filter(pk=session.pk).update(
            desired_state=DesiredState.RUNNING,
            pairing_phone=e164,
            pairing_code="",
            pairing_code_at=None,
            pairing_requested_at=timezone.now(),
        )
        _record(session, ConnectionEvent.Kind.PAIRING_CODE, f"pairing code requested for {e164}")
        transaction.on_commit(lambda: notify_owner(company_id, "session.pair_phone"))
    return WhatsAppSession.objects.get(pk=session.pk)
