"""Webhook deliveries through a real django-q2 cluster: tasks enqueued by the
test process (ORM or Redis broker) are run by a `qcluster` process that POSTs
to a real local HTTP server, fails, retries, succeeds, and dead-letters."""

import pytest

from companies.models import Company
from tests.e2e_processes import AppProcesses, wait_for
from whatsapp.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.webhooks import dispatch_due_webhooks
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

from .http_receiver import running_receiver

Status = WebhookDelivery.Status


@pytest.fixture
def receiver():
    with running_receiver() as started:
        yield started


def inbound(company, message_id):
    event = message_event(message_id, "4915112345678@s.whatsapp.net", "Hello", push_name="Anna")
    return record_inbound_message(company.pk, normalize_message(event))


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_real_job_cluster_delivers_retries_and_dead_letters(tmp_path, receiver, settings):
    """The django-q2 path for real: tasks enqueued by this process (ORM or Redis
    broker), run by a `qcluster` process that POSTs to the local receiver."""
    settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "BACKOFF_BASE": 1.0}
    company = Company.objects.create(name="Cluster Co", slug="cluster-co")
    WebhookEndpoint.objects.create(company=company, url=receiver.url)
    receiver.answer(500)  # the first attempt fails, the retry succeeds
    app = AppProcesses(
        tmp_path,
        WEBHOOK_ALLOW_PRIVATE="1",
        WEBHOOK_BACKOFF_BASE="1",
        WEBHOOK_BACKOFF_CAP="1",
        WEBHOOK_MAX_ATTEMPTS="2",
        WEBHOOK_TIMEOUT="5",
    )
    try:
        app.start_qcluster()
        inbound(company, message_id="E2E-1")
        delivery = WebhookDelivery.objects.get()
        wait_for(
            lambda: WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.RETRYING).exists(),
            60,
            "the first attempt (HTTP 500) recorded by the cluster",
            interval=0.2,
        )
        # The retry is due within a second; the dispatcher (a schedule in production)
        # enqueues it and the cluster delivers it.
        wait_for(lambda: delivery.pk in dispatch_due_webhooks(), 30, "the retry due")
        wait_for(
            lambda: WebhookDelivery.objects.filter(
                pk=delivery.pk, status=Status.SUCCEEDED
            ).exists(),
            60,
            "the retry delivered",
            interval=0.2,
        )
        # A second event whose receiver always fails ends as a dead letter.
        receiver.answer(502, 502)
        inbound(company, message_id="E2E-2")
        second = WebhookDelivery.objects.exclude(pk=delivery.pk).get()
        wait_for(
            lambda: WebhookDelivery.objects.filter(pk=second.pk, status=Status.RETRYING).exists(),
            60,
            "the second event's first attempt",
            interval=0.2,
        )
        wait_for(lambda: second.pk in dispatch_due_webhooks(), 30, "the second retry due")
        wait_for(
            lambda: WebhookDelivery.objects.filter(pk=second.pk, status=Status.DEAD).exists(),
            60,
            "the dead letter",
            interval=0.2,
        )
    except AssertionError:
        print(app.logs())
        raise
    finally:
        app.stop_all()
    codes = list(
        WebhookAttempt.objects.order_by("delivery_id", "number").values_list(
            "delivery_id", "status_code"
        )
    )
    assert codes == [(delivery.pk, 500), (delivery.pk, 200), (second.pk, 502), (second.pk, 502)]
    assert [r.json()["data"]["message"]["id"] for r in receiver.requests] == [
        "E2E-1",
        "E2E-1",
        "E2E-2",
        "E2E-2",
    ]
