"""The per-session state machine inside the worker, driven by transport events.

The transport is the scripted double at the WhatsApp boundary; the events
are the transport's own (base.py), inbound messages are real neonize
MessageEv protobufs.
"""

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from whatsapp.models import (
    ConnectionEvent,
    InboundMessage,
    ProcessingJob,
    SessionLease,
    SessionState,
    WhatsAppSession,
)
from whatsapp.services.control import restart_session, start_session
from whatsapp.transport import base
from whatsapp.transport.build import message_event
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import (  # noqa: F401  (company_fixture is the `company` fixture)
    ScriptedTransport,
    company_fixture,
    fast_settings,
    reconcile_rounds,
    run,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def row(company):
    return WhatsAppSession.objects.get(company=company)


def kinds(company):
    return list(
        ConnectionEvent.objects.filter(session__company=company)
        .exclude(worker_id="")
        .order_by("id")
        .values_list("kind", flat=True)
    )


@pytest.fixture
def started(company, settings, tmp_path):
    fast_settings(settings, tmp_path)
    start_session(company.pk)
    transport = ScriptedTransport()
    return SessionSupervisor(worker_id="w-sm", transport=transport), transport, company


async def connected(sup, company):
    await sup.start()
    await wait_until(lambda: row(company).state == SessionState.CONNECTED, what="connected")
    return sup.sessions[company.pk]


def test_stream_replaced_parks_the_session_and_never_reconnects_in_a_loop(started, settings):
    sup, transport, company = started

    async def scenario():
        await connected(sup, company)
        await transport.clients[0].emit(base.StreamReplaced())
        await wait_until(lambda: row(company).state == SessionState.REPLACED, what="replaced")
        await reconcile_rounds(sup, 7)
        assert len(transport.clients) == 1
        await sup.shutdown("test over")

    run(scenario)
    session = row(company)
    assert session.state == SessionState.REPLACED  # the worker's shutdown kept it parked
    assert session.conflict_count == 1 and session.reconnect_count == 0
    assert session.next_connect_at - timezone.now() > timedelta(seconds=500)  # backs off long
    assert "stream replaced" in session.last_error
    assert "replaced" in kinds(company)
    assert not transport.live_of(company.pk)


def test_after_the_long_replaced_backoff_one_new_attempt_is_made(started, settings, tmp_path):
    sup, transport, company = started
    fast_settings(settings, tmp_path, REPLACED_BACKOFF=1.0)

    async def scenario():
        await connected(sup, company)
        await transport.clients[0].emit(base.StreamReplaced())
        await wait_until(lambda: row(company).state == SessionState.REPLACED, what="replaced")
        await wait_until(
            lambda: len(transport.clients) == 2 and row(company).state == SessionState.CONNECTED,
            timeout=5,
            what="one new attempt after the backoff",
        )
        await sup.shutdown("test over")

    run(scenario)
    assert row(company).conflict_count == 1
    assert transport.violations == []


def test_a_restart_takes_a_replaced_session_out_of_its_parking(started):
    sup, transport, company = started

    async def scenario():
        await connected(sup, company)
        await transport.clients[0].emit(base.StreamReplaced())
        await wait_until(lambda: row(company).state == SessionState.REPLACED, what="replaced")
        await database_sync_to_async(restart_session)(company.pk)
        sup.nudge_company(company.pk)
        await wait_until(lambda: row(company).state == SessionState.CONNECTED, what="back")
        await sup.shutdown("test over")

    run(scenario)
    assert len(transport.clients) == 2
    assert row(company).restart_requested_at is None


def test_logged_out_forgets_the_device_and_waits_for_a_new_pairing(started):
    sup, transport, company = started

    async def scenario():
        await connected(sup, company)
        assert (await database_sync_to_async(row)(company)).jid
        await transport.clients[0].emit(base.LoggedOut(reason="LOGGED_OUT"))
        await wait_until(lambda: row(company).state == SessionState.LOGGED_OUT, what="logged out")
        await reconcile_rounds(sup, 5)
        assert len(transport.clients) == 1  # no reconnect: pairing is required
        await sup.shutdown("test over")

    run(scenario)
    session = row(company)
    assert session.jid == "" and "LOGGED_OUT" in session.last_error
    assert transport.forgotten == [company.pk]
    assert transport.forgotten_jids == [transport.jid]  # the device that was logged out
    assert session.is_parked()


def test_a_temporary_ban_parks_until_its_expiry_then_reconnects(started):
    sup, transport, company = started

    async def scenario():
        await connected(sup, company)
        await transport.clients[0].emit(
            base.TemporaryBan(code="SEND_TO_TOO_MANY_PEOPLE", expires_in_seconds=3600)
        )
        await wait_until(lambda: row(company).state == SessionState.BANNED, what="banned")
        await reconcile_rounds(sup, 5)
        assert len(transport.clients) == 1
        banned = await database_sync_to_async(row)(company)
        assert timedelta(minutes=59) < banned.ban_expires_at - timezone.now() <= timedelta(hours=1)
        # The ban runs out (the row is the truth; we move its clock).
        await database_sync_to_async(
            lambda: WhatsAppSession.objects.filter(company=company).update(
                ban_expires_at=timezone.now(), next_connect_at=timezone.now()
            )
        )()
        await wait_until(lambda: row(company).state == SessionState.CONNECTED, what="back")
        await sup.shutdown("test over")

    run(scenario)
    assert len(transport.clients) == 2
    assert "banned" in kinds(company)


def test_a_drop_that_whatsmeow_repairs_counts_one_reconnect_on_the_same_client(started):
    sup, transport, company = started

    async def scenario():
        await connected(sup, company)
        client = transport.clients[0]
        await client.emit(base.Disconnected())
        await wait_until(
            lambda: row(company).state == SessionState.RECONNECTING, what="reconnecting"
        )
        await client.emit(base.Connected(jid=transport.jid))
        await wait_until(lambda: row(company).reconnect_count == 1, what="reconnected")
        await sup.shutdown("test over")

    run(scenario)
    assert len(transport.clients) == 1
    assert kinds(company).count("reconnected") == 1
    assert row(company).connect_failure_count == 0


def test_a_fresh_session_shows_its_qr_and_stores_the_paired_device(company, settings, tmp_path):
    fast_settings(settings, tmp_path)
    start_session(company.pk)
    transport = ScriptedTransport(behaviour="qr")
    sup = SessionSupervisor(worker_id="w-qr", transport=transport)

    async def scenario():
        await sup.start()
        await wait_until(lambda: row(company).state == SessionState.AWAITING_PAIRING, what="qr")
        client = transport.clients[0]
        await client.emit(base.QRCode(codes=("2@second-code",)))  # rotation: one event row
        await client.emit(base.PairSuccess(jid="491701112223:5@s.whatsapp.net", push_name="Salon"))
        await client.emit(base.Connected(jid="491701112223:5@s.whatsapp.net"))
        await wait_until(lambda: row(company).state == SessionState.CONNECTED, what="connected")
        await sup.shutdown("test over")

    run(scenario)
    session = row(company)
    assert session.jid == "491701112223:5@s.whatsapp.net" and session.phone == "+491701112223"
    assert session.qr_code == ""
    assert kinds(company).count("qr") == 1 and "paired" in kinds(company)


def test_inbound_messages_become_one_row_and_one_job_and_bad_ones_are_recorded(started):
    sup, transport, company = started
    event = message_event("3EB0INBOUND1", "491701234567@s.whatsapp.net", "Hallo", push_name="Kunde")
    broken = message_event("", "491701234567@s.whatsapp.net", "no id")

    async def scenario():
        await connected(sup, company)
        client = transport.clients[0]
        await client.emit(base.InboundMessage(event=event))
        await client.emit(base.InboundMessage(event=event))  # redelivered after a reconnect
        await client.emit(base.InboundMessage(event=broken))
        await wait_until(
            lambda: ConnectionEvent.objects.filter(session__company=company, kind="error").exists(),
            what="error recorded",
        )
        await sup.shutdown("test over")

    run(scenario)
    message = InboundMessage.objects.get(company=company)
    assert (message.wa_message_id, message.text, message.sender_phone) == (
        "3EB0INBOUND1",
        "Hallo",
        "+491701234567",
    )
    assert ProcessingJob.objects.filter(message=message).count() == 1
    session = row(company)
    assert session.messages_in == 1 and session.duplicates_blocked == 1
    error = ConnectionEvent.objects.get(session__company=company, kind="error")
    assert "malformed message event" in error.reason and "no ID" in error.reason


def test_connect_attempts_are_bounded_and_clients_start_one_at_a_time(settings, tmp_path):
    from .test_worker_leases import running_companies

    fast_settings(
        settings,
        tmp_path,
        CONNECT_CONCURRENCY=2,
        CONNECT_TIMEOUT=1.0,  # long enough that two hanging attempts surely overlap
        BACKOFF_BASE=5.0,
        BACKOFF_CAP=5.0,
    )
    sessions = running_companies(8)
    transport = ScriptedTransport(behaviour="hang")
    sup = SessionSupervisor(worker_id="w-cc", transport=transport)

    async def scenario():
        await sup.start()
        await wait_until(
            # >= 1: an early failure may already have been retried (and failed) again
            lambda: WhatsAppSession.objects.filter(connect_failure_count__gte=1).count() == 8,
            timeout=20,
            what="8 attempts timed out",
        )
        await sup.shutdown("test over")

    run(scenario)
    assert transport.max_concurrent_attempts == 2
    assert transport.start_overlaps == 0
    assert transport.violations == []
    for session in WhatsAppSession.objects.filter(pk__in=[s.pk for s in sessions]):
        # failed (kept, with its retry plan) or stopped (a retry was under way at shutdown)
        assert session.state in {SessionState.FAILED, SessionState.STOPPED}
        assert "no connection after" in session.last_error


def test_a_start_that_raises_is_a_failed_attempt_with_backoff(started):
    sup, transport, company = started
    transport.default = "raise"

    async def scenario():
        await sup.start()
        await wait_until(lambda: row(company).connect_failure_count == 2, what="two failures")
        await sup.shutdown("test over")

    run(scenario)
    assert "scripted start failure" in row(company).last_error
    assert not transport.live_of(company.pk)


def test_the_watchdog_restarts_a_silent_client_that_is_not_logged_in(started, settings, tmp_path):
    sup, transport, company = started
    fast_settings(settings, tmp_path, WATCHDOG_SILENCE=0.5)
    sup.watchdog_silence = 0.5

    async def scenario():
        await connected(sup, company)
        await _sleep(1.0)  # silent, but logged in: a quiet account, left alone
        assert len(transport.clients) == 1
        transport.clients[0].logged_in = False  # the socket died without an event
        await wait_until(
            lambda: len(transport.clients) == 2 and row(company).state == SessionState.CONNECTED,
            timeout=5,
            what="restarted by the watchdog",
        )
        await sup.shutdown("test over")

    run(scenario)
    assert "silent" in kinds(company)
    log = [e for e in transport.log if e[1] == company.pk]
    assert log.index(("stop", company.pk, 1)) < log.index(("new", company.pk, 2))


def test_an_inactive_company_loses_its_client_and_its_lease(started):
    sup, transport, company = started

    async def scenario():
        await connected(sup, company)
        await database_sync_to_async(
            lambda: type(company).objects.filter(pk=company.pk).update(is_active=False)
        )()
        sup.nudge_company(company.pk)
        await wait_until(
            lambda: SessionLease.objects.get(session__company=company).owner == "", what="released"
        )
        await sup.shutdown("test over")

    run(scenario)
    assert not transport.live_of(company.pk)
    assert row(company).state == SessionState.STOPPED


async def _sleep(seconds):
    import asyncio

    await asyncio.sleep(seconds)


def test_an_exception_while_handling_an_event_is_recorded_and_the_session_goes_on(started, caplog):
    """neonize drops handler exceptions silently; ours are caught, logged and
    recorded on the session row, and the next event is handled as usual."""
    sup, transport, company = started
    # A transport bug: a receipt whose ids are not a sequence makes the handler raise.
    bad_receipt = base.Receipt(message_ids=7, kind="read")
    event = message_event("3EB0AFTER1", "491701234567@s.whatsapp.net", "still here")

    async def scenario():
        await connected(sup, company)
        client = transport.clients[0]
        await client.emit(bad_receipt)
        await client.emit(base.InboundMessage(event=event))
        await wait_until(
            lambda: InboundMessage.objects.filter(company=company).exists(), what="next message"
        )
        await sup.shutdown("test over")

    run(scenario)
    error = ConnectionEvent.objects.get(session__company=company, kind="error")
    assert error.reason.startswith("handling Receipt failed: ")
    session = row(company)
    assert session.last_error == error.reason and session.last_error_at is not None
    assert "handling Receipt failed" in caplog.text  # with its traceback in the log
    assert session.messages_in == 1 and len(transport.clients) == 1


def test_keepalive_timeouts_are_recorded_and_left_to_whatsmeow(started):
    """whatsmeow retries keep-alives itself and forces a reconnect when they keep
    failing: we record each timeout and the recovery, and keep the same client."""
    sup, transport, company = started

    async def scenario():
        await connected(sup, company)
        client = transport.clients[0]
        await client.emit(base.KeepAliveTimeout(error_count=1))
        await client.emit(base.KeepAliveTimeout(error_count=2))
        await client.emit(base.KeepAliveRestored())
        await wait_until(
            lambda: "keepalive_restored" in kinds(company), what="keep-alive restored recorded"
        )
        await sup.shutdown("test over")

    run(scenario)
    timeouts = ConnectionEvent.objects.filter(session__company=company, kind="keepalive_timeout")
    assert sorted(timeouts.values_list("reason", flat=True)) == [
        "1 keep-alive(s) failed",
        "2 keep-alive(s) failed",
    ]
    assert len(transport.clients) == 1
    session = row(company)
    assert session.reconnect_count == 0 and session.connect_failure_count == 0


def test_a_stopping_worker_hands_every_session_over_at_once(settings, tmp_path):
    from .test_worker_leases import running_companies

    fast_settings(settings, tmp_path)
    sessions = running_companies(6)
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-bye", transport=transport)

    async def scenario():
        await sup.start()
        await wait_until(
            lambda: WhatsAppSession.objects.filter(state=SessionState.CONNECTED).count() == 6,
            what="6 connected",
        )
        await sup.shutdown("worker stopping")

    run(scenario)
    assert transport.violations == []
    assert all(not c.live for c in transport.clients)
    assert set(WhatsAppSession.objects.values_list("state", flat=True)) == {SessionState.STOPPED}
    assert set(SessionLease.objects.values_list("owner", flat=True)) == {""}
    for session in sessions:
        events = ConnectionEvent.objects.filter(session=session, worker_id="w-bye")
        assert len(transport.clients_of(session.company_id)) == 1  # its first client
        assert sorted(events.filter(kind="stopped").values_list("reason", flat=True)) == [
            "client 1 stopped: worker stopping",
            "worker stopping; another worker takes over",
        ]
        assert events.filter(kind="lease_lost", reason="worker stopping").count() == 1


def test_a_start_cut_short_by_shutdown_still_gets_its_end_recorded(started):
    """'client 1 connecting' is written, then the start waits for the start
    lock (another client is starting) and the worker stops meanwhile: the
    history must not show a client that never ended."""
    sup, transport, company = started

    async def scenario():
        await sup.start()
        async with sup.start_lock:  # as if another company's client were starting
            await wait_until(
                lambda: ConnectionEvent.objects.filter(
                    session__company=company, kind="starting", reason="client 1 connecting"
                ).exists(),
                what="client 1 announced",
            )
            await sup.shutdown("worker stopping")

    run(scenario)
    assert transport.clients == []  # it never existed
    reasons = list(
        ConnectionEvent.objects.filter(session__company=company, kind__in=["starting", "stopped"])
        .filter(reason__startswith="client ")
        .order_by("id")
        .values_list("kind", "reason")
    )
    assert reasons == [
        ("starting", "client 1 connecting"),
        ("stopped", "client 1 stopped: worker stopping"),
    ]
    assert row(company).state == SessionState.STOPPED
    assert SessionLease.objects.get(session__company=company).owner == ""
