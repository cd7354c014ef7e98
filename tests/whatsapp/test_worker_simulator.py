"""The real session worker driving the simulator transport.

The supervisor and its sessions are the production code; the transport is
`SimulatorTransport` talking over loopback to a simulator served on the same
event loop (an ephemeral port). Every situation the worker handles for real
WhatsApp is produced here by the simulator: a QR scan, a pairing code, the
440 conflict, a logout from the phone, a temporary ban, a dropped connection
with messages in flight, a reply and its delivery receipt.
"""

from pathlib import Path

import pytest
from aiohttp import web
from channels.db import database_sync_to_async as db

from whatsapp.models import (
    InboundMessage,
    OutboundMessage,
    ProcessingJob,
    SessionState,
    WhatsAppSession,
)
from whatsapp.services.control import logout_session, request_pairing_code, start_session
from whatsapp.services.outbound import queue_outbound_message
from whatsapp.simulator import protocol
from whatsapp.simulator.server import build_app
from whatsapp.simulator.state import SimulatorState
from whatsapp.transport import base
from whatsapp.transport.simulator_client import SimulatorTransport
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import (  # noqa: F401  (company_fixture is the `company` fixture)
    company_fixture,
    fast_settings,
    reconcile_rounds,
    run,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
PHONE = "4915112345678"


def row(company):
    return WhatsAppSession.objects.get(company=company)


def state_is(company, state):
    return lambda: row(company).state == state


class Rig:
    """A simulator on this loop, and supervisors using the simulator transport."""

    def __init__(self, tmp_path):
        self.tmp = Path(tmp_path)
        self.sim = SimulatorState(keepalive=5.0)
        self.runner = None
        self.url = ""
        self.sups = []

    async def __aenter__(self):
        self.runner = web.AppRunner(build_app(self.sim))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        for sup in self.sups:
            await sup.shutdown("test over")
        await self.runner.cleanup()

    def transport(self):
        return SimulatorTransport(url=self.url, store_dir=self.tmp / "store", reconnect_step=0.2)

    async def supervisor(self, name="w-sim"):
        sup = SessionSupervisor(worker_id=f"{name}-{len(self.sups)}", transport=self.transport())
        self.sups.append(sup)
        await sup.start()
        return sup

    async def stop(self, sup):
        await sup.shutdown("restart")
        self.sups.remove(sup)

    async def pair(self, company):
        await wait_until(state_is(company, SessionState.AWAITING_PAIRING), what="a QR")
        await self.sim.pair(self.sim.pending_for(company=company.pk), phone="4930900000001")
        await wait_until(state_is(company, SessionState.CONNECTED), what="connected")

    def cred(self, company):
        return self.sim.credential_for(company=company.pk)


@pytest.fixture
def rig(company, settings, tmp_path):
    fast_settings(settings, tmp_path)
    start_session(company.pk)
    return Rig(tmp_path)


def test_the_worker_pairs_by_qr_stores_messages_and_resumes_after_a_restart(rig, company):
    async def scenario():
        async with rig:
            sup = await rig.supervisor()
            await wait_until(state_is(company, SessionState.AWAITING_PAIRING), what="a QR")
            qr = (await db(row)(company)).qr_code
            assert qr.startswith("2@")
            await rig.pair(company)
            frame = protocol.inbound_frame(rig.cred(company).jid, PHONE, "hello", push_name="Eva")
            await rig.sim.inject(rig.cred(company), [frame])
            await wait_until(lambda: InboundMessage.objects.count() == 1, what="stored")
            await rig.stop(sup)
            await rig.supervisor()  # a restarted worker: same store, no pairing
            await wait_until(state_is(company, SessionState.CONNECTED), what="resumed")
            return qr, frame["id"]

    qr, message_id = run(scenario)
    session = row(company)
    assert session.jid.startswith("4930900000001:") and session.phone == "+4930900000001"
    assert session.qr_code == "" and rig.sim.totals["qr_issued"] == 1
    assert rig.sim.totals["connections"] == 2 and rig.sim.totals["conflicts"] == 0
    message = InboundMessage.objects.get()
    assert message.wa_message_id == message_id and message.push_name == "Eva"
    assert message.sender_phone == f"+{PHONE}" and message.text == "hello"
    assert ProcessingJob.objects.filter(message=message).count() == 1


def test_a_pairing_code_requested_by_an_operator_pairs_the_session(rig, company):
    async def scenario():
        async with rig:
            await rig.supervisor()
            await wait_until(state_is(company, SessionState.AWAITING_PAIRING), what="a QR")
            await db(request_pairing_code)(company.pk, "+49 151 12345678")
            await wait_until(lambda: row(company).pairing_code, what="a pairing code")
            code = (await db(row)(company)).pairing_code
            await rig.sim.enter_code(code)
            await wait_until(state_is(company, SessionState.CONNECTED), what="connected")
            return code

    code = run(scenario)
    assert len(code) == 9 and code[4] == "-"
    session = row(company)
    assert session.jid.startswith(f"{PHONE}:") and session.phone == f"+{PHONE}"
    assert rig.sim.totals["paired_by_code"] == 1


def test_a_rival_connection_parks_the_worker_as_replaced_without_a_reconnect_loop(rig, company):
    async def scenario():
        async with rig:
            sup = await rig.supervisor()
            await rig.pair(company)
            rival_events = []

            async def sink(event):
                rival_events.append(event)

            other = rig.transport()
            rival = other.new_client(base.ClientSpec(company_id=company.pk), sink)
            await rival.start()  # e.g. the old Node system, with the same credentials
            await wait_until(state_is(company, SessionState.REPLACED), what="replaced")
            await reconcile_rounds(sup, 7)
            await rival.stop()
            await other.aclose()
            return rival_events

    rival_events = run(scenario)
    assert any(isinstance(e, base.Connected) for e in rival_events)
    session = row(company)
    assert session.state == SessionState.REPLACED and session.conflict_count == 1
    assert rig.sim.totals["conflicts"] == 1 and rig.sim.totals["connections"] == 2


def test_a_logout_on_the_phone_marks_the_session_logged_out_and_forgets_the_device(
    rig, company, tmp_path
):
    async def scenario():
        async with rig:
            sup = await rig.supervisor()
            await rig.pair(company)
            store = Path(rig.transport().store_for(company.pk))
            assert store.exists()
            await rig.sim.phone_logout(rig.cred(company))
            await wait_until(state_is(company, SessionState.LOGGED_OUT), what="logged out")
            await reconcile_rounds(sup, 3)
            return store

    store = run(scenario)
    session = row(company)
    assert session.jid == "" and "LOGGED_OUT" in session.last_error
    assert not store.exists()


def test_start_after_an_operator_logout_pairs_again_with_a_fresh_qr_code(rig, company):
    async def scenario():
        async with rig:
            await rig.supervisor()
            await rig.pair(company)
            await db(logout_session)(company.pk, actor="by test")
            await wait_until(state_is(company, SessionState.LOGGED_OUT), what="logged out")
            await db(start_session)(company.pk, actor="by test")
            await wait_until(state_is(company, SessionState.AWAITING_PAIRING), what="a new QR")
            return (await db(row)(company)).qr_code

    qr = run(scenario)
    assert qr.startswith("2@") and rig.sim.totals["qr_issued"] == 2
    session = row(company)
    assert session.jid == "" and session.restart_requested_at is None


def test_a_temporary_ban_parks_the_session_until_it_expires(rig, company):
    async def scenario():
        async with rig:
            sup = await rig.supervisor()
            await rig.pair(company)
            await rig.sim.ban(rig.cred(company), 120)
            await wait_until(state_is(company, SessionState.BANNED), what="banned")
            await reconcile_rounds(sup, 5)

    run(scenario)
    session = row(company)
    assert session.ban_expires_at is not None and "SEND_TO_TOO_MANY_PEOPLE" in session.last_error
    assert rig.sim.totals["connections"] == 1  # nobody dialed during the ban


def test_a_drop_with_messages_in_flight_reconnects_and_blocks_every_redelivery(rig, company):
    async def scenario():
        async with rig:
            await rig.supervisor()
            await rig.pair(company)
            cred = rig.cred(company)
            frames = [protocol.inbound_frame(cred.jid, PHONE, f"m{i}") for i in range(5)]
            await rig.sim.inject(cred, frames)
            rig.sim.drop(cred)  # written, but no ack can come back any more
            await wait_until(lambda: row(company).reconnect_count == 1, what="reconnected")
            await wait_until(lambda: not rig.cred(company).outbox, what="all acked")
            return await db(row)(company)

    live = run(scenario)
    assert live.state == SessionState.CONNECTED and live.reconnect_count == 1
    session = row(company)
    assert InboundMessage.objects.count() == 5 and ProcessingJob.objects.count() == 5
    assert rig.sim.totals["redelivered"] == 5
    assert session.duplicates_blocked == 5 and session.conflict_count == 0
    assert sum(InboundMessage.objects.values_list("redeliveries", flat=True)) == 5


def test_a_queued_reply_is_sent_once_and_marked_delivered_by_the_receipt(rig, company):
    async def scenario():
        async with rig:
            await rig.supervisor()
            await rig.pair(company)
            await db(queue_outbound_message)(company.pk, f"+{PHONE}", "your table is booked")
            await wait_until(
                lambda: OutboundMessage.objects.filter(status="delivered").exists(),
                what="delivered",
            )

    run(scenario)
    sent = OutboundMessage.objects.get()
    assert [s["id"] for s in rig.sim.sends_by_phone[PHONE]] == [sent.wa_message_id]
    assert rig.sim.sends[0]["text"] == "your table is booked"


def test_a_message_the_database_could_not_store_is_not_acked_and_comes_again(
    rig, company, monkeypatch
):
    from django.db import OperationalError

    from whatsapp.worker import inbound as worker_inbound

    real_record = worker_inbound.record_inbound_messages
    outage = {"left": 1}

    def record_during_outage(items):
        # The database boundary fails once, as in an outage.
        if outage["left"]:
            outage["left"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return real_record(items)

    monkeypatch.setattr(worker_inbound, "record_inbound_messages", record_during_outage)

    async def scenario():
        async with rig:
            await rig.supervisor()
            await rig.pair(company)
            cred = rig.cred(company)
            frame = protocol.inbound_frame(cred.jid, PHONE, "book me at 5")
            await rig.sim.inject(cred, [frame])
            await wait_until(lambda: "OperationalError" in row(company).last_error, what="error")
            assert not await db(InboundMessage.objects.exists)()
            assert rig.cred(company).outbox  # still unacknowledged at the simulator
            rig.sim.drop(cred)  # on the next connection the simulator redelivers it
            await wait_until(lambda: InboundMessage.objects.count() == 1, what="stored")
            await wait_until(lambda: not rig.cred(company).outbox, what="acked")

    run(scenario)
    message = InboundMessage.objects.get()
    assert message.text == "book me at 5"
    assert ProcessingJob.objects.filter(message=message).count() == 1


def test_a_message_reaching_a_client_the_session_let_go_of_is_not_acked_and_comes_again(
    rig, company
):
    """_stop_client lets go of a client (token cleared) before the client is
    stopping: a message it delivers in that gap must not be acked (it would be
    stored nowhere); the simulator delivers it again to the current client."""

    async def scenario():
        async with rig:
            sup = await rig.supervisor()
            await rig.pair(company)
            ms = sup.sessions[company.pk]
            live_token = ms.token
            ms.token = object()  # the gap: the session has let go, the client still runs
            cred = rig.cred(company)
            await rig.sim.inject(cred, [protocol.inbound_frame(cred.jid, PHONE, "in the gap")])
            await wait_until(lambda: ms.client.handler_errors == 0 and _delivered(rig) >= 1,
                             what="delivered to the let-go client")
            await reconcile_rounds(sup, 2)
            assert not await db(InboundMessage.objects.exists)()
            assert rig.cred(company).outbox  # not acked
            assert ms.client.handler_errors == 0  # a refusal, not a handler error
            ms.token = live_token
            rig.sim.drop(cred)  # the current client gets it again on its next connection
            await wait_until(lambda: InboundMessage.objects.count() == 1, what="stored")
            await wait_until(lambda: not rig.cred(company).outbox, what="acked")

    run(scenario)
    message = InboundMessage.objects.get()
    assert message.text == "in the gap"
    assert ProcessingJob.objects.filter(message=message).count() == 1


def _delivered(rig):
    return rig.sim.totals["delivered"] + rig.sim.totals["redelivered"]
