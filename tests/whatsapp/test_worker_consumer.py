"""The worker's channel consumer, through channels.testing, for every command.

The consumer is the real one, on a real supervisor; the transport is the
scripted double at the WhatsApp boundary. Each command is a hint: the
services write the wish to the database first, exactly as the web side does.
"""

import logging

import pytest
from channels.db import database_sync_to_async
from channels.testing import ApplicationCommunicator

from whatsapp.consumers import SessionWorkerConsumer
from whatsapp.models import (
    ConnectionEvent,
    OutboundMessage,
    SessionLease,
    SessionState,
    WhatsAppSession,
    WorkerProcess,
)
from whatsapp.services import control
from whatsapp.services.outbound import queue_outbound_message
from whatsapp.worker.runtime import clear_supervisor, install_supervisor
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import (  # noqa: F401  (company_fixture is the `company` fixture)
    ScriptedTransport,
    company_fixture,
    fast_settings,
    run,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
CHANNEL = "whatsapp.worker.consumer-test"


@pytest.fixture
def worker(settings, tmp_path):
    # A long reconcile interval: what happens here happens because of the command.
    fast_settings(settings, tmp_path, RECONCILE_INTERVAL=2.5, LEASE_TTL=10.0)
    transport = ScriptedTransport()
    sup = install_supervisor(
        SessionSupervisor(worker_id="consumer-test", transport=transport, channel_name=CHANNEL)
    )
    yield sup, transport
    clear_supervisor()


def state_of(company):
    return WhatsAppSession.objects.get(company=company).state


def db(fn):
    return database_sync_to_async(fn)


async def open_consumer(sup):
    comm = ApplicationCommunicator(
        SessionWorkerConsumer.as_asgi(), {"type": "channel", "channel": CHANNEL}
    )
    await comm.send_input({"type": "worker.boot"})
    await wait_until(
        lambda: WorkerProcess.objects.filter(worker_id="consumer-test").exists(),
        what="worker registered",
    )
    return comm


async def close_consumer(comm, sup):
    assert not comm.future.done(), "the consumer died"
    await sup.shutdown("test over")
    comm.stop()


def test_boot_registers_the_worker_on_its_own_channel(worker):
    sup, _ = worker

    async def scenario():
        comm = await open_consumer(sup)
        assert sup.started
        await close_consumer(comm, sup)

    run(scenario)
    row = WorkerProcess.objects.get(worker_id="consumer-test")
    assert row.channel_name == CHANNEL
    assert row.stopped_at is not None  # shutdown marked it


def test_start_send_restart_stop_through_the_consumer(worker, company):
    sup, transport = worker

    async def scenario():
        comm = await open_consumer(sup)
        await db(control.start_session)(company.pk)
        await comm.send_input({"type": "session.start", "company_id": company.pk})
        await wait_until(lambda: state_of(company) == SessionState.CONNECTED, what="connected")

        # message.send: sent through the client we have, never a new one.
        msgs = []
        for i in range(3):
            msg, _ = await db(queue_outbound_message)(company.pk, "+491701234567", f"hi {i}")
            msgs.append(msg.pk)
            await comm.send_input(
                {"type": "message.send", "company_id": company.pk, "outbound_id": msg.pk}
            )
        await wait_until(
            lambda: OutboundMessage.objects.filter(pk__in=msgs, status="sent").count() == 3,
            what="3 sent",
        )
        assert len(transport.clients_of(company.pk)) == 1

        # restart: the old client is stopped before the new one exists.
        await db(control.restart_session)(company.pk)
        await comm.send_input({"type": "session.restart", "company_id": company.pk})
        await wait_until(
            lambda: (
                len(transport.clients_of(company.pk)) == 2
                and state_of(company) == SessionState.CONNECTED
            ),
            what="restarted",
        )

        await db(control.stop_session)(company.pk)
        await comm.send_input({"type": "session.stop", "company_id": company.pk})
        await wait_until(lambda: state_of(company) == SessionState.STOPPED, what="stopped")
        await wait_until(
            lambda: SessionLease.objects.get(session__company=company).owner == "",
            what="lease released",
        )
        await close_consumer(comm, sup)

    run(scenario)
    log = [entry for entry in transport.log if entry[1] == company.pk]
    assert log.index(("stop", company.pk, 1)) < log.index(("new", company.pk, 2))
    assert transport.violations == []
    assert not transport.live_of(company.pk)
    sent = OutboundMessage.objects.filter(company=company).order_by("id")
    # All three through client 1, each with the id stored on its row before sending.
    first_client = transport.clients_of(company.pk)[0]
    assert [m.wa_message_id for m in sent] == first_client.sent_ids
    assert len(set(first_client.sent_ids)) == 3
    session = WhatsAppSession.objects.get(company=company)
    assert session.messages_out == 3
    assert session.jid == transport.jid and session.phone == "+491700000001"


def test_pair_phone_through_the_consumer_stores_the_code(worker, company):
    sup, transport = worker
    transport.behaviour[company.pk] = "qr"

    async def scenario():
        comm = await open_consumer(sup)
        await db(control.request_pairing_code)(company.pk, "+49 170 1234567")
        await comm.send_input({"type": "session.pair_phone", "company_id": company.pk})
        await wait_until(
            lambda: WhatsAppSession.objects.get(company=company).pairing_code, what="pairing code"
        )
        await close_consumer(comm, sup)

    run(scenario)
    session = WhatsAppSession.objects.get(company=company)
    assert session.pairing_code == "ABCD-1234"
    assert session.pairing_requested_at is None
    assert session.qr_code == ""  # cleared by the hand-over at shutdown
    assert transport.clients_of(company.pk)[0].pair_requests == ["+491701234567"]
    assert (
        ConnectionEvent.objects.filter(
            session=session, kind="qr", worker_id="consumer-test"
        ).count()
        == 1
    )


def test_logout_through_the_consumer_logs_out_and_forgets_the_device(worker, company):
    sup, transport = worker

    async def scenario():
        comm = await open_consumer(sup)
        await db(control.start_session)(company.pk)
        await comm.send_input({"type": "session.start", "company_id": company.pk})
        await wait_until(lambda: state_of(company) == SessionState.CONNECTED, what="connected")
        await db(control.logout_session)(company.pk)
        await comm.send_input({"type": "session.logout", "company_id": company.pk})
        await wait_until(lambda: state_of(company) == SessionState.LOGGED_OUT, what="logged out")
        await close_consumer(comm, sup)

    run(scenario)
    session = WhatsAppSession.objects.get(company=company)
    assert session.jid == "" and session.logout_requested_at is None
    assert transport.clients_of(company.pk)[0].logged_out
    assert transport.forgotten == [company.pk]
    assert len(transport.clients_of(company.pk)) == 1  # parked: no reconnect


MALFORMED = [
    ({"type": "session.explode", "company_id": 1}, "unknown command type 'session.explode'"),
    ({"type": "session.start"}, "'company_id' must be a positive integer, got None"),
    ({"type": "session.start", "company_id": "abc"}, "got 'abc'"),
    ({"type": "session.stop", "company_id": -4}, "got -4"),
    ({"type": "session.restart", "company_id": True}, "got True"),
    ({"type": "message.send", "company_id": 1, "outbound_id": "x"}, "'outbound_id' must be"),
    ({"type": 7}, "has no 'type'"),
    ({"type": ""}, "has no 'type'"),
]


def test_malformed_or_unknown_commands_are_rejected_clearly_and_the_worker_goes_on(
    worker, company, caplog
):
    sup, transport = worker
    caplog.set_level(logging.ERROR, logger="whatsapp.worker.command_handling")
    rejections = []

    async def scenario():
        comm = await open_consumer(sup)
        for number, (message, _reason) in enumerate(MALFORMED, start=1):
            await comm.send_input(message)
            await wait_until(lambda n=number: sup.rejected == n, what=f"rejection {number}")
            rejections.append(sup.last_rejected)
        # Still alive: a valid command right after works.
        await db(control.start_session)(company.pk)
        await comm.send_input({"type": "session.start", "company_id": company.pk})
        await wait_until(lambda: state_of(company) == SessionState.CONNECTED, what="connected")
        await close_consumer(comm, sup)

    run(scenario)
    for (message, reason), rejected in zip(MALFORMED, rejections, strict=True):
        assert reason in rejected, (message, rejected)
        assert reason in caplog.text
    assert caplog.text.count("rejected a command") == len(MALFORMED)
    assert not WhatsAppSession.objects.exclude(company=company).exists()


def test_a_command_for_a_company_that_does_not_exist_stores_nothing(worker, caplog):
    sup, transport = worker

    async def scenario():
        comm = await open_consumer(sup)
        await comm.send_input({"type": "session.start", "company_id": 987654})
        await wait_until(lambda: sup.rejected == 1, what="rejection")
        await close_consumer(comm, sup)

    run(scenario)
    assert "company 987654" in sup.last_rejected and "does not exist" in sup.last_rejected
    assert not WhatsAppSession.objects.filter(company_id=987654).exists()
    assert transport.clients == []


def test_an_unknown_command_for_an_owned_company_is_recorded_on_its_session(worker, company):
    sup, transport = worker

    async def scenario():
        comm = await open_consumer(sup)
        await db(control.start_session)(company.pk)
        await comm.send_input({"type": "session.start", "company_id": company.pk})
        await wait_until(lambda: state_of(company) == SessionState.CONNECTED, what="connected")
        await comm.send_input({"type": "session.reboot", "company_id": company.pk})
        await wait_until(lambda: sup.rejected == 1, what="rejection")
        await close_consumer(comm, sup)

    run(scenario)
    error = ConnectionEvent.objects.get(session__company=company, kind="error")
    assert "unknown command type 'session.reboot'" in error.reason
    assert len(transport.clients_of(company.pk)) == 1  # nothing else happened


def test_a_lost_hint_loses_nothing_the_reconcile_loop_starts_the_session(worker, company, settings):
    """No session.start message at all: the database says running, so it runs."""
    sup, transport = worker

    async def scenario():
        comm = await open_consumer(sup)
        await db(control.start_session)(company.pk)
        await wait_until(
            lambda: state_of(company) == SessionState.CONNECTED,
            timeout=10,
            what="connected by reconcile",
        )
        await close_consumer(comm, sup)

    run(scenario)
    assert len(transport.clients_of(company.pk)) == 1
