"""Leases: who may hold a company's live client, decided by the database."""

import asyncio
import os
import threading
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
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

    def test_a_batch_is_taken_in_one_transaction_and_leases_held_by_others_are_left(self):
        sessions = running_companies(6)
        leases.try_acquire("w2", sessions[1].pk)
        leases.try_acquire("w2", sessions[4].pk)
        ids = [s.pk for s in reversed(sessions)]
        won = leases.acquire_free("w1", ids)
        assert [h.session_id for h in won] == [
            i for i in ids if i not in {sessions[1].pk, sessions[4].pk}
        ]
        assert {h.epoch for h in won} == {1} and {h.owner for h in won} == {"w1"}
        assert {h.company_id for h in won} == {s.company_id for s in sessions} - {
            sessions[1].company_id,
            sessions[4].company_id,
        }
        events = ConnectionEvent.objects.filter(kind="lease_acquired", worker_id="w1")
        assert sorted(events.values_list("session_id", flat=True)) == sorted(
            h.session_id for h in won
        )
        assert SessionLease.objects.filter(owner="w2").count() == 2
        assert leases.acquire_free("w1", ids) == []  # nothing free any more

    def test_taking_many_leases_costs_the_same_statements_as_taking_a_few(self):
        few, many = running_companies(3, "few"), running_companies(60, "many")
        with CaptureQueriesContext(connection) as small:
            assert len(leases.acquire_free("w1", [s.pk for s in few])) == 3
        with CaptureQueriesContext(connection) as large:
            assert len(leases.acquire_free("w1", [s.pk for s in many])) == 60
        assert len(large.captured_queries) == len(small.captured_queries)

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
class TestHandOver:
    """A stopping worker gives every session up in one transaction."""

    def test_live_sessions_stop_parked_ones_keep_their_state_and_leases_are_released(self):
        live, parked, stolen, stuck = running_companies(4)
        helds = [leases.try_acquire("w1", s.pk) for s in (live, parked, stolen, stuck)]
        assert svc.mark_connected(helds[0], jid="491700000001:1@s.whatsapp.net")
        assert svc.mark_replaced(helds[1])
        assert svc.mark_connected(helds[3], jid="491700000004:1@s.whatsapp.net")
        expire(stolen.pk)
        thief = leases.try_acquire("w2", stolen.pk)
        assert svc.mark_connected(thief, jid="491700000003:1@s.whatsapp.net")

        released, changed = svc.hand_over(
            "w1",
            helds,
            "worker stopping",
            clients={live.pk: 1, parked.pk: 2, stuck.pk: 3, stolen.pk: 4},
            keep=[stuck.pk],
        )

        assert released == 2
        state = dict(WhatsAppSession.objects.values_list("pk", "state"))
        assert state[live.pk] == SessionState.STOPPED
        assert state[parked.pk] == SessionState.REPLACED  # its retry plan survives
        assert state[stolen.pk] == SessionState.CONNECTED  # the new owner's, untouched
        assert state[stuck.pk] == SessionState.CONNECTED  # its client did not stop
        owner = dict(SessionLease.objects.values_list("session_id", "owner"))
        assert owner == {live.pk: "", parked.pk: "", stolen.pk: "w2", stuck.pk: "w1"}
        assert sorted(changed) == sorted(
            [
                (live.company_id, SessionState.STOPPED),
                (parked.company_id, SessionState.REPLACED),
                (stolen.company_id, SessionState.CONNECTED),
            ]
        )
        stopped = ConnectionEvent.objects.filter(kind="stopped", worker_id="w1")
        assert sorted(stopped.values_list("session_id", "reason")) == sorted(
            [
                (live.pk, "client 1 stopped: worker stopping"),
                (live.pk, "worker stopping; another worker takes over"),
                (parked.pk, "client 2 stopped: worker stopping"),
                # our client of the stolen session did stop: recorded, though
                # the session row (now the new owner's) is left alone
                (stolen.pk, "client 4 stopped: worker stopping"),
            ]
        )
        lost = ConnectionEvent.objects.filter(kind="lease_lost", worker_id="w1")
        assert sorted(lost.values_list("session_id", flat=True)) == sorted([live.pk, parked.pk])
        assert not ConnectionEvent.objects.filter(
            worker_id="w1", session_id=stolen.pk, reason__contains="another worker takes over"
        ).exists()
        row = WhatsAppSession.objects.get(pk=live.pk)
        assert row.connected_since is None and row.qr_code == ""

    def test_handing_over_many_sessions_costs_the_same_statements_as_a_few(self):
        def hand_over(count, prefix):
            sessions = running_companies(count, prefix)
            helds = [leases.try_acquire(prefix, s.pk) for s in sessions]
            for held in helds:
                svc.mark_connected(held, jid=f"4917{held.session_id:08d}:1@s.whatsapp.net")
            with CaptureQueriesContext(connection) as queries:
                released, changed = svc.hand_over(
                    prefix, helds, "stopping", clients={h.session_id: 1 for h in helds}
                )
            assert released == len(changed) == count
            return len(queries.captured_queries)

        assert hand_over(60, "many") == hand_over(3, "few")


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


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_dead_workers_lease_is_taken_when_it_runs_out_not_a_round_later(settings, tmp_path):
    """Reconcile rounds 10 s apart; the dead worker's lease runs out 1.5 s in."""
    fast_settings(settings, tmp_path, LEASE_TTL=30.0, RECONCILE_INTERVAL=10.0)
    (session,) = running_companies(1)
    assert leases.try_acquire("w-dead", session.pk)
    SessionLease.objects.filter(session=session).update(
        expires_at=timezone.now() + timedelta(seconds=1.5)
    )
    sup = SessionSupervisor(worker_id="w-heir", transport=ScriptedTransport())
    took = {}

    async def scenario():
        began = time.monotonic()
        await sup.start()  # its first round finds the lease held
        await wait_until(
            lambda: SessionLease.objects.filter(session=session, owner="w-heir").exists(),
            timeout=5,
            what="the lease taken over",
        )
        took["after"] = time.monotonic() - began
        await sup.shutdown("test over")

    run(scenario)
    assert 1.4 < took["after"] < 4.0, took  # at the expiry, not at the 10 s round
    assert leases.seconds_to_next_expiry("w-other") is None  # released, nobody else's


def test_the_next_expiry_counts_only_other_workers_leases_of_wanted_sessions(db):
    mine, theirs, idle = running_companies(3)
    for session, owner in ((mine, "w1"), (theirs, "w2"), (idle, "w2")):
        leases.try_acquire(owner, session.pk)
    WhatsAppSession.objects.filter(pk=idle.pk).update(desired_state=DesiredState.STOPPED)
    SessionLease.objects.filter(session=idle).update(
        expires_at=timezone.now() + timedelta(seconds=2)
    )
    ttl = settings_ttl()
    assert ttl - 2 < leases.seconds_to_next_expiry("w1") <= ttl  # theirs, not idle's
    assert ttl - 2 < leases.seconds_to_next_expiry("w2") <= ttl  # mine
    expire(theirs.pk)
    expire(mine.pk)
    assert leases.seconds_to_next_expiry("w1") is None  # expired leases are free already


def settings_ttl():
    from django.conf import settings

    return settings.WHATSAPP["LEASE_TTL"]


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
