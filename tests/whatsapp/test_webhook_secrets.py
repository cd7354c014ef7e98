"""Webhook signing secrets: shown once (when created or rotated), then masked;
rotation with an overlap in which real deliveries carry both signatures."""

import hashlib
import hmac
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from whatsapp.checks import check_webhook_and_alert_settings
from whatsapp.models import InboundMessage, WebhookDelivery, WebhookEndpoint
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.webhooks import (
    deliver_webhook,
    forget_expired_webhook_secrets,
    request_webhook_reply,
    rotate_webhook_secret,
)
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

from .http_receiver import running_receiver

Status = WebhookDelivery.Status
DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
OVERLAP = 3600.0
pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    with running_receiver() as started:
        yield started


@pytest.fixture
def hooks(settings):
    settings.WHATSAPP_WEBHOOKS = {
        **settings.WHATSAPP_WEBHOOKS,
        "ALLOW_PRIVATE": True,  # the receiver is on 127.0.0.1
        "TIMEOUT": 2.0,
        "SECRET_OVERLAP": OVERLAP,
    }
    return settings.WHATSAPP_WEBHOOKS


@pytest.fixture
def verify():
    """The documented receiver code, run as users would copy it."""
    snippet = re.search(
        r"### Verifying a request \(Python\)\s+```python\n(.*?)```", DOCS.read_text(), re.S
    ).group(1)
    namespace = {}
    exec(snippet, namespace)
    return namespace["verify"]


def independent_signature(secret, timestamp, body):
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def deliver_one(company, receiver, message_id, now=None):
    event = message_event(message_id, "4915112345678@s.whatsapp.net", "Hi", push_name="Anna")
    record_inbound_message(company.pk, normalize_message(event))
    delivery = WebhookDelivery.objects.get(payload__message__id=message_id)
    assert deliver_webhook(delivery.pk, now=now) == Status.SUCCEEDED
    request = receiver.requests[-1]
    return request.headers, request.body


def add_endpoint(client, company, url="https://93.184.215.14/hook"):
    return client.post(
        reverse("admin:whatsapp_webhookendpoint_add"),
        {"company": company.pk, "url": url, "is_active": "on"},
        secure=True,
        follow=True,
    )


class TestShownOnce:
    def test_the_secret_is_shown_once_at_creation_and_never_on_the_change_page(
        self, client, tenants, settings
    ):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
        client.force_login(tenants.superuser)
        created = add_endpoint(client, tenants.a)
        endpoint = WebhookEndpoint.objects.get()
        assert created.status_code == 200
        assert endpoint.secret in created.content.decode()  # the one time

        change = reverse("admin:whatsapp_webhookendpoint_change", args=[endpoint.pk])
        html = client.get(change, secure=True).content.decode()
        assert endpoint.secret not in html
        assert endpoint.secret[:16] not in html
        assert endpoint.secret_hint in html and endpoint.secret_hint.startswith("whsec_")
        assert len(endpoint.secret_hint) == len("whsec_") + 4 + 1
        listing = client.get(reverse("admin:whatsapp_webhookendpoint_changelist"), secure=True)
        assert endpoint.secret not in listing.content.decode()  # the message is gone

    def test_a_user_with_only_the_view_permission_sees_the_masked_secret_and_cannot_rotate(
        self, client, tenants, hooks
    ):
        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url="https://93.184.215.14/h")
        old = endpoint.secret
        tenants.owner.user_permissions.add(
            Permission.objects.get(codename="view_webhookendpoint")
        )
        client.force_login(tenants.owner)
        page = client.get(
            reverse("admin:whatsapp_webhookendpoint_change", args=[endpoint.pk]), secure=True
        )
        assert page.status_code == 200
        html = page.content.decode()
        assert old not in html and endpoint.secret_hint in html
        assert "rotate_secrets" not in html

        client.post(
            reverse("admin:whatsapp_webhookendpoint_changelist"),
            {"action": "rotate_secrets", ACTION_CHECKBOX_NAME: [endpoint.pk]},
            secure=True,
        )
        endpoint.refresh_from_db()
        assert endpoint.secret == old and endpoint.previous_secret == ""


class TestRotation:
    def test_the_admin_action_shows_the_new_secret_once_and_keeps_the_old_one_for_the_overlap(
        self, client, tenants, hooks
    ):
        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url="https://93.184.215.14/h")
        old = endpoint.secret
        client.force_login(tenants.superuser)
        before = timezone.now()
        response = client.post(
            reverse("admin:whatsapp_webhookendpoint_changelist"),
            {"action": "rotate_secrets", ACTION_CHECKBOX_NAME: [endpoint.pk]},
            secure=True,
            follow=True,
        )
        after = timezone.now()
        endpoint.refresh_from_db()
        assert endpoint.secret != old and endpoint.secret.startswith("whsec_")
        assert endpoint.secret in response.content.decode()
        assert old not in response.content.decode()
        assert endpoint.previous_secret == old
        overlap = timedelta(seconds=OVERLAP)
        assert before + overlap <= endpoint.previous_secret_expires_at <= after + overlap

        page = client.get(
            reverse("admin:whatsapp_webhookendpoint_change", args=[endpoint.pk]), secure=True
        )
        html = page.content.decode()
        assert endpoint.secret not in html and old not in html
        assert "also signs until" in html

    def test_during_the_overlap_deliveries_verify_with_old_and_new_secret_and_after_only_new(
        self, tenants, hooks, receiver, verify
    ):
        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        old = endpoint.secret
        headers, body = deliver_one(tenants.a, receiver, "WAMID-0")
        assert "," not in headers["X-Aiadmin-Signature"]  # one secret: one signature, as before
        assert verify(old, headers, body) is True

        new = rotate_webhook_secret(endpoint.pk)
        assert new != old
        headers, body = deliver_one(tenants.a, receiver, "WAMID-1")
        timestamp = headers["X-Aiadmin-Timestamp"]
        assert headers["X-Aiadmin-Signature"] == ",".join(
            independent_signature(secret, timestamp, body) for secret in (new, old)
        )
        assert verify(new, headers, body) is True
        assert verify(old, headers, body) is True
        assert verify("whsec_someone-else", headers, body) is False
        assert verify(old, headers, body.replace(b"Hi", b"Ho")) is False

        endpoint.refresh_from_db()
        ended = endpoint.previous_secret_expires_at + timedelta(seconds=1)
        headers, body = deliver_one(tenants.a, receiver, "WAMID-2", now=ended)
        assert headers["X-Aiadmin-Signature"] == independent_signature(
            new, headers["X-Aiadmin-Timestamp"], body
        )
        assert verify(new, headers, body) is True
        assert verify(old, headers, body) is False

        assert forget_expired_webhook_secrets(now=ended) == 1
        endpoint.refresh_from_db()
        assert (endpoint.previous_secret, endpoint.previous_secret_expires_at) == ("", None)

    def test_a_second_rotation_in_the_overlap_ends_the_oldest_secret(
        self, tenants, hooks, receiver, verify
    ):
        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        first = endpoint.secret
        second = rotate_webhook_secret(endpoint.pk)
        third = rotate_webhook_secret(endpoint.pk)
        headers, body = deliver_one(tenants.a, receiver, "WAMID-1")
        assert len(headers["X-Aiadmin-Signature"].split(",")) == 2
        assert verify(third, headers, body) and verify(second, headers, body)
        assert not verify(first, headers, body)

    def test_an_overlap_of_zero_ends_the_old_secret_at_once(
        self, tenants, hooks, receiver, verify, settings
    ):
        settings.WHATSAPP_WEBHOOKS = {**hooks, "SECRET_OVERLAP": 0.0}
        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        old = endpoint.secret
        new = rotate_webhook_secret(endpoint.pk)
        headers, body = deliver_one(tenants.a, receiver, "WAMID-1")
        assert verify(new, headers, body) and not verify(old, headers, body)
        endpoint.refresh_from_db()
        assert endpoint.previous_secret == ""

    def test_the_message_handler_request_is_signed_with_both_secrets_during_the_overlap(
        self, tenants, hooks, receiver, verify
    ):
        endpoint = WebhookEndpoint.objects.create(
            company=tenants.a, url=receiver.url, is_message_handler=True
        )
        old = endpoint.secret
        new = rotate_webhook_secret(endpoint.pk)
        endpoint.refresh_from_db()
        event = message_event("WAMID-H", "4915112345678@s.whatsapp.net", "Hi", push_name="A")
        outcome = record_inbound_message(tenants.a.pk, normalize_message(event))
        request_webhook_reply(endpoint, InboundMessage.objects.get(pk=outcome.message_pk))
        handler_request = [r for r in receiver.requests if b"message.handle" in r.body][-1]
        assert verify(new, handler_request.headers, handler_request.body)
        assert verify(old, handler_request.headers, handler_request.body)


def test_a_negative_overlap_fails_the_system_checks(settings):
    settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "SECRET_OVERLAP": -1.0}
    assert [e.id for e in check_webhook_and_alert_settings(None)] == ["whatsapp.E105"]
