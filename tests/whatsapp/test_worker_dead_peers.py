"""A worker whose process died on this machine: its leases are freed at once.

Its clients lived in its process, so they died with it; waiting for its leases
to expire (the TTL) would only keep its companies offline. The dead processes
here are real child processes, killed with SIGKILL.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from whatsapp.models import (
    ConnectionEvent,
    SessionLease,
    SessionState,
    WhatsAppSession,
    WorkerProcess,
)
from whatsapp.services import leases, local_processes
from whatsapp.services.local_processes import ProcessIdentity
from whatsapp.worker.supervisor import SessionSupervisor

from .test_worker_leases import running_companies
from .worker_doubles import ScriptedTransport, fast_settings, run, wait_until

pytestmark = pytest.mark.skipif(
    not local_processes.host_key(), reason="needs Linux /proc (boot id, pid namespace)"
)


@pytest.fixture
def child():
    """A real process to kill (not reaped until the test says so)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def register_as(worker_id, identity, owned_sessions=()):
    """`worker_id` registered by the process `identity`, holding leases."""
    WorkerProcess.objects.create(
        worker_id=worker_id,
        channel_name=f"whatsapp.worker.{worker_id}",
        hostname="this-host",
        pid=identity.pid,
        host_key=identity.host_key,
        process_start=identity.start,
    )
    return [leases.try_acquire(worker_id, s.pk) for s in owned_sessions]


def wait_for_zombie(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while local_processes._stat(pid)[0] != "Z":
        assert time.monotonic() < deadline, "never became a zombie"
        time.sleep(0.01)


class TestIsGone:
    @pytest.mark.e2e
    def test_a_running_process_is_not_gone_and_neither_is_this_one(self, child):
        assert not local_processes.is_gone(local_processes.identity_of(child.pid))
        assert not local_processes.is_gone(local_processes.this_process())

    @pytest.mark.e2e
    def test_a_killed_process_is_gone_before_and_after_its_parent_reaps_it(self, child):
        identity = local_processes.identity_of(child.pid)
        child.send_signal(signal.SIGKILL)
        wait_for_zombie(child.pid)  # killed, not reaped: its sockets are already closed
        assert local_processes.is_gone(identity)
        child.wait(timeout=10)
        assert local_processes.is_gone(identity)

    def test_a_reused_pid_is_told_apart_by_its_start_time(self):
        me = local_processes.this_process()
        earlier = ProcessIdentity(me.host_key, me.pid, me.start - 1)
        assert local_processes.is_gone(earlier)

    @pytest.mark.e2e
    def test_a_process_of_another_machine_or_container_is_never_judged(self, child):
        identity = local_processes.identity_of(child.pid)
        child.kill()
        child.wait(timeout=10)
        elsewhere = ProcessIdentity("other-boot-id/4026531836", identity.pid, identity.start)
        assert not local_processes.is_gone(elsewhere)
        assert not local_processes.is_gone(ProcessIdentity("", identity.pid, identity.start))

    def test_the_identity_reads_this_machines_boot_id_and_start_time(self):
        me = local_processes.this_process()
        with open("/proc/sys/kernel/random/boot_id") as fh:
            assert me.host_key.startswith(fh.read().strip() + "/")
        assert me.pid == os.getpid() and me.start > 0


@pytest.mark.django_db
class TestFreeDeadWorker:
    @pytest.mark.e2e
    def test_it_releases_every_lease_of_a_dead_worker_and_says_why(self, child):
        sessions = running_companies(3)
        identity = local_processes.identity_of(child.pid)
        register_as("dead", identity, sessions)
        child.kill()
        child.wait(timeout=10)

        assert leases.free_dead_worker("dead", identity, found_by="w-live") == 3

        assert not SessionLease.objects.exclude(owner="").exists()
        worker = WorkerProcess.objects.get(worker_id="dead")
        assert worker.stopped_at is not None
        assert worker.stop_reason == (
            f"worker dead died (process {child.pid} gone, seen by w-live)"
        )
        lost = ConnectionEvent.objects.filter(kind="lease_lost", worker_id="dead")
        assert sorted(lost.values_list("session_id", flat=True)) == [s.pk for s in sessions]
        assert {e.reason for e in lost} == {worker.stop_reason}
        # Free now: another worker takes them without waiting for the TTL.
        assert len(leases.acquire_leases("w-live", 10)) == 3

    @pytest.mark.e2e
    def test_it_leaves_a_live_worker_alone(self, child):
        sessions = running_companies(2)
        identity = local_processes.identity_of(child.pid)
        register_as("alive", identity, sessions)

        assert leases.free_dead_worker("alive", identity, found_by="w-live") == 0

        assert SessionLease.objects.filter(owner="alive").count() == 2
        assert WorkerProcess.objects.get(worker_id="alive").stopped_at is None

    @pytest.mark.e2e
    def test_it_leaves_a_worker_id_registered_again_by_a_new_process_alone(self, child):
        (session,) = running_companies(1)
        old = local_processes.identity_of(child.pid)
        register_as("fixed-id", old, [session])
        child.kill()
        child.wait(timeout=10)
        # Restarted under the same --worker-id before anyone noticed.
        me = local_processes.this_process()
        WorkerProcess.objects.filter(worker_id="fixed-id").update(
            pid=me.pid, process_start=me.start
        )

        assert leases.free_dead_worker("fixed-id", old, found_by="w-live") == 0

        assert SessionLease.objects.get(session=session).owner == "fixed-id"
        assert WorkerProcess.objects.get(worker_id="fixed-id").stopped_at is None

    @pytest.mark.e2e
    def test_local_peers_lists_the_other_live_workers_of_this_machine_only(self, child):
        here = local_processes.identity_of(child.pid)
        register_as("peer", here)
        register_as("remote", ProcessIdentity("other-boot/1", 4242, 7))
        register_as("gone", here)
        leases.mark_worker_stopped("gone")
        leases.register_worker("me")

        assert leases.local_peers("me") == {"peer": here}

    @pytest.mark.e2e
    def test_a_successor_under_a_fixed_id_does_not_wait_for_a_dead_predecessor(self, child):
        (session,) = running_companies(1)
        identity = local_processes.identity_of(child.pid)
        register_as("fixed", identity, [session])
        child.kill()
        child.wait(timeout=10)

        began = time.monotonic()
        worker = leases.claim_worker_id("fixed", wait=30)

        assert time.monotonic() - began < 5  # not the 30 s wait for its heartbeat to lapse
        assert worker.pid == os.getpid()
        assert SessionLease.objects.get(session=session).owner == ""  # taken with a new epoch


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_worker_takes_a_dead_neighbours_sessions_long_before_their_leases_expire(
    child, settings, tmp_path
):
    fast_settings(settings, tmp_path, LEASE_TTL=60.0, PEER_CHECK_INTERVAL=0.1)
    sessions = running_companies(5, prefix="dead-peer")
    identity = local_processes.identity_of(child.pid)
    register_as("neighbour", identity, sessions)
    expires = dict(SessionLease.objects.values_list("session_id", "expires_at"))
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-live", transport=transport)
    company_ids = {s.company_id for s in sessions}

    def all_connected():
        states = WhatsAppSession.objects.filter(pk__in=expires).values_list("state", flat=True)
        return set(states) == {SessionState.CONNECTED}

    async def scenario():
        await sup.start()
        await wait_until(lambda: sup.rounds >= 2, what="a round that lists the neighbour")
        assert not sup.sessions  # the neighbour's leases are live: nothing taken
        child.kill()
        await wait_until(
            lambda: set(sup.sessions) == company_ids and all_connected(),
            timeout=15,
            what="the dead neighbour's sessions connected here",
        )
        await sup.shutdown("test over")

    run(scenario)
    acquired = ConnectionEvent.objects.filter(kind="lease_acquired", worker_id="w-live")
    assert sorted(acquired.values_list("session_id", flat=True)) == sorted(expires)
    for event in acquired:
        # Taken about a second after the kill, the dead worker's lease still had ~a minute.
        assert expires[event.session_id] - event.created_at > timedelta(seconds=40)
    assert transport.violations == []
    assert WorkerProcess.objects.get(worker_id="neighbour").stop_reason.startswith(
        "worker neighbour died"
    )
    assert timezone.now() < min(expires.values())
