"""The session worker with the REAL neonize library, offline.

There is no route to WhatsApp from the test machines: neonize's dial fails
on DNS within milliseconds. That is a real failure path: the worker must
record it, schedule a retry with backoff, count it, and stopping must leave
no thread behind.
"""

import asyncio
import threading

import pytest
from neonize.proto import Neonize_pb2 as pb

from whatsapp.models import ConnectionEvent, SessionLease, SessionState, WhatsAppSession
from whatsapp.services.control import restart_session, start_session, stop_session
from whatsapp.transport import base
from whatsapp.transport.build import jid_proto, message_event
from whatsapp.transport.neonize_client import NeonizeClient, NeonizeTransport, translate
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import company_fixture, fast_settings, run, wait_until  # noqa: F401

# "__all__": the control services' channel hints reach the SQLite channel layer's own DB.
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def neonize_threads():
    return [t for t in threading.enumerate() if t.name.startswith("neonize")]


def session_of(company):
    return WhatsAppSession.objects.get(company=company)


def test_a_started_session_fails_to_dial_records_it_and_retries_with_backoff(
    company, settings, tmp_path
):
    # A slow DNS answer on a loaded machine must not turn into a connect timeout.
    conf = fast_settings(settings, tmp_path, CONNECT_TIMEOUT=30.0)
    start_session(company.pk)
    transport = NeonizeTransport()
    sup = SessionSupervisor(worker_id="offline-w1", transport=transport)

    async def scenario():
        await sup.start()
        first = await wait_until(
            lambda: session_of(company).connect_failure_count >= 1, what="first failure"
        )
        assert first
        s = await _get(company)
        assert s.state == SessionState.FAILED
        assert "failed to dial" in s.last_error and "web.whatsapp.com" in s.last_error, s.last_error
        assert s.consecutive_failures == 1
        # The retry is scheduled, with backoff: within [floor, base * 2**0].
        delay = (s.next_connect_at - s.last_error_at).total_seconds()
        assert 0.19 <= delay <= conf["BACKOFF_BASE"] * 1 + 0.05
        # ... and it happens: a second real dial, also failing, counted.
        await wait_until(
            lambda: session_of(company).connect_failure_count >= 2, what="second failure"
        )
        s2 = await _get(company)
        assert s2.consecutive_failures == 2
        assert s2.last_error_at >= s.next_connect_at
        assert s2.reconnect_count == 0 and s2.conflict_count == 0
        ms = sup.sessions[company.pk]
        assert ms.clients_created >= 2
        # Stop: the client goes, the lease is released, the row says stopped.
        await _call(stop_session, company.pk)
        sup.nudge_company(company.pk)
        await wait_until(lambda: session_of(company).state == SessionState.STOPPED, what="stopped")
        await wait_until(
            lambda: SessionLease.objects.get(session__company=company).owner == "",
            what="lease released",
        )
        assert company.pk not in sup.sessions
        await sup.shutdown("test over")

    run(scenario)
    assert neonize_threads() == []
    events = list(
        ConnectionEvent.objects.filter(session__company=company, worker_id="offline-w1")
        .order_by("id")
        .values_list("kind", flat=True)
    )
    assert events[:4] == ["lease_acquired", "starting", "stopped", "connect_failed"]
    assert events[-2:] == ["stopped", "lease_lost"]  # the session's stop, then the release


def test_stopping_a_real_client_leaves_no_thread_behind(company, settings, tmp_path):
    fast_settings(settings, tmp_path)
    before = set(threading.enumerate())
    transport = NeonizeTransport()
    seen = []

    async def sink(event):
        seen.append(event)

    async def scenario():
        client = transport.new_client(base.ClientSpec(company_id=company.pk), sink)
        await client.start()
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert await client.is_logged_in() is False
        await client.stop()
        await client.stop()  # idempotent
        with pytest.raises(base.TransportError):
            await client.send_text("491701234567@s.whatsapp.net", "hi")
        await transport.aclose()

    run(scenario)
    assert len(seen) == 1 and isinstance(seen[0], base.Closed)
    assert "failed to dial" in seen[0].error
    assert (tmp_path / "wa-store" / f"company-{company.pk}.sqlite3").exists()
    # Every thread neonize ran in (its calls go through the transport's
    # executor, named "neonize_N") has ended.
    assert neonize_threads() == []
    assert not [t for t in threading.enumerate() if t not in before and "neonize" in t.name]


def test_a_restart_stops_the_old_real_client_before_creating_the_next(company, settings, tmp_path):
    fast_settings(settings, tmp_path, BACKOFF_BASE=5.0, BACKOFF_CAP=5.0)
    start_session(company.pk)
    sup = SessionSupervisor(worker_id="offline-w2", transport=NeonizeTransport())

    async def scenario():
        await sup.start()
        await wait_until(
            lambda: session_of(company).connect_failure_count == 1, what="first failure"
        )
        await _call(restart_session, company.pk)
        sup.nudge_company(company.pk)
        await wait_until(
            lambda: session_of(company).connect_failure_count == 2, what="attempt after restart"
        )
        await sup.shutdown("test over")

    run(scenario)
    kinds = list(
        ConnectionEvent.objects.filter(session__company=company, worker_id="offline-w2")
        .filter(kind__in=["starting", "stopped"], reason__startswith="client ")
        .order_by("id")
        .values_list("kind", flat=True)
    )
    # Strictly alternating: a client is always stopped before the next starts.
    assert kinds[:4] == ["starting", "stopped", "starting", "stopped"]
    assert neonize_threads() == []


def test_neonize_events_translate_to_transport_events():
    assert translate(pb.Connected(status=True)) == base.Connected()
    assert translate(pb.Disconnected(status=True)) == base.Disconnected()
    assert translate(pb.StreamReplaced()) == base.StreamReplaced()
    logged_out = translate(
        pb.LoggedOut(OnConnect=True, Reason=pb.ConnectFailureReason.Value("LOGGED_OUT"))
    )
    assert logged_out == base.LoggedOut(reason="LOGGED_OUT", on_connect=True)
    outdated = translate(
        pb.ConnectFailure(
            Reason=pb.ConnectFailureReason.Value("CLIENT_OUTDATED"),
            Message="update",
            Raw=pb.Node(Tag="failure"),
        )
    )
    assert outdated.permanent and outdated.reason == "CLIENT_OUTDATED"
    unavailable = translate(
        pb.ConnectFailure(
            Reason=pb.ConnectFailureReason.Value("SERVICE_UNAVAILABLE"),
            Message="",
            Raw=pb.Node(Tag="failure"),
        )
    )
    assert not unavailable.permanent
    ban = translate(
        pb.TemporaryBan(Code=pb.TemporaryBan.TempBanReason.Value("BLOCKED_BY_USERS"), Expire=3600)
    )
    assert ban == base.TemporaryBan(code="BLOCKED_BY_USERS", expires_in_seconds=3600)
    paired = translate(
        pb.PairStatus(
            ID=jid_proto("491701234567:3@s.whatsapp.net"),
            BusinessName="Salon",
            Platform="android",
            Status=pb.PairStatus.PStatus.Value("SUCCESS"),
        )
    )
    assert paired == base.PairSuccess(jid="491701234567:3@s.whatsapp.net", push_name="Salon")
    receipt = translate(
        pb.Receipt(
            MessageSource=message_event("X", "491701234567@s.whatsapp.net").Info.MessageSource,
            MessageIDs=["A", "B"],
            Timestamp=1,
            Type=pb.Receipt.ReceiptType.Value("READ"),
        )
    )
    assert receipt == base.Receipt(
        message_ids=("A", "B"), kind="read", chat="491701234567@s.whatsapp.net"
    )
    message = message_event("M1", "491701234567@s.whatsapp.net", "hi")
    assert translate(message) == base.InboundMessage(event=message)
    assert translate(pb.KeepAliveTimeout(ErrorCount=2, LastSuccess=0)) == base.KeepAliveTimeout(
        error_count=2
    )


def test_a_failing_event_handler_is_caught_and_recorded_not_lost(company, caplog):
    async def broken_sink(event):
        raise RuntimeError("handler blew up")

    client = NeonizeClient(base.ClientSpec(company_id=company.pk, store="unused"), broken_sink)

    async def scenario():
        # Exactly what neonize calls: handler(client, event) on our loop.
        await client._handle(None, pb.Disconnected(status=True))
        await client._handle_qr(None, b"2@qr")

    run(scenario)
    assert client.handler_errors == 2
    assert "handler blew up" in client.last_handler_error
    assert "handler for Disconnected failed" in caplog.text


async def _get(company):
    from channels.db import database_sync_to_async

    return await database_sync_to_async(session_of)(company)


async def _call(fn, *args):
    from channels.db import database_sync_to_async

    return await database_sync_to_async(fn)(*args)


def test_concurrent_real_starts_and_stops_never_overlap_in_neonizes_go_map(settings, tmp_path):
    """neonize's Go client map has no lock (two writers crash the process): clients
    started at once each hold the process's go_lock until their connect is past
    the writes (whatsmeow logs its dial), so their holds never overlap; stops run
    one at a time too."""
    fast_settings(settings, tmp_path)
    transport = NeonizeTransport()
    seen = []

    async def sink(event):
        seen.append(event)

    async def scenario():
        clients = [
            transport.new_client(base.ClientSpec(company_id=900 + i), sink) for i in range(6)
        ]
        await asyncio.gather(*(c.start() for c in clients))
        for _ in range(300):
            if len(seen) == len(clients):
                break
            await asyncio.sleep(0.01)
        await asyncio.gather(*(c.stop() for c in clients))
        await transport.aclose()
        return clients

    clients = run(scenario)
    holds = sorted((c.settle_began, c.settled_at) for c in clients)
    assert all(began is not None and ended >= began for began, ended in holds)
    for (_, first_end), (second_begin, _) in zip(holds, holds[1:], strict=False):
        assert second_begin >= first_end, holds
    assert len(seen) == 6 and all(isinstance(e, base.Closed) for e in seen)
    # Each hold ended on whatsmeow's own dial log line (Go is past its map writes
    # then), not on a timer: the deterministic signal.
    assert [c.settled_by for c in clients] == ["dial"] * 6
    assert neonize_threads() == []


def test_a_go_call_that_reads_the_client_map_waits_while_a_start_or_stop_holds_the_go_lock(
    settings, tmp_path
):
    """Every per-client Go function of neonize reads the unlocked client map first
    thing (IsLoggedIn, GetMe, PairPhone, Logout; found in the 0.5.2 binary, see
    docs/worker.md); Go kills the process on a read during a write, so these wait
    for go_lock() like starts and stops."""
    from whatsapp.transport.neonize_client import go_lock

    fast_settings(settings, tmp_path)
    transport = NeonizeTransport()
    seen = []

    async def sink(event):
        seen.append(event)

    async def scenario():
        client = transport.new_client(base.ClientSpec(company_id=950), sink)
        await client.start()
        await wait_until(lambda: bool(seen), what="the offline dial to fail")
        lock = go_lock()
        await lock.acquire()
        try:
            asked = asyncio.ensure_future(client.is_logged_in())
            await asyncio.sleep(0.2)  # a Go call returns in milliseconds
            waited = not asked.done()
        finally:
            lock.release()
        logged_in = await asked
        await client.stop()
        await transport.aclose()
        return waited, logged_in

    waited, logged_in = run(scenario)
    assert waited
    assert logged_in is False
