"""Exactly once from queued to answered: hand-overs and dead owners never lose
or duplicate a reply.

* The message id is ours: stored on the row when it is claimed, before the
  first attempt, and the same for every later attempt.
* A hand-over (SIGTERM, a lost lease) lets the send in flight finish within
  WHATSAPP["SEND_HANDOVER_BUDGET"] and records its true outcome.
* A send cut off anyway (the budget ran out, the owner was SIGKILLed) is sent
  again by the next owner with the same id; the recipient -- the simulator's
  phone, as WhatsApp's -- keeps it once and counts the duplicate.
* Only a transport that cannot send with our id leaves an outcome unknown.

The worker tests drive the real supervisor with the scripted transport (the
boundary to WhatsApp) or the real simulator transport against a simulator on
the same loop; the last test runs real `runworker` processes and SIGTERMs and
SIGKILLs them while a send is in flight.
"""

import asyncio
import signal
import time

import pytest
from channels.db import database_sync_to_async as db

from companies.models import Company
from tests.e2e_processes import AppProcesses, Simulator, pair_companies, wait_connected, wait_for
from whatsapp.models import OutboundMessage, SessionLease, SessionState, WhatsAppSession
from whatsapp.services import leases, sending
from whatsapp.services.control import ensure_session, start_session
from whatsapp.services.outbound import queue_outbound_message
from whatsapp.worker.supervisor import SessionSupervisor

from .test_worker_leases import running_companies
from .test_worker_simulator import Rig
from .worker_doubles import (  # noqa: F401  (company_fixture is the `company` fixture)
    ScriptedTransport,
    company_fixture,
    fast_settings,
    reconcile_rounds,
    run,
    until,
    wait_until,
)

TO = "+491701234567"
PHONE = "491701234567"
Status = OutboundMessage.Status
FINAL_OK = {Status.SENT, Status.DELIVERED, Status.READ}


def queue(company, text):
    return queue_outbound_message(company.pk, TO, text)[0]


def outbound(pk):
    return OutboundMessage.objects.get(pk=pk)


# --- the id on the row ---------------------------------------------------------------
@pytest.mark.django_db
class TestTheMessageId:
    def test_it_is_stored_when_the_row_is_claimed_and_kept_for_every_retry(self, company):
        held = leases.try_acquire("w1", ensure_session(company.pk).pk)
        message = queue(company, "hello")
        assert message.wa_message_id == ""
        first = sending.claim_outbound(held, with_id=True)[0]
        assert first.message_id.startswith("3EB0") and len(first.message_id) == 22
        assert outbound(message.pk).wa_message_id == first.message_id  # before the attempt
        sending.mark_outbound_failed(message.pk, "websocket not connected")
        OutboundMessage.objects.filter(pk=message.pk).update(next_attempt_at=None)
        again = sending.claim_outbound(held, with_id=True)[0]
        assert (again.attempts, again.message_id) == (2, first.message_id)

    def test_a_row_claimed_for_a_transport_that_cannot_take_it_carries_none(self, company):
        held = leases.try_acquire("w1", ensure_session(company.pk).pk)
        message = queue(company, "hello")
        OutboundMessage.objects.filter(pk=message.pk).update(wa_message_id="3EB0CHOSENBEFORE")
        assert sending.claim_outbound(held, with_id=False)[0].message_id == ""
        assert outbound(message.pk).wa_message_id == ""
        assert sending.recover_interrupted_sends(company.pk) == (0, 1)


def test_a_hand_over_budget_out_of_range_stops_the_start_with_a_clear_error(settings):
    from whatsapp.checks import check_whatsapp_settings

    settings.WHATSAPP = {**settings.WHATSAPP, "SEND_HANDOVER_BUDGET": -1}
    assert [e.id for e in check_whatsapp_settings(None)] == ["whatsapp.E008"]
    settings.WHATSAPP = {**settings.WHATSAPP, "SEND_HANDOVER_BUDGET": 3}
    assert check_whatsapp_settings(None) == []


# --- hand-overs with the scripted transport ------------------------------------------
def connected(company):
    return lambda: WhatsAppSession.objects.get(company=company).state == SessionState.CONNECTED


async def send_and_hold(sup, transport, company, text):
    """Queue `text` and wait until its send is in flight (held by the client)."""
    await wait_until(connected(company), what="connected")
    client = transport.clients[-1]
    client.hold = asyncio.Event()
    message = await db(queue)(company, text)
    sup.wants_drain(sup.sessions[company.pk])
    await asyncio.wait_for(client.in_flight.wait(), 10)
    return client, message


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_send_in_flight_when_the_worker_stops_finishes_and_reads_sent(
    company, settings, tmp_path
):
    fast_settings(settings, tmp_path, SEND_HANDOVER_BUDGET=4.0)
    start_session(company.pk)
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-term", transport=transport)
    seen = {}

    async def scenario():
        await sup.start()
        client, message = await send_and_hold(sup, transport, company, "your table is booked")
        ms = sup.sessions[company.pk]
        stopping = asyncio.create_task(sup.shutdown("SIGTERM"))
        await until(lambda: ms.stopping, "the hand-over to begin")
        seen["client up during the hand-over"] = client.live
        client.hold.set()  # WhatsApp answers now
        await stopping
        seen["message"] = message.pk

    run(scenario)
    assert seen["client up during the hand-over"]
    row = outbound(seen["message"])
    client = transport.clients[0]
    assert row.status == Status.SENT and row.attempts == 1
    assert client.sent_ids == [row.wa_message_id]
    log = [action for action, _company, _n in transport.log]
    assert log.index("send") < log.index("stop")  # the send finished, then the client stopped
    assert SessionLease.objects.get(session__company=company).owner == ""  # handed over
    assert WhatsAppSession.objects.get(company=company).messages_out == 1


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_send_in_flight_when_the_lease_is_lost_finishes_and_reads_sent(
    company, settings, tmp_path
):
    fast_settings(settings, tmp_path, SEND_HANDOVER_BUDGET=4.0)
    start_session(company.pk)
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-lost", transport=transport)
    seen = {}

    async def scenario():
        await sup.start()
        client, message = await send_and_hold(sup, transport, company, "see you at eight")
        ms = sup.sessions[company.pk]
        # Another worker took the company over (our lease had lapsed).
        await db(
            lambda: SessionLease.objects.filter(session__company=company).update(
                owner="w-thief", epoch=ms.held.epoch + 1
            )
        )()
        await until(lambda: ms.stopping, "the lost lease to be noticed")
        client.hold.set()
        await until(lambda: ms.closed and not client.live, "the client to stop")
        seen["message"] = message.pk
        await sup.shutdown("test over")

    run(scenario)
    row = outbound(seen["message"])
    assert row.status == Status.SENT and row.attempts == 1
    assert transport.clients[0].sent_ids == [row.wa_message_id]


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_send_in_flight_when_rebalancing_hands_its_session_over_finishes_and_reads_sent(
    settings, tmp_path
):
    fast_settings(settings, tmp_path, SEND_HANDOVER_BUDGET=4.0)
    sessions = running_companies(4, prefix="rebalance")
    handed = min(s.company_id for s in sessions)  # all connected: the lowest id goes first
    first_transport, second_transport = ScriptedTransport(), ScriptedTransport()
    first = SessionSupervisor(worker_id="w-first", transport=first_transport)
    second = SessionSupervisor(worker_id="w-second", transport=second_transport)
    seen = {}

    async def scenario():
        await first.start()
        await wait_until(
            lambda: WhatsAppSession.objects.filter(state=SessionState.CONNECTED).count() == 4,
            what="four connected",
        )
        client = first_transport.clients_of(handed)[0]
        client.hold = asyncio.Event()
        message = await db(queue_outbound_message)(handed, TO, "your table is ready")
        first.wants_drain(first.sessions[handed])
        await asyncio.wait_for(client.in_flight.wait(), 10)
        ms = first.sessions[handed]
        await second.start()  # fair share 2 each: the first hands one session over
        await until(lambda: ms.stopping, "the rebalancing hand-over to begin")
        seen["client up during the hand-over"] = client.live
        client.hold.set()
        await wait_until(
            lambda: len(second_transport.live_of(handed)) == 1, what="taken over by the second"
        )
        await reconcile_rounds(second, 3)
        await second.shutdown("test over")
        await first.shutdown("test over")
        seen["message"] = message[0].pk

    run(scenario)
    assert seen["client up during the hand-over"]
    row = outbound(seen["message"])
    assert row.status == Status.SENT and row.attempts == 1
    assert first_transport.clients_of(handed)[0].sent_ids == [row.wa_message_id]
    assert all(c.sent == [] for c in second_transport.clients)  # not sent again


def _cut_off_send(company, settings, tmp_path, first_transport):
    """A send held past the hand-over budget by the first worker; then a second
    worker takes the company over. Returns the row and the second transport."""
    fast_settings(settings, tmp_path, SEND_HANDOVER_BUDGET=0.3)
    start_session(company.pk)
    second_transport = ScriptedTransport(sends_with_id=first_transport.sends_with_id)
    first = SessionSupervisor(worker_id="w-first", transport=first_transport)
    second = SessionSupervisor(worker_id="w-second", transport=second_transport)
    seen = {}

    async def scenario():
        await first.start()
        _client, message = await send_and_hold(first, first_transport, company, "cut off")
        await first.shutdown("SIGTERM")  # the send never answers within the budget
        seen["left"] = await db(lambda: outbound(message.pk))()
        await second.start()
        await wait_until(connected(company), what="the second worker connected")
        await wait_until(lambda: outbound(message.pk).status != Status.QUEUED, what="settled")
        await reconcile_rounds(second, 3)  # nothing more happens to it
        await second.shutdown("test over")
        seen["message"] = message.pk

    run(scenario)
    return seen["left"], outbound(seen["message"]), second_transport


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_send_cut_off_after_the_budget_is_sent_again_by_the_next_owner_with_the_same_id(
    company, settings, tmp_path
):
    left, row, second = _cut_off_send(company, settings, tmp_path, ScriptedTransport())
    assert left.status == Status.SENDING and left.wa_message_id.startswith("3EB0")
    assert row.status == Status.SENT and row.attempts == 2
    assert row.wa_message_id == left.wa_message_id
    assert second.clients[0].sent_ids == [left.wa_message_id]  # resent with the same id


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_without_our_id_an_interrupted_send_is_failed_as_outcome_unknown_and_not_resent(
    company, settings, tmp_path
):
    left, row, second = _cut_off_send(
        company, settings, tmp_path, ScriptedTransport(sends_with_id=False)
    )
    assert (left.status, left.wa_message_id) == (Status.SENDING, "")
    assert row.status == Status.FAILED and row.last_error == sending.INTERRUPTED
    assert second.clients[0].sent == []


# --- the simulator's phone keeps a resent message once --------------------------------
@pytest.fixture
def rig(company, settings, tmp_path):
    fast_settings(settings, tmp_path)
    start_session(company.pk)
    return Rig(tmp_path)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_send_cut_off_is_resent_with_its_id_and_the_phone_shows_it_once(rig, company, settings):
    """As after a SIGKILL: the message reached the phone, its ack never reached
    the worker. The next owner sends it again with the same id."""
    settings.WHATSAPP = {**settings.WHATSAPP, "SEND_HANDOVER_BUDGET": 0}
    seen = {}

    async def scenario():
        async with rig:
            first = await rig.supervisor("w-first")
            await rig.pair(company)
            rig.sim.slow_down_sends(rig.cred(company), 30)  # the ack will come too late
            message = await db(queue_outbound_message)(company.pk, TO, "table for two at 8")
            await until(lambda: rig.sim.sends_by_phone.get(PHONE), "the phone to get it")
            await rig.stop(first)  # no budget: the send is cut off
            seen["left"] = await db(lambda: outbound(message[0].pk))()
            await rig.supervisor("w-second")
            await wait_until(
                lambda: outbound(message[0].pk).status == Status.DELIVERED, what="delivered"
            )
            seen["row"] = await db(lambda: outbound(message[0].pk))()

    run(scenario)
    left, row = seen["left"], seen["row"]
    assert left.status == Status.SENDING and left.wa_message_id
    assert row.wa_message_id == left.wa_message_id and row.attempts == 2
    shown = rig.sim.sends_by_phone[PHONE]
    assert [(s["id"], s["text"], s["duplicates"]) for s in shown] == [
        (row.wa_message_id, "table for two at 8", 1)
    ]
    stats = rig.sim.stats()
    assert stats["totals"]["sends"] == 1 and stats["totals"]["duplicate_sends"] == 1
    assert stats["companies"][str(company.pk)]["duplicate_sends"] == 1


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_send_in_flight_on_shutdown_reaches_the_phone_once_and_reads_sent(rig, company):
    seen = {}

    async def scenario():
        async with rig:
            first = await rig.supervisor("w-first")
            await rig.pair(company)
            rig.sim.slow_down_sends(rig.cred(company), 1.0)
            message = await db(queue_outbound_message)(company.pk, TO, "your order shipped")
            await until(lambda: rig.sim.sends_by_phone.get(PHONE), "the phone to get it")
            await rig.stop(first)  # within the default budget: the ack arrives first
            seen["row"] = await db(lambda: outbound(message[0].pk))()

    run(scenario)
    row = seen["row"]
    assert row.status in FINAL_OK and row.attempts == 1
    assert [s["id"] for s in rig.sim.sends_by_phone[PHONE]] == [row.wa_message_id]
    assert rig.sim.stats()["totals"].get("duplicate_sends", 0) == 0


# --- real worker processes --------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_real_workers_finish_a_send_on_sigterm_and_resend_it_with_its_id_after_sigkill(
    tmp_path,
):
    sim = Simulator(tmp_path).start()
    app = AppProcesses(
        tmp_path,
        sim,
        WHATSAPP_LEASE_TTL=5,
        WHATSAPP_RECONCILE_INTERVAL=1,
        WHATSAPP_BACKOFF_BASE=1,
        WHATSAPP_BACKOFF_CAP=4,
        WHATSAPP_SHUTDOWN_GRACE=10,  # hand-over budget: min(5, 6 / 2) = 3 s
    )
    company = Company.objects.create(name="Salon Handover", slug="salon-handover")
    start_session(company.pk, actor="e2e test")

    def owner():
        return SessionLease.objects.get(session__company=company).owner

    def on_phone(text):
        return [s for s in sim.sends(phone=PHONE) if s["text"] == text]

    try:
        app.start_workers("w1")
        pair_companies(sim, [company.pk], app)
        app.start_workers("w2")  # a standby

        # SIGTERM while the send is in flight: it finishes and reads sent.
        sim.post("slow-sends", company=company.pk, seconds=1.5)
        term = queue(company, "sent while w1 stops")
        wait_for(lambda: on_phone(term.text), 20, "the phone to get the first text")
        app.signal("w1", signal.SIGTERM)
        row = outbound(term.pk)
        assert row.status in FINAL_OK and row.attempts == 1, (row.status, row.last_error)
        wait_connected([company.pk], app, "w2 took over")
        assert owner() == app.ids["w2"]

        # SIGKILL while the send is in flight: the next owner resends with its id.
        sim.post("slow-sends", company=company.pk, seconds=60)
        kill = queue(company, "sent while w2 dies")
        wait_for(lambda: on_phone(kill.text), 20, "the phone to get the second text")
        left = outbound(kill.pk)
        app.signal("w2", signal.SIGKILL)
        app.start_workers("w3")
        wait_for(
            lambda: outbound(kill.pk).status in {Status.DELIVERED, Status.READ},
            30,
            "the killed send resent and delivered",
        )
        time.sleep(1.0)  # a late duplicate would show now
        shown = {text: [s["duplicates"] for s in on_phone(text)] for text in (term.text, kill.text)}
        duplicates = sim.company(company.pk).get("duplicate_sends")
    except AssertionError:
        print(app.logs())
        raise
    finally:
        app.stop_all()
        sim.stop()
    row = outbound(kill.pk)
    assert left.status == Status.SENDING and left.wa_message_id
    assert row.wa_message_id == left.wa_message_id and row.attempts == 2
    assert shown == {term.text: [0], kill.text: [1]}  # each shown once; the second resent once
    assert duplicates == 1
    assert not OutboundMessage.objects.filter(status=Status.FAILED).exists()
