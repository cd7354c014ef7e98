"""Fixtures for the connection-health admin: sessions of the three tenants and
helpers to write their history the way the services do."""

from datetime import timedelta

import pytest
from django.utils import timezone

from whatsapp.models import ConnectionEvent, WhatsAppSession
from whatsapp.services import control


@pytest.fixture
def sessions(tenants):
    """The sessions of company A and company B (rows as the services create them).
    Created B first, so that no session shares its primary key with its company."""
    b = control.ensure_session(tenants.b.pk)
    a = control.ensure_session(tenants.a.pk)
    return a, b


def set_session(session, **fields):
    WhatsAppSession.objects.filter(pk=session.pk).update(**fields)
    session.refresh_from_db()
    return session


def add_events(session, kind, count=1, minutes_ago=1, state="", reason=""):
    """`count` ConnectionEvents of `kind`, `minutes_ago` minutes in the past."""
    at = timezone.now() - timedelta(minutes=minutes_ago)
    ConnectionEvent.objects.bulk_create(
        ConnectionEvent(session=session, kind=kind, state=state, reason=reason, created_at=at)
        for _ in range(count)
    )


def login(client, user):
    client.force_login(user)
    return client
