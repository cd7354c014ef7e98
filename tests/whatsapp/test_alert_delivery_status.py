"""Incidents say honestly whether their alert reached anyone."""

import pytest
from django.utils import timezone

from whatsapp.models import Incident
from whatsapp.services.alerts import send_pending_notifications

pytestmark = pytest.mark.django_db


@pytest.fixture
def incident(tenants):
    return Incident.objects.create(
        company=tenants.a,
        subject=f"company:{tenants.a.pk}",
        kind="connection_lost",
        summary="Salon Alpha down for 12 min",
    )


def test_an_alert_with_no_channel_configured_says_it_was_not_sent_anywhere(settings, incident):
    settings.ADMINS = []
    settings.WHATSAPP_ALERTS = {**settings.WHATSAPP_ALERTS, "CHAT_WEBHOOK_URL": ""}
    assert send_pending_notifications() == (0, 0)
    incident.refresh_from_db()
    assert incident.alert_sent_at is not None  # not tried again every minute
    assert incident.delivery_status() == (
        "not sent anywhere (no ADMINS, no chat webhook configured)"
    )


def test_a_delivered_alert_says_delivered(settings, incident, mailoutbox):
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.WHATSAPP_ALERTS = {**settings.WHATSAPP_ALERTS, "CHAT_WEBHOOK_URL": ""}
    assert send_pending_notifications() == (1, 0)
    incident.refresh_from_db()
    assert incident.delivery_status() == "delivered" and len(mailoutbox) == 1
    assert incident.delivery_status("recovery_sent_at") == "-"  # still open


def test_a_failed_alert_says_why(incident):
    Incident.objects.filter(pk=incident.pk).update(
        notify_error="chat webhook: ConnectionError: refused"
    )
    incident.refresh_from_db()
    assert incident.delivery_status() == (
        "failed: chat webhook: ConnectionError: refused (tried again at the next check)"
    )


def test_the_incident_list_shows_open_in_words_and_the_delivery(client, tenants, incident):
    Incident.objects.filter(pk=incident.pk).update(
        alert_sent_at=timezone.now(),
        notify_error="not sent anywhere: no ADMINS and no chat webhook are configured",
    )
    client.force_login(tenants.superuser)
    html = client.get("/admin/whatsapp/incident/").content.decode()
    assert '<strong class="wa-error">open</strong>' in html
    assert "not sent anywhere (no ADMINS, no chat webhook configured)" in html
    assert "icon-yes.svg" not in html
