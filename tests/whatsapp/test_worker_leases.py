"""Leases: who may hold a company's live client, decided by the database."""

import asyncio
import os
import threading
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.db import connection, connections
from django.utils import timezone

from companies.models import Company
from whatsapp.models import (
    ConnectionEvent,
    DesiredState,
    SessionLease,
    SessionState,
    WhatsAppSession,
    WorkerProcess,
)
from whatsapp.services import leases
from whatsapp.services import sessions as svc
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import ScriptedTransport, fast_settings, run, wait_until


def running_companies(count, prefix="co"):
    companies = Company.objects.bulk_create(
        Company(name=f"{prefix} {i}", slug=f"{prefix}-{i}") for i in range(count)
    )
    sessions = WhatsAppSession.objects.bulk_create(
        WhatsAppSession(company=c, desired_state=DesiredState.RUNNING) for c in companies
    )
    SessionLease.objects.bulk_create(SessionLease(session=s) for s in sessions)
    return sessions


def expire(session_id):
    SessionLease.objects.filter(session_id=session_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


@pytest.mark.django_db
class TestAcquire:
    def test_a_free_lease_goes_to_the_first_worker_only(self):
        (session,) = running_companies(1)
        held = leases.try_acquire("w1", session.pk)
        assert held == leases.Held("w1", session.pk, session.company_id, 1)
        assert leases.try_acquire("w2", session.pk) is None
        lease = SessionLease.objects.get(session=session)
        assert lease.owner == "w1" and lease.is_held_by("w1")
        assert ConnectionEvent.objects.get(kind="lease_acquired").worker_id == "w1"

    def test_an_expired_lease_is_taken_over_with_a_new_epoch(self):
        (session,) = running_companies(1)
        first = leases.try_acquire("w1", session.pk)
        expire(session.pk)
        second = leases.try_acquire("w2", session.pk)
        assert second.epoch == first.epoch + 1
        assert not leases.holds_lease(first)
        assert leases.holds_lease(second)

    def test_acquire_respects_the_limit_and_only_takes_sessions_that_need_an_owner(self):
        wanted = running_companies(5)
        idle = running_companies(2, prefix="idle")
        WhatsAppSession.objects.filter(pk__in=[s.pk for s in idle]).update(
            desired_state=DesiredState.STOPPED
        )
        got = leases.acquire_leases("w1", 3)
        assert len(got) == 3
        assert {h.session_id for h in got} <= {s.pk for s in wanted}
        rest = leases.acquire_leases("w2", 10)
        assert len(rest) == 2
        assert leases.acquire_leases("w3", 10) == []

    def test_a_dead_workers_live_looking_session_is_picked_up_even_if_stopped(self):
        (session,) = running_companies(1)
        WhatsAppSession.objects.filter(pk=session.pk).update(
            desired_state=DesiredState.STOPPED, state=SessionState.CONNECTED
        )
        assert [h.session_id for h in leases.acquire_leases("w1", 5)] == [session.pk]

    def test_an_inactive_company_is_not_acquired(self):
        (session,) = running_companies(1)
        Company.objects.filter(pk=session.company_id).update(is_active=False)
        assert leases.acquire_leases("w1", 5) == []

    def test_a_session_without_a_lease_row_gets_one(self):
        company = Company.objects.create(name="No lease", slug="no-lease")
        session = WhatsAppSession.objects.create(
            company=company, desired_state=DesiredState.RUNNING
        )
        assert [h.session_id for h in leases.acquire_leases("w1", 5)] == [session.pk]


@pytest.mark.django_db
class TestRenewAndRelease:
    def test_renew_extends_only_unexpired_leases(self):
        a, b = running_companies(2)
        leases.try_acquire("w1", a.pk)
        leases.try_acquire("w1", b.pk)
        before = SessionLease.objects.get(session=a).expires_at
        expire(b.pk)
        time.sleep(0.01)
        held = leases.renew_leases("w1")
        assert set(held) == {a.pk}  # b expired: lost, must be re-acquired (new epoch)
        assert SessionLease.objects.get(session=a).expires_at > before

    def test_release_frees_the_lease_at_once_and_records_it(self):
        (session,) = running_companies(1)
        leases.try_acquire("w1", session.pk)
        assert not leases.release_lease("w2", session.pk)  # not theirs
        assert leases.release_lease("w1", session.pk, "stopping")
        assert SessionLease.objects.get(session=session).owner == ""
        assert leases.try_acquire("w2", session.pk).epoch == 2
        lost = ConnectionEvent.objects.get(kind="lease_lost")
        assert (lost.worker_id, lost.reason) == ("w1", "stopping")

    def test_release_all_keeps_the_leases_of_clients_that_did_not_stop(self):
        a, b = running_companies(2)
        leases.try_acquire("w1", a.pk)
        leases.try_acquire("w1", b.pk)
        assert leases.release_all_leases("w1", "shutdown", keep=[b.pk]) == 1
        assert SessionLease.objects.get(session=b).owner == "w1"

    def test_release_all_frees_every_lease_at_once_with_one_event_each(self):
        sessions = running_companies(5)
        for session in sessions:
            leases.try_acquire("w1", session.pk)
        leases.try_acquire("w2", sessions[0].pk)  # held by w1: refused
        assert leases.release_all_leases("w1", "shutdown") == 5
        assert not SessionLease.objects.filter(owner="w1").exists()
        assert leases.release_all_leases("w1", "shutdown") == 0
        events = ConnectionEvent.objects.filter(kind="lease_lost", worker_id="w1")
        assert sorted(events.values_list("session_id", flat=True)) == sorted(s.pk for s in sessions)
        assert {e.reason for e in events} == {"shutdown"}
        assert all(leases.try_acquire("w2", s.pk).epoch == 2 for s in sessions)


@pytest.mark.django_db
class TestFencing:
    def test_a_worker_that_lost_its_lease_cannot_write_the_session(self):
        (session,) = running_companies(1)
        old = leases.try_acquire("w1", session.pk)
        expire(session.pk)
        new = leases.try_acquire("w2", session.pk)
        assert svc.mark_connected(new, jid="491700000001:1@s.whatsapp.net")
        assert not svc.mark_connect_failed(old, "stale failure")
        assert not svc.mark_stopped(old)
        row = WhatsAppSession.objects.get(pk=session.pk)
        assert row.state == SessionState.CONNECTED and row.connect_failure_count == 0
        assert not ConnectionEvent.objects.filter(worker_id="w1", kind="connect_failed").exists()


@pytest.mark.django_db
class TestWorkers:
    def test_fair_share_divides_the_wanted_sessions_by_the_live_workers(self):
        running_companies(50)
        for wid in ("a", "b", "c"):
            leases.register_worker(wid)
        assert leases.fair_share() == 17
        WorkerProcess.objects.filter(worker_id="c").update(
            heartbeat_at=timezone.now() - timedelta(minutes=5)
        )
        assert leases.fair_share() == 25
        leases.mark_worker_stopped("b")
        assert leases.fair_share() == 50

    def test_a_worker_id_is_unique_per_process_start_and_fits_a_channel_name(self):
        first, second = leases.new_worker_id(), leases.new_worker_id()
        assert first != second
        assert all(c.isalnum() or c in "-._" for c in first) and len(first) < 64


@pytest.mark.django_db(transaction=True)
def test_workers_racing_for_the_same_leases_never_share_one():
    """Eight threads (each its own DB connection) grab leases at the same moment."""
    sessions = running_companies(40)
    barrier = threading.Barrier(8)
    won = {}
    errors = []

    def grab(name):
        try:
            barrier.wait()
            won[name] = [h.session_id for h in leases.acquire_leases(name, 40)]
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    claimed = [sid for ids in won.values() for sid in ids]
    assert sorted(claimed) == sorted(s.pk for s in sessions)  # each exactly once
    assert connection.vendor in {"sqlite", "postgresql"}
    owners = dict(SessionLease.objects.values_list("session_id", "owner"))
    for name, ids in won.items():
        assert all(owners[sid] == name for sid in ids)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_worker_stops_the_client_of_a_lease_taken_over_at_once(settings, tmp_path):
    fast_settings(settings, tmp_path, RECONCILE_INTERVAL=0.3)
    (session,) = running_companies(1)
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-old", transport=transport)

    async def scenario():
        await sup.start()
        await wait_until(
            lambda: WhatsAppSession.objects.get(pk=session.pk).state == "connected",
            what="connected",
        )
        # Another worker takes the lease (as if ours had expired while we stalled).
        await wait_until(lambda: _steal(session.pk), what="lease stolen")
        await wait_until(
            lambda: not transport.live_of(session.company_id), timeout=3, what="our client stopped"
        )
        assert session.company_id not in sup.sessions
        await sup.shutdown("test over")

    run(scenario)
    stolen = SessionLease.objects.get(session=session)
    assert stolen.owner == "w-new"  # our shutdown did not release someone else's lease
    events = ConnectionEvent.objects.filter(worker_id="w-old").values_list("kind", flat=True)
    assert "lease_lost" in list(events)


def _steal(session_id):
    expire(session_id)
    return leases.try_acquire("w-new", session_id) is not None


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_worker_that_cannot_renew_stops_its_clients_before_the_lease_expires(
    settings, tmp_path, monkeypatch
):
    """Database unreachable for renewals: the worker fences itself in time."""
    fast_settings(settings, tmp_path, LEASE_TTL=3.0, RECONCILE_INTERVAL=0.3)
    (session,) = running_companies(1)
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-cut", transport=transport)
    stopped_at = {}

    async def scenario():
        await sup.start()
        await wait_until(lambda: transport.live_of(session.company_id), what="client live")

        def unreachable(worker_id):
            from django.db import OperationalError

            raise OperationalError("connection refused (simulated outage)")

        monkeypatch.setattr(leases, "renew_leases", unreachable)
        cut = time.monotonic()
        await asyncio.sleep(0.3)  # a renewal already in flight lands
        expires = await database_sync_to_async(
            lambda: SessionLease.objects.get(session=session).expires_at
        )()
        await wait_until(
            lambda: not transport.live_of(session.company_id), timeout=4, what="client fenced off"
        )
        stopped_at["after"] = time.monotonic() - cut
        stopped_at["before_expiry"] = (expires - timezone.now()).total_seconds()
        await sup.shutdown("test over")

    run(scenario)
    assert stopped_at["before_expiry"] > 0, stopped_at  # stopped while the lease still held
    assert stopped_at["after"] < 3.0


@pytest.mark.django_db
class TestWorkerIdentity:
    def test_a_second_live_process_cannot_run_under_the_same_worker_id(self):
        WorkerProcess.objects.create(
            worker_id="w-fixed",
            channel_name="c",
            hostname="other-host",
            pid=4242,
            heartbeat_at=timezone.now(),
        )
        with pytest.raises(leases.WorkerIdInUse, match="in use by pid 4242 on other-host"):
            leases.claim_worker_id("w-fixed", wait=0)
        assert WorkerProcess.objects.get(worker_id="w-fixed").pid == 4242  # untouched

    def test_a_dead_or_stopped_predecessor_leaves_the_worker_id_free(self):
        stale = timezone.now() - timedelta(minutes=5)
        WorkerProcess.objects.create(
            worker_id="w-dead", channel_name="c", hostname="h", pid=1, heartbeat_at=stale
        )
        WorkerProcess.objects.create(
            worker_id="w-stopped",
            channel_name="c",
            hostname="h",
            pid=2,
            heartbeat_at=timezone.now(),
            stopped_at=timezone.now(),
        )
        for worker_id in ("w-dead", "w-stopped"):
            worker = leases.claim_worker_id(worker_id, wait=0)
            assert worker.pid == os.getpid() and worker.stopped_at is None
