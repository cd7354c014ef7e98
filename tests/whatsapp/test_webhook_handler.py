"""The webhook as message handler: the company's endpoint answers each inbound
message, and its "reply" is queued as the one outbound reply."""

import hashlib
import hmac
import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from whatsapp.models import InboundMessage, OutboundMessage, ProcessingJob, WebhookEndpoint
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.jobs import retry_processing_job
from whatsapp.services.processing import run_processing_job
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

from .http_receiver import running_receiver

pytestmark = pytest.mark.django_db
HANDLER = "webhook"  # the registry name of whatsapp.handlers.webhook_reply


@pytest.fixture
def receiver():
    with running_receiver() as started:
        yield started


@pytest.fixture
def handler_endpoint(tenants, receiver, settings):
    settings.WHATSAPP_WEBHOOKS = {
        **settings.WHATSAPP_WEBHOOKS,
        "ALLOW_PRIVATE": True,
        "HANDLER_TIMEOUT": 2.0,
    }
    tenants.a.inbound_handler = HANDLER
    tenants.a.save(update_fields=["inbound_handler"])
    return WebhookEndpoint.objects.create(
        company=tenants.a, url=receiver.url, is_message_handler=True, events=["message.status"]
    )


def job_for(company, message_id="WAMID-7", text="Do you have time on Friday?"):
    event = message_event(message_id, "4915112345678@s.whatsapp.net", text, push_name="Ben")
    outcome = record_inbound_message(company.pk, normalize_message(event))
    return ProcessingJob.objects.get(message_id=outcome.message_pk)


def job_state(job):
    job.refresh_from_db()
    return job.status, job.error


class TestReplies:
    def test_the_endpoint_reply_is_queued_as_the_one_outbound_reply(
        self, tenants, handler_endpoint, receiver
    ):
        receiver.answer((200, {"reply": "Friday 10:00 is free, Ben."}))
        job = job_for(tenants.a)

        assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED

        (reply,) = OutboundMessage.objects.all()
        message = InboundMessage.objects.get()
        assert reply.text == "Friday 10:00 is free, Ben."
        assert reply.in_reply_to == message
        assert reply.to_jid == message.reply_jid
        assert reply.idempotency_key == "reply:WAMID-7:0"  # per message and reply index

        (request,) = receiver.requests
        body = request.json()
        assert body["type"] == "message.handle"
        assert body["data"]["message"]["text"] == "Do you have time on Friday?"
        assert body["data"]["message"]["sender_phone"] == "+4915112345678"
        timestamp = request.headers["X-Aiadmin-Timestamp"]
        expected = hmac.new(
            handler_endpoint.secret.encode(),
            timestamp.encode() + b"." + request.body,
            hashlib.sha256,
        ).hexdigest()
        assert request.headers["X-Aiadmin-Signature"] == f"sha256={expected}"
        job.refresh_from_db()
        assert job.handler == HANDLER
        assert "replied" in job.result

    def test_a_second_run_of_the_job_never_calls_or_replies_again(
        self, tenants, handler_endpoint, receiver
    ):
        receiver.answer((200, {"reply": "first"}), (200, {"reply": "a different second"}))
        job = job_for(tenants.a)
        assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED

        # The same task delivered again: nothing to claim.
        assert run_processing_job(job.pk) == "skipped"
        # A run that looks crashed (its lease expired) is claimed again, but
        # the message already has its reply: the endpoint is not asked again.
        ProcessingJob.objects.filter(pk=job.pk).update(
            status=ProcessingJob.Status.RUNNING,
            started_at=timezone.now() - timedelta(hours=1),
            lease_expires_at=timezone.now() - timedelta(minutes=1),
        )
        assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED

        assert list(OutboundMessage.objects.values_list("text", flat=True)) == ["first"]
        assert len(receiver.requests) == 1

    def test_a_failed_call_retried_later_replies_once_with_the_same_event_id(
        self, tenants, handler_endpoint, receiver
    ):
        receiver.answer((503, "busy"), (200, {"reply": "now it works"}))
        job = job_for(tenants.a)

        assert run_processing_job(job.pk) == ProcessingJob.Status.FAILED
        status, error = job_state(job)
        assert "HTTP 503" in error
        assert not OutboundMessage.objects.exists()

        assert retry_processing_job(job.pk) is True
        assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
        assert list(OutboundMessage.objects.values_list("text", flat=True)) == ["now it works"]

        ids = [r.headers["X-Aiadmin-Event-Id"] for r in receiver.requests]
        assert len(ids) == 2 and ids[0] == ids[1]  # the receiver can dedupe the call
        uuid.UUID(ids[0])

    @pytest.mark.parametrize(
        "answer", [(200, {}), (200, {"reply": None}), (200, {"reply": "  "}), (204, b"")]
    )
    def test_an_answer_without_reply_text_sends_nothing(
        self, tenants, handler_endpoint, receiver, answer
    ):
        receiver.answer(answer)
        job = job_for(tenants.a)
        assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
        assert not OutboundMessage.objects.exists()
        job.refresh_from_db()
        assert "no reply" in job.result


class TestFailures:
    @pytest.mark.parametrize(
        "answer, error",
        [
            ((200, "<html>oops</html>"), "non-JSON"),
            ((200, [1, 2]), "JSON object"),
            ((200, {"reply": 42}), '"reply" must be a string'),
            ((500, {"reply": "ignored"}), "HTTP 500"),
        ],
    )
    def test_a_bad_answer_fails_the_job_with_a_clear_error(
        self, tenants, handler_endpoint, receiver, answer, error
    ):
        receiver.answer(answer)
        job = job_for(tenants.a)
        assert run_processing_job(job.pk) == ProcessingJob.Status.FAILED
        assert error in job_state(job)[1]
        assert not OutboundMessage.objects.exists()
        handler_endpoint.refresh_from_db()
        assert handler_endpoint.last_attempt_at is not None

    def test_a_company_without_a_handler_endpoint_gets_a_clear_error(self, tenants):
        tenants.a.inbound_handler = HANDLER
        tenants.a.save(update_fields=["inbound_handler"])
        job = job_for(tenants.a)
        assert run_processing_job(job.pk) == ProcessingJob.Status.FAILED
        assert "marked as message handler" in job_state(job)[1]

    def test_a_private_handler_url_is_refused_unless_allowed(
        self, tenants, handler_endpoint, receiver, settings
    ):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
        job = job_for(tenants.a)
        assert run_processing_job(job.pk) == ProcessingJob.Status.FAILED
        assert "refused" in job_state(job)[1]
        assert receiver.requests == []

    def test_other_companies_keep_their_own_handler(self, tenants, handler_endpoint, receiver):
        job = job_for(tenants.b, message_id="WAMID-B")
        assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
        assert receiver.requests == []

    def test_a_company_has_at_most_one_handler_endpoint(self, tenants, handler_endpoint):
        with pytest.raises(IntegrityError), transaction.atomic():
            WebhookEndpoint.objects.create(
                company=tenants.a, url="https://93.184.215.14/h2", is_message_handler=True
            )
        # Another company may have its own.
        WebhookEndpoint.objects.create(
            company=tenants.b, url="https://93.184.215.14/h", is_message_handler=True
        )
