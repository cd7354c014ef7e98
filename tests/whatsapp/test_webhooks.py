"""Webhooks: events recorded with their change, signed delivery to a real local
HTTP server, retries with backoff, dead letter, replay, and refused targets."""

import hashlib
import hmac
import json
import random
import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from whatsapp.models import (
    DesiredState,
    OutboundMessage,
    SessionLease,
    SessionState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WhatsAppSession,
)
from whatsapp.services import leases, sending
from whatsapp.services import sessions as session_svc
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.outbound import queue_outbound_message
from whatsapp.services.webhooks import (
    deliver_webhook,
    dispatch_due_webhooks,
    emit_event,
    replay_webhook_delivery,
)
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

from .http_receiver import running_receiver

Status = WebhookDelivery.Status
DOCS = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
pytestmark = pytest.mark.django_db(transaction=False)


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
        "MAX_ATTEMPTS": 3,
        "BACKOFF_BASE": 10.0,
        "BACKOFF_CAP": 60.0,
    }
    return settings.WHATSAPP_WEBHOOKS


def inbound(company, message_id="WAMID-1", text="Hello"):
    event = message_event(message_id, "4915112345678@s.whatsapp.net", text, push_name="Anna")
    return record_inbound_message(company.pk, normalize_message(event))


def independent_signature(secret, timestamp, body):
    """What a receiver computes, written from the documentation, not our code."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class TestEvents:
    def test_an_inbound_message_becomes_one_delivery_per_subscribed_endpoint(self, tenants, hooks):
        wanted = WebhookEndpoint.objects.create(
            company=tenants.a, url="http://127.0.0.1:9/a", events=["message.received"]
        )
        everything = WebhookEndpoint.objects.create(company=tenants.a, url="http://127.0.0.1:9/b")
        WebhookEndpoint.objects.create(
            company=tenants.a, url="http://127.0.0.1:9/c", events=["session.qr_updated"]
        )
        WebhookEndpoint.objects.create(
            company=tenants.a, url="http://127.0.0.1:9/d", is_active=False
        )
        WebhookEndpoint.objects.create(company=tenants.b, url="http://127.0.0.1:9/other")

        inbound(tenants.a)
        inbound(tenants.a)  # a redelivery: no second event

        rows = WebhookDelivery.objects.order_by("endpoint_id")
        assert [r.endpoint_id for r in rows] == [wanted.pk, everything.pk]
        assert {r.event_type for r in rows} == {"message.received"}
        assert rows[0].event_id == rows[1].event_id  # one event, one id
        message = rows[0].payload["message"]
        assert message["id"] == "WAMID-1"
        assert message["text"] == "Hello"
        assert message["sender_phone"] == "+4915112345678"

    def test_a_rolled_back_change_emits_nothing(self, tenants, hooks):
        WebhookEndpoint.objects.create(company=tenants.a, url="http://127.0.0.1:9/a")
        with pytest.raises(RuntimeError), transaction.atomic():
            emit_event(tenants.a.pk, "message.received", {"message": {}})
            raise RuntimeError("the change failed")
        assert not WebhookDelivery.objects.exists()

    def test_an_unknown_event_type_is_a_programming_error(self, tenants):
        with pytest.raises(ValueError, match="unknown webhook event"):
            emit_event(tenants.a.pk, "message.exploded", {})

    def test_session_state_changes_and_qr_codes_are_events(self, tenants, hooks):
        WebhookEndpoint.objects.create(
            company=tenants.a,
            url="http://127.0.0.1:9/s",
            events=["session.state_changed", "session.qr_updated"],
        )
        session = WhatsAppSession.objects.create(
            company=tenants.a, desired_state=DesiredState.RUNNING
        )
        SessionLease.objects.create(session=session)
        held = leases.try_acquire("w1", session.pk)

        session_svc.mark_starting(held)
        session_svc.mark_awaiting_pairing(held, "2@qr-one")
        session_svc.mark_awaiting_pairing(held, "2@qr-two")  # same state, new QR
        session_svc.mark_connected(held, jid="4915112345678@s.whatsapp.net")
        session_svc.mark_connected(held)  # no state change: no event

        events = [
            (
                d.event_type,
                d.payload["session"].get("previous_state"),
                d.payload["session"]["state"],
                d.payload["session"].get("qr_code"),
            )
            for d in WebhookDelivery.objects.order_by("id")
        ]
        assert events == [
            ("session.state_changed", "stopped", "starting", None),
            ("session.state_changed", "starting", "awaiting_pairing", None),
            ("session.qr_updated", None, "awaiting_pairing", "2@qr-one"),
            ("session.qr_updated", None, "awaiting_pairing", "2@qr-two"),
            ("session.state_changed", "awaiting_pairing", "connected", None),
        ]

    def test_a_failed_connect_is_a_state_change_too(self, tenants, hooks):
        WebhookEndpoint.objects.create(company=tenants.a, url="http://127.0.0.1:9/s")
        session = WhatsAppSession.objects.create(
            company=tenants.a, desired_state=DesiredState.RUNNING, state=SessionState.STARTING
        )
        SessionLease.objects.create(session=session)
        held = leases.try_acquire("w1", session.pk)
        session_svc.mark_connect_failed(held, "dial failed", rng=random.Random(1))
        (delivery,) = WebhookDelivery.objects.all()
        assert delivery.payload["session"]["previous_state"] == "starting"
        assert delivery.payload["session"]["state"] == "failed"
        assert delivery.payload["session"]["reason"] == "dial failed"

    def test_a_worker_handing_sessions_over_tells_only_the_companies_with_webhooks(
        self, tenants, hooks
    ):
        WebhookEndpoint.objects.create(company=tenants.a, url="http://127.0.0.1:9/s")
        helds = []
        for company in (tenants.a, tenants.b):
            session = WhatsAppSession.objects.create(
                company=company, desired_state=DesiredState.RUNNING
            )
            SessionLease.objects.create(session=session)
            helds.append(leases.try_acquire("w1", session.pk))
            session_svc.mark_connected(helds[-1], jid="4915112345678@s.whatsapp.net")
        WebhookDelivery.objects.all().delete()

        assert session_svc.hand_over("w1", helds, "worker stopping")[0] == 2

        (delivery,) = WebhookDelivery.objects.all()
        assert delivery.endpoint.company_id == tenants.a.pk
        change = delivery.payload["session"]
        assert (change["previous_state"], change["state"]) == ("connected", "stopped")
        assert change["reason"] == "worker stopping; another worker takes over"

    def test_outbound_status_changes_are_events(self, tenants, hooks):
        WebhookEndpoint.objects.create(
            company=tenants.a, url="http://127.0.0.1:9/m", events=["message.status"]
        )
        message, _ = queue_outbound_message(tenants.a.pk, "+4915112345678", "Hi", "key-1")
        OutboundMessage.objects.filter(pk=message.pk).update(status=OutboundMessage.Status.SENDING)
        sending.mark_outbound_sent(message.pk, "WA-OUT-1")
        sending.record_receipt(tenants.a.pk, ["WA-OUT-1"], "delivered")
        sending.record_receipt(tenants.a.pk, ["WA-OUT-1"], "delivered")  # no change: no event
        sending.record_receipt(tenants.a.pk, ["WA-OUT-1"], "read")

        statuses = [d.payload["message"]["status"] for d in WebhookDelivery.objects.order_by("id")]
        assert statuses == ["sent", "delivered", "read"]
        first = WebhookDelivery.objects.order_by("id").first().payload["message"]
        assert first["wa_message_id"] == "WA-OUT-1"
        assert first["idempotency_key"] == "key-1"


class TestDelivery:
    def test_the_signature_verifies_with_an_independent_hmac(self, tenants, hooks, receiver):
        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        inbound(tenants.a, text="Can I book for 3pm?")
        delivery = WebhookDelivery.objects.get()

        assert deliver_webhook(delivery.pk) == Status.SUCCEEDED

        (request,) = receiver.requests
        timestamp = request.headers["X-Aiadmin-Timestamp"]
        assert request.headers["X-Aiadmin-Signature"] == independent_signature(
            endpoint.secret, timestamp, request.body
        )
        assert request.headers["X-Aiadmin-Signature"] != independent_signature(
            "another secret", timestamp, request.body
        )
        assert abs(int(timestamp) - timezone.now().timestamp()) < 60
        document = request.json()
        assert request.headers["X-Aiadmin-Event-Id"] == document["id"] == str(delivery.event_id)
        assert document["type"] == "message.received"
        assert document["company_id"] == tenants.a.pk
        assert document["data"]["message"]["text"] == "Can I book for 3pm?"

        delivery.refresh_from_db()
        assert delivery.delivered_at is not None
        assert delivery.last_status_code == 200
        (attempt,) = WebhookAttempt.objects.all()
        assert (attempt.number, attempt.status_code, attempt.succeeded) == (1, 200, True)

    def test_the_documented_verification_snippet_accepts_deliveries_and_rejects_forgeries(
        self, tenants, hooks, receiver
    ):
        snippet = re.search(
            r"### Verifying a request \(Python\)\s+```python\n(.*?)```", DOCS.read_text(), re.S
        ).group(1)
        namespace = {}
        exec(snippet, namespace)  # the code users copy, run as they would
        verify = namespace["verify"]

        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        inbound(tenants.a)
        assert deliver_webhook(WebhookDelivery.objects.get().pk) == Status.SUCCEEDED
        (request,) = receiver.requests
        headers, body = request.headers, request.body

        assert verify(endpoint.secret, headers, body) is True
        assert verify(endpoint.secret, headers, body.replace(b"Hello", b"Hallo")) is False
        assert verify("whsec_someone-else", headers, body) is False
        stale = {**headers, "X-Aiadmin-Timestamp": str(int(headers["X-Aiadmin-Timestamp"]) - 3600)}
        assert verify(endpoint.secret, stale, body) is False

    def test_a_failing_receiver_is_retried_with_backoff_until_it_succeeds(
        self, tenants, hooks, receiver
    ):
        WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        receiver.answer((500, "boom"), 503)  # then the default 200
        inbound(tenants.a)
        delivery = WebhookDelivery.objects.get()
        t0 = timezone.now()

        assert deliver_webhook(delivery.pk, now=t0) == Status.RETRYING
        delivery.refresh_from_db()
        first_wait = (delivery.next_attempt_at - t0).total_seconds()
        assert 1.0 <= first_wait <= 10.0 + 5  # full jitter in [0, base], floor 1 s
        assert "HTTP 500" in delivery.last_error

        # Not due yet: nothing happens, no request.
        assert deliver_webhook(delivery.pk, now=t0) == "skipped"
        assert delivery.pk not in dispatch_due_webhooks(now=t0)
        assert len(receiver.requests) == 1

        t1 = delivery.next_attempt_at
        assert delivery.pk in dispatch_due_webhooks(now=t1)
        assert deliver_webhook(delivery.pk, now=t1) == Status.RETRYING
        delivery.refresh_from_db()
        assert 1.0 <= (delivery.next_attempt_at - t1).total_seconds() <= 20.0 + 5

        t2 = delivery.next_attempt_at
        assert deliver_webhook(delivery.pk, now=t2) == Status.SUCCEEDED
        assert deliver_webhook(delivery.pk, now=t2 + timedelta(hours=1)) == "skipped"

        attempts = list(delivery.attempt_log.values_list("number", "status_code", "succeeded"))
        assert attempts == [(1, 500, False), (2, 503, False), (3, 200, True)]
        event_ids = {r.headers["X-Aiadmin-Event-Id"] for r in receiver.requests}
        assert event_ids == {str(delivery.event_id)}  # the receiver can dedupe retries
        assert len(receiver.requests) == 3

    def test_backoff_ceilings_grow_exponentially_up_to_the_cap(self, hooks):
        from whatsapp.models.webhooks import next_attempt_time

        now = timezone.now()

        class Top(random.Random):
            def uniform(self, a, b):
                return b

        waits = [
            (next_attempt_time(n, 10.0, 60.0, now, rng=Top()) - now).total_seconds()
            for n in range(1, 6)
        ]
        assert waits == [10.0, 20.0, 40.0, 60.0, 60.0]

    def test_it_dead_letters_after_the_last_attempt_and_a_replay_delivers(
        self, tenants, hooks, receiver
    ):
        WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        receiver.answer(500, 500, 500)
        inbound(tenants.a)
        delivery = WebhookDelivery.objects.get()

        now = timezone.now()
        results = []
        for _ in range(3):
            results.append(deliver_webhook(delivery.pk, now=now))
            delivery.refresh_from_db()
            now = delivery.next_attempt_at or now
        assert results == [Status.RETRYING, Status.RETRYING, Status.DEAD]
        assert "gave up after 3" in delivery.last_error
        assert delivery.next_attempt_at is None
        far = timezone.now() + timedelta(days=1)
        assert delivery.pk not in dispatch_due_webhooks(now=far)  # dead stays dead
        assert deliver_webhook(delivery.pk, now=far) == "skipped"

        assert replay_webhook_delivery(delivery.pk) is True
        assert replay_webhook_delivery(delivery.pk) is False  # already queued again
        assert deliver_webhook(delivery.pk) == Status.SUCCEEDED
        assert delivery.attempt_log.count() == 4
        assert {r.headers["X-Aiadmin-Event-Id"] for r in receiver.requests} == {
            str(delivery.event_id)
        }

    def test_a_receiver_that_answers_too_late_is_a_failed_attempt(
        self, tenants, hooks, receiver, settings
    ):
        settings.WHATSAPP_WEBHOOKS = {**hooks, "TIMEOUT": 0.5}
        WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        receiver.answer((200, b"", 3.0))
        inbound(tenants.a)
        delivery = WebhookDelivery.objects.get()

        assert deliver_webhook(delivery.pk) == Status.RETRYING
        attempt = delivery.attempt_log.get()
        assert attempt.status_code is None
        assert "timeout" in attempt.error

    def test_a_refused_connection_is_recorded_on_the_attempt_and_endpoint(self, tenants, hooks):
        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url="http://127.0.0.1:9/x")
        inbound(tenants.a)
        delivery = WebhookDelivery.objects.get()
        assert deliver_webhook(delivery.pk) == Status.RETRYING
        attempt = delivery.attempt_log.get()
        assert attempt.status_code is None and "connection failed" in attempt.error
        endpoint.refresh_from_db()
        assert endpoint.last_attempt_at is not None and "connection failed" in endpoint.last_error

    def test_the_dispatcher_picks_up_lost_and_stuck_deliveries(self, tenants, hooks):
        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url="http://127.0.0.1:9/x")
        now = timezone.now()
        common = {
            "endpoint": endpoint,
            "company": tenants.a,
            "event_type": "message.received",
            "payload": {},
        }
        fresh = WebhookDelivery.objects.create(**common, created_at=now)
        lost = WebhookDelivery.objects.create(**common, created_at=now - timedelta(minutes=5))
        stuck = WebhookDelivery.objects.create(
            **common, status=Status.DELIVERING, claimed_at=now - timedelta(minutes=10)
        )
        in_flight = WebhookDelivery.objects.create(
            **common, status=Status.DELIVERING, claimed_at=now
        )
        done = WebhookDelivery.objects.create(**common, status=Status.SUCCEEDED)

        due = dispatch_due_webhooks(now=now)
        assert lost.pk in due and stuck.pk in due
        assert fresh.pk not in due and in_flight.pk not in due and done.pk not in due


def test_old_finished_deliveries_are_pruned_with_their_attempts(tenants, settings):
    from whatsapp.tasks import dispatch_webhooks

    settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "RETENTION_DAYS": 30}
    endpoint = WebhookEndpoint.objects.create(company=tenants.a, url="https://93.184.215.14/h")
    old = timezone.now() - timedelta(days=31)

    def make(status, created_at):
        row = WebhookDelivery.objects.create(
            endpoint=endpoint,
            company=tenants.a,
            event_type="message.status",
            payload={},
            status=status,
            created_at=created_at,
            next_attempt_at=created_at,
        )
        WebhookAttempt.objects.create(delivery=row, number=1, status_code=500)
        return row

    gone = [make(Status.SUCCEEDED, old), make(Status.DEAD, old)]
    kept = [make(Status.SUCCEEDED, timezone.now()), make(Status.RETRYING, old)]

    assert dispatch_webhooks().endswith("pruned 2")
    remaining = set(WebhookDelivery.objects.values_list("pk", flat=True))
    assert remaining == {r.pk for r in kept}
    assert not WebhookAttempt.objects.filter(delivery_id__in=[r.pk for r in gone]).exists()


class TestAdmin:
    def test_the_admin_refuses_a_private_endpoint_url(self, client, tenants, settings):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
        client.force_login(tenants.superuser)
        response = client.post(
            reverse("admin:whatsapp_webhookendpoint_add"),
            {"company": tenants.a.pk, "url": "http://192.168.1.5/hook", "is_active": "on"},
            secure=True,
        )
        assert response.status_code == 200
        assert "public addresses" in response.content.decode()
        assert not WebhookEndpoint.objects.exists()

    def test_the_admin_creates_an_endpoint_with_a_generated_secret(self, client, tenants, settings):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
        client.force_login(tenants.superuser)
        response = client.post(
            reverse("admin:whatsapp_webhookendpoint_add"),
            {
                "company": tenants.a.pk,
                "url": "https://93.184.215.14/hook",
                "is_active": "on",
                "events": ["message.received", "message.status"],
            },
            secure=True,
        )
        assert response.status_code == 302, response.content.decode()[:2000]
        endpoint = WebhookEndpoint.objects.get()
        assert endpoint.events == ["message.received", "message.status"]
        assert endpoint.secret.startswith("whsec_") and len(endpoint.secret) > 40

    def test_the_admin_action_replays_a_dead_delivery(self, client, tenants, hooks, receiver):
        endpoint = WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        delivery = WebhookDelivery.objects.create(
            endpoint=endpoint,
            company=tenants.a,
            event_type="message.received",
            payload={"message": {"id": "X"}},
            status=Status.DEAD,
            attempts=3,
            event_id=uuid.uuid4(),
        )
        client.force_login(tenants.superuser)
        response = client.post(
            reverse("admin:whatsapp_webhookdelivery_changelist"),
            {"action": "replay_deliveries", ACTION_CHECKBOX_NAME: [delivery.pk]},
            secure=True,
        )
        assert response.status_code == 302
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == (Status.PENDING, 0)
        assert deliver_webhook(delivery.pk) == Status.SUCCEEDED
        assert json.loads(receiver.requests[0].body)["id"] == str(delivery.event_id)


def test_system_checks_refuse_webhook_timeouts_the_job_cluster_would_cut_short(settings):
    from whatsapp.checks import check_webhook_and_alert_settings

    assert check_webhook_and_alert_settings(None) == []
    settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "HANDLER_TIMEOUT": 60.0}
    settings.WHATSAPP_ALERTS = {**settings.WHATSAPP_ALERTS, "CHAT_WEBHOOK_URL": "hooks.slack.com"}
    ids = [e.id for e in check_webhook_and_alert_settings(None)]
    assert ids == ["whatsapp.E101", "whatsapp.E104"]


def test_the_delivery_page_lists_every_attempt(client, tenants):
    endpoint = WebhookEndpoint.objects.create(company=tenants.a, url="https://93.184.215.14/h")
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint,
        company=tenants.a,
        event_type="message.status",
        payload={},
        status=Status.RETRYING,
        attempts=2,
    )
    WebhookAttempt.objects.create(
        delivery=delivery, number=1, status_code=502, error="HTTP 502", duration_ms=41
    )
    WebhookAttempt.objects.create(
        delivery=delivery, number=2, error="timeout after 10s", duration_ms=10003
    )
    client.force_login(tenants.superuser)
    page = client.get(
        reverse("admin:whatsapp_webhookdelivery_change", args=[delivery.pk]), secure=True
    )
    assert page.status_code == 200
    html = page.content.decode()
    assert "HTTP 502" in html and "timeout after 10s" in html and "10003" in html
    listing = client.get(reverse("admin:whatsapp_webhookdelivery_changelist"), secure=True)
    assert listing.status_code == 200 and "message.status" in listing.content.decode()
