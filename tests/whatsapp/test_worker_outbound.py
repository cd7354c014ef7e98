"""Outbound sending by the worker that owns the company.

Rows are queued by the API/handlers (services.outbound); the owning worker
sends them through the client it already has, records WhatsApp's id, retries
transient failures with backoff and marks permanent ones failed.
"""

import pytest
from django.utils import timezone

from companies.models import Company
from whatsapp.models import OutboundMessage, SessionState, WhatsAppSession
from whatsapp.services import leases, sending
from whatsapp.services.control import ensure_session, start_session
from whatsapp.services.outbound import queue_outbound_message
from whatsapp.transport import base
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import (  # noqa: F401  (company_fixture is the `company` fixture)
    ScriptedTransport,
    company_fixture,
    fast_settings,
    reconcile_rounds,
    run,
    wait_until,
)

TO = "+491701234567"
Status = OutboundMessage.Status


def queue(company, text, key=None):
    return queue_outbound_message(company.pk, TO, text, idempotency_key=key)[0]


def held_for(company, worker="w1"):
    session = ensure_session(company.pk)
    return leases.try_acquire(worker, session.pk)


@pytest.mark.django_db
class TestSendingService:
    def test_only_the_lease_holder_claims_and_each_row_once(self, company):
        held = held_for(company)
        first, second = queue(company, "one"), queue(company, "two")
        stranger = leases.Held("w2", held.session_id, company.pk, held.epoch + 5)
        assert sending.claim_outbound(stranger) == []
        claimed = sending.claim_outbound(held)
        assert [c.pk for c in claimed] == [first.pk, second.pk]
        assert all(c.attempts == 1 for c in claimed)
        assert sending.claim_outbound(held) == []  # already sending
        assert set(OutboundMessage.objects.values_list("status", flat=True)) == {Status.SENDING}

    def test_a_transient_failure_is_retried_later_with_backoff(self, company, settings):
        settings.WHATSAPP = {**settings.WHATSAPP, "BACKOFF_BASE": 2.0, "BACKOFF_CAP": 60.0}
        held = held_for(company)
        message = queue(company, "hello")
        sending.claim_outbound(held)
        outcome, delay = sending.mark_outbound_failed(message.pk, "timeout", permanent=False)
        assert outcome == "retry" and 1.0 <= delay <= 2.0
        message.refresh_from_db()
        assert message.status == Status.QUEUED and "attempt 1" in message.last_error
        assert message.next_attempt_at > timezone.now()
        assert sending.claim_outbound(held) == []  # not due yet
        assert sending.claim_outbound(held, now=message.next_attempt_at)[0].attempts == 2

    def test_it_gives_up_after_the_configured_attempts(self, company, settings):
        settings.WHATSAPP = {**settings.WHATSAPP, "SEND_MAX_ATTEMPTS": 3}
        held = held_for(company)
        message = queue(company, "hello")
        for attempt in range(1, 4):
            OutboundMessage.objects.filter(pk=message.pk).update(next_attempt_at=None)
            assert sending.claim_outbound(held)[0].attempts == attempt
            outcome, _ = sending.mark_outbound_failed(message.pk, "server busy")
        assert outcome == "failed"
        message.refresh_from_db()
        assert message.status == Status.FAILED
        assert message.last_error == "server busy (gave up after 3 attempts)"

    def test_a_permanent_failure_fails_at_once_with_the_reason(self, company):
        held = held_for(company)
        message = queue(company, "hello")
        sending.claim_outbound(held)
        assert sending.mark_outbound_failed(message.pk, "unknown server", permanent=True) == (
            "failed",
            None,
        )
        message.refresh_from_db()
        assert (message.status, message.attempts) == (Status.FAILED, 1)
        assert "unknown server (permanent)" == message.last_error

    def test_a_worker_taking_over_many_companies_recovers_their_interrupted_sends_at_once(
        self, company
    ):
        other = Company.objects.create(name="Other", slug="other-interrupted")
        mine, theirs = held_for(company), held_for(other)
        in_flight = [queue(company, "one"), queue(company, "two"), queue(other, "three")]
        waiting = queue(other, "not claimed yet")
        # Two claimed with our id (resendable), one by a transport that cannot take it.
        for held, with_id in ((mine, True), (mine, False), (theirs, True)):
            assert len(sending.claim_outbound(held, limit=1, with_id=with_id)) == 1
        assert sending.recover_interrupted_sends_of([company.pk, other.pk]) == {
            company.pk: (1, 1),
            other.pk: (1, 0),
        }
        statuses = dict(OutboundMessage.objects.values_list("pk", "status"))
        assert [statuses[m.pk] for m in in_flight] == [Status.QUEUED, Status.FAILED, Status.QUEUED]
        assert statuses[waiting.pk] == Status.QUEUED
        assert sending.recover_interrupted_sends_of([company.pk, other.pk]) == {}

    def test_rows_a_dead_owner_left_in_sending_without_our_id_are_failed_not_resent(self, company):
        held = held_for(company)
        message = queue(company, "hello")
        sending.claim_outbound(held)  # neonize: WhatsApp chooses the id
        assert sending.recover_interrupted_sends(company.pk) == (0, 1)
        message.refresh_from_db()
        assert message.status == Status.FAILED and "outcome unknown" in message.last_error
        # WhatsApp's late answer still wins: the id is the truth.
        assert sending.mark_outbound_sent(message.pk, "3EB0LATE")
        message.refresh_from_db()
        assert (message.status, message.wa_message_id) == (Status.SENT, "3EB0LATE")

    def test_receipts_only_move_the_status_forward(self, company):
        message = queue(company, "hello")
        OutboundMessage.objects.filter(pk=message.pk).update(
            status=Status.SENT, wa_message_id="3EB0R"
        )
        assert sending.record_receipt(company.pk, ["3EB0R"], "read") == 1
        assert sending.record_receipt(company.pk, ["3EB0R"], "delivered") == 0
        message.refresh_from_db()
        assert message.status == Status.READ


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_message_queued_while_no_worker_runs_is_sent_once_when_one_starts(
    company, settings, tmp_path
):
    fast_settings(settings, tmp_path)
    start_session(company.pk)
    first = queue(company, "queued while down", key="booking-17")
    again, created = queue_outbound_message(
        company.pk, TO, "queued while down", idempotency_key="booking-17"
    )
    assert not created and again.pk == first.pk
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-out", transport=transport)

    async def scenario():
        await sup.start()
        await wait_until(
            lambda: OutboundMessage.objects.get(pk=first.pk).status == Status.SENT, what="sent"
        )
        await reconcile_rounds(sup, 4)  # nothing is sent twice
        await sup.shutdown("test over")

    run(scenario)
    assert transport.clients[0].sent == [("491701234567@s.whatsapp.net", "queued while down")]
    message = OutboundMessage.objects.get(pk=first.pk)
    assert transport.clients[0].sent_ids == [message.wa_message_id]  # sent with our id
    assert message.wa_message_id.startswith("3EB0") and message.attempts == 1
    assert WhatsAppSession.objects.get(company=company).messages_out == 1


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_sending_reuses_the_live_client_and_retries_a_transient_failure(
    company, settings, tmp_path
):
    fast_settings(settings, tmp_path, BACKOFF_BASE=0.2)
    start_session(company.pk)
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-out2", transport=transport)
    ids = []

    async def scenario():
        await sup.start()
        await wait_until(
            lambda: WhatsAppSession.objects.get(company=company).state == SessionState.CONNECTED,
            what="connected",
        )
        client = transport.clients[0]
        # By text, not by order: how sends and the retry interleave depends on load.
        client.errors_for = {
            "first": [base.TransportError("websocket not connected")],
            "second": [base.TransportError("recipient JID unknown server", permanent=True)],
        }
        for text in ("first", "second", "third"):
            ids.append((await _queue(company, text)).pk)
            sup.wants_drain(sup.sessions[company.pk])
        await wait_until(
            lambda: (
                OutboundMessage.objects.filter(
                    pk__in=ids, status__in=[Status.SENT, Status.FAILED]
                ).count()
                == 3
            ),
            timeout=10,
            what="all three settled",
        )
        await sup.shutdown("test over")

    run(scenario)
    assert len(transport.clients) == 1  # one client for the session, never one per send
    rows = {m.text: m for m in OutboundMessage.objects.filter(pk__in=ids)}
    assert (rows["first"].status, rows["first"].attempts) == (Status.SENT, 2)
    assert (rows["second"].status, rows["second"].attempts) == (Status.FAILED, 1)
    assert "permanent" in rows["second"].last_error
    assert rows["third"].status == Status.SENT


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_nothing_is_sent_while_the_session_is_not_connected(company, settings, tmp_path):
    fast_settings(settings, tmp_path)
    start_session(company.pk)
    message = queue(company, "waits")
    transport = ScriptedTransport(behaviour="qr")  # awaiting pairing: not logged in
    sup = SessionSupervisor(worker_id="w-out3", transport=transport)

    async def scenario():
        await sup.start()
        await wait_until(
            lambda: (
                WhatsAppSession.objects.get(company=company).state == SessionState.AWAITING_PAIRING
            ),
            what="awaiting pairing",
        )
        await reconcile_rounds(sup, 4)
        await sup.shutdown("test over")

    run(scenario)
    message.refresh_from_db()
    assert (message.status, message.attempts) == (Status.QUEUED, 0)


async def _queue(company, text):
    from channels.db import database_sync_to_async

    return await database_sync_to_async(queue)(company, text)
