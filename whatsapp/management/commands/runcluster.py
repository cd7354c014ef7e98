"""Run the job stage: django-q2's cluster for client messages and, beside it,
the maintenance cluster (sweeper, alert checks, webhook dispatch), so that
maintenance never waits behind a backlog of client messages.

    manage.py runcluster                      # both (Procfile `jobs`)
    manage.py runcluster --queue jobs         # client messages only
    manage.py runcluster --queue maintenance  # maintenance only

No orphan: django-q2's processes (sentinel, workers, monitor, pusher) and the
maintenance cluster die with the process that started them. Each child asks
the kernel for SIGKILL when its parent dies (Linux prctl PR_SET_PDEATHSIG, set
right after the fork, then a check that the parent did not die before it was
set); elsewhere a thread in the child polls os.getppid(). So a SIGKILL of the
main pid takes the whole tree down within moments, and a process manager that
restarts it never gets two clusters. A job killed mid-run is run again by the
sweeper once its attempt provably died (docs/processing.md).

SIGTERM/SIGINT stop both clusters the django-q2 way (a task being run is
finished first).
"""

import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connections

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid):
    """In a child: get SIGKILLed when the parent dies (or exit now if it already has)."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid):
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


class _AfterFork:
    """Registered with multiprocessing: every process it forks from here on
    (the sentinel, and through it django-q2's workers, monitor and pusher, the
    replacements included) dies with its parent."""

    main_pid = None

    def __call__(self, _registered):
        parent = multiprocessing.parent_process()
        if parent is not None and parent.pid:
            die_with_parent(parent.pid)
            if parent.pid == self.main_pid:
                # The sentinel (and through it the pool) leaves the process group
                # of runcluster: a signal to the whole group (honcho stopping a
                # Procfile, Ctrl-C in a terminal) reaches only runcluster, which
                # stops the cluster the django-q2 way. Otherwise the sentinel and
                # the pool (SIGTERM left at its default by django-q2) die mid-stop
                # and the stop hangs past honcho's grace period.
                os.setpgid(0, 0)


_after_fork = _AfterFork()


def arm_children():
    _after_fork.main_pid = os.getpid()
    multiprocessing.util.register_after_fork(_after_fork, _after_fork)


def _keep_database_connections():
    """Every cluster process keeps its database connection for
    WHATSAPP["JOB_CONN_MAX_AGE"] seconds (health checks on) instead of opening
    one per task: django-q2 calls close_old_connections() before each task and
    each ORM dequeue, which with the default CONN_MAX_AGE 0 meant a new
    connection (on PostgreSQL a new server process) per task. django-q2 closes
    every connection before it forks, so no connection is shared by two
    processes. Call before the first query."""
    db = connections.settings["default"]
    db["CONN_MAX_AGE"] = settings.WHATSAPP["JOB_CONN_MAX_AGE"]
    db["CONN_HEALTH_CHECKS"] = True


def _watch_jobs(stopping, interval):
    """Every `interval` seconds, put stranded jobs back on the queue (a dead
    attempt, a task a dead cluster took, a job never pushed), so that a kill
    costs a client seconds, not the minute sweeper's round plus django-q2's
    `retry` (services.jobs.watch_stranded_jobs). The first round runs at once:
    a cluster restarted after a crash takes over what the dead one left."""
    from django.db import close_old_connections

    from whatsapp.services.jobs import watch_stranded_jobs

    while not stopping.is_set():
        try:
            watch_stranded_jobs()
        except Exception:  # the database or the broker is down: next round
            logger.exception("job watch round failed")
        finally:
            close_old_connections()
        stopping.wait(interval)


class Command(BaseCommand):
    help = "Run the job clusters (client messages and maintenance); no orphan on a kill."

    def add_arguments(self, parser):
        parser.add_argument("--queue", choices=["all", "jobs", "maintenance"], default="all")

    def handle(self, *args, **options):
        from django_q.conf import Conf

        queue = options["queue"]
        _keep_database_connections()
        maintenance = settings.Q_MAINTENANCE_CLUSTER
        if queue == "maintenance" and Conf.CLUSTER_NAME != maintenance:
            # django-q2 reads the cluster name from the environment when it is
            # first imported: start again (same pid) with it set.
            os.execve(sys.executable, self._argv("maintenance"), self._maintenance_env())
        arm_children()
        side = self._start_maintenance() if queue == "all" else None

        from django_q.cluster import Cluster

        cluster = Cluster()
        stopping = threading.Event()

        def stop(signum, frame):
            stopping.set()
            if side is not None and side.poll() is None:
                side.send_signal(signal.SIGTERM)
            if cluster.sentinel is None:  # not started yet
                sys.exit(0)
            cluster.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        cluster.start()
        interval = settings.WHATSAPP["JOB_WATCH_INTERVAL"]
        if queue != "maintenance" and interval > 0:
            # Started after the sentinel is forked: its connection is this thread's alone.
            threading.Thread(
                target=_watch_jobs, args=(stopping, interval), name="job-watch", daemon=True
            ).start()
        while cluster.sentinel.is_alive():
            if side is not None and side.poll() is not None and not stopping.is_set():
                logger.error(
                    "the maintenance cluster exited (%s); starting it again", side.returncode
                )
                time.sleep(1)
                side = self._start_maintenance()
            time.sleep(0.2)
        if side is not None:
            if side.poll() is None:
                side.send_signal(signal.SIGTERM)
            try:
                side.wait(timeout=30)
            except subprocess.TimeoutExpired:
                side.kill()
                side.wait()
        if not stopping.is_set():  # the sentinel died without being asked to stop
            sys.exit(1)

    def _argv(self, queue):
        return [
            sys.executable,
            str(settings.BASE_DIR / "manage.py"),
            "runcluster",
            "--queue",
            queue,
        ]

    def _maintenance_env(self):
        return dict(
            os.environ,
            AIADMIN_Q_SITE=settings.Q_SITE,
            Q_CLUSTER_NAME=settings.Q_MAINTENANCE_CLUSTER,
        )

    def _start_maintenance(self):
        me = os.getpid()
        return subprocess.Popen(
            self._argv("maintenance"),
            env=self._maintenance_env(),
            preexec_fn=lambda: die_with_parent(me),  # noqa: PLW0108
            process_group=0,  # signalled by this process only, once (see _AfterFork)
        )
