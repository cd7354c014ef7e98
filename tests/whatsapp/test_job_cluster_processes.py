"""`manage.py runcluster` leaves no working orphan (both passes, real processes).

Seen: SIGKILL of django-q2's main `qcluster` process left its sentinel,
workers, monitor and pusher running; a process manager restarting the main
pid then had two clusters. runcluster's children die with their parent.
"""

import signal

import psutil
import pytest
from django.conf import settings
from django_q.models import Schedule

from tests.e2e_processes import AppProcesses, wait_for
from tests.whatsapp.job_queue import purge
from whatsapp.management.commands.setup_defaults import SCHEDULES
from whatsapp.models import ProcessingJob, WhatsAppSession
from whatsapp.services.inbound import record_inbound_message
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]


@pytest.fixture(autouse=True)
def empty_queue():
    purge()
    yield
    purge()


def tree(pid):
    """The live processes under `pid` (zombies are dead: they only wait to be reaped)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if _alive(p)]


def _alive(proc):
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def started_tree(app, cluster, company):
    """Wait until both clusters run (a job was processed, the maintenance
    cluster is up) and return every process of the tree."""
    record_inbound_message(
        company.pk,
        normalize_message(message_event("3EB0TREE1", "491701234500@s.whatsapp.net", "hi")),
    )
    try:
        wait_for(
            lambda: ProcessingJob.objects.filter(status="succeeded").exists(),
            90,
            "the job cluster to run a job",
        )
        # Main, the maintenance runcluster, and two sentinels each with
        # workers, monitor and pusher.
        workers = settings.Q_CLUSTER["workers"]
        maintenance = settings.Q_CLUSTER["ALT_CLUSTERS"][settings.Q_MAINTENANCE_CLUSTER]
        expected = 1 + 2 + (workers + 2) + (maintenance["workers"] + 2)
        wait_for(lambda: len(tree(cluster.pid)) >= expected, 60, f"{expected} child processes")
    except AssertionError:
        raise AssertionError(app.logs()) from None
    return tree(cluster.pid)


def assert_all_gone(procs, what):
    def gone():
        return not [p for p in procs if _alive(p)]

    wait_for(gone, 30, what)


def test_sigkill_of_the_main_process_takes_the_whole_cluster_down(tenants, tmp_path):
    WhatsAppSession.objects.create(company=tenants.a)
    app = AppProcesses(tmp_path)
    cluster = app.start_qcluster()
    try:
        procs = started_tree(app, cluster, tenants.a)
        cluster.send_signal(signal.SIGKILL)
        cluster.wait(timeout=10)
        assert_all_gone(procs, "every child of the killed cluster to exit")
    finally:
        app.stop("qcluster")


def test_a_killed_child_is_replaced_and_the_cluster_still_stops_cleanly(tenants, tmp_path):
    WhatsAppSession.objects.create(company=tenants.a)
    app = AppProcesses(tmp_path)
    cluster = app.start_qcluster()
    try:
        procs = started_tree(app, cluster, tenants.a)
        sentinel = next(  # the other direct child is the maintenance runcluster
            p
            for p in procs
            if p.ppid() == cluster.pid and "maintenance" not in " ".join(p.cmdline())
        )
        workers = sentinel.children()
        victim = workers[0]
        victim.kill()
        wait_for(
            lambda: (
                len([c for c in sentinel.children() if _alive(c)]) >= len(workers)
                and victim.pid not in {c.pid for c in sentinel.children() if _alive(c)}
            ),
            60,
            "django-q2 to replace the killed child",
        )
        # As honcho stops a Procfile (scripts/run): SIGTERM to the group.
        procs = tree(cluster.pid)
        assert app.signal("qcluster", signal.SIGTERM, timeout=60) == 0, app.logs()
        assert_all_gone(procs, "every process of the stopped cluster to exit")
    finally:
        app.stop("qcluster")


def test_the_sweeper_runs_on_the_maintenance_cluster(tenants, tmp_path):
    """A job left pending with nothing on the queue (its push was lost) is
    enqueued by the sweeper, whose schedule only the maintenance cluster runs."""
    WhatsAppSession.objects.create(company=tenants.a)
    record_inbound_message(
        tenants.a.pk,
        normalize_message(message_event("3EB0SWEPT", "491701234500@s.whatsapp.net", "hi")),
    )
    purge()
    ProcessingJob.objects.update(status=ProcessingJob.Status.PENDING, enqueue_count=0)
    app = AppProcesses(tmp_path)
    app.start_qcluster()
    try:
        schedules = Schedule.objects.all()
        assert sorted(schedules.values_list("func", flat=True)) == sorted(
            func for _name, func, _minutes in SCHEDULES
        )
        assert set(schedules.values_list("cluster", flat=True)) == {settings.Q_MAINTENANCE_CLUSTER}
        wait_for(
            lambda: ProcessingJob.objects.filter(status="succeeded").exists(),
            150,
            "the sweeper to enqueue the lost job",
        )
    except AssertionError:
        raise AssertionError(app.logs()) from None
    finally:
        app.stop("qcluster")
    assert ProcessingJob.objects.get().enqueue_count == 1


def test_stopped_as_honcho_stops_a_procfile_nothing_of_the_cluster_remains(tenants, tmp_path):
    """scripts/run: honcho sends SIGTERM to the process group, waits KILL_WAIT
    (5 s) and then SIGKILLs the group. The cluster stops by itself, the
    django-q2 way (exit code 0), and no process of it is left. Seen before: the
    group's SIGTERM also hit the sentinel and the pool mid-stop and runcluster
    hung until honcho's SIGKILL."""
    import os
    import subprocess

    from honcho.manager import KILL_WAIT

    WhatsAppSession.objects.create(company=tenants.a)
    app = AppProcesses(tmp_path)
    cluster = app.start_qcluster()  # its own session and process group, as honcho starts it
    try:
        procs = started_tree(app, cluster, tenants.a)
        os.killpg(cluster.pid, signal.SIGTERM)
        try:
            # A bound well above KILL_WAIT: this machine may be loaded (the stop
            # takes ~3 s when idle, docs/processing.md); what matters is that it
            # ends by itself, gracefully.
            code = cluster.wait(timeout=6 * KILL_WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=10)
            code = "hung until SIGKILL"
        assert code == 0, app.logs()
        assert_all_gone(procs, "every process of the cluster to exit")
    finally:
        app.stop("qcluster")
