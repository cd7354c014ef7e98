"""Shared by the worker benchmarks (sessions per worker, failover).

Companies are created straight in the benchmark's database; real
`manage.py runworker whatsapp` processes (through bench/_lag_worker.py, which
adds an event-loop lag probe) pick them up by themselves, as in production.
"""

import os
import statistics
import threading
import time
from pathlib import Path

from _procs import Child, child_env

LAG_WORKER = Path(__file__).with_name("_lag_worker.py")


def worker_env(transport, store_dir, **extra):
    """The worker's environment: transport, its own device-store folder, and overrides.

    neonize's device store stays in per-company SQLite files even on PostgreSQL:
    with the postgres:// store every neonize client opened PostgreSQL connections
    that stopping it did not close -- 30 offline sessions retrying with backoff
    reached the server's max_connections (100) within about 15 s (see
    docs/benchmarks.md)."""
    extra.setdefault("WHATSAPP_STORE_URL", "")
    return child_env(WHATSAPP_TRANSPORT=transport, WHATSAPP_STORE_DIR=store_dir, **extra)


def start_worker(name, env, log_dir):
    """A runworker process with worker id `name`; its lag samples go to `<log_dir>/<name>.lag`."""
    lag_file = os.path.join(log_dir, f"{name}.lag")
    child = Child(
        name,
        ["runworker", "whatsapp", "--worker-id", name],
        {**env, "BENCH_LAG_FILE": lag_file},
        log_dir,
        script=LAG_WORKER,
    )
    child.worker_id = name
    child.lag_file = lag_file
    return child


def make_companies(count, prefix, running=True):
    """`count` companies (sessions wanting to run, or stopped); returns their ids."""
    from companies.models import Company
    from whatsapp.models import DesiredState, SessionLease, WhatsAppSession

    companies = Company.objects.bulk_create(
        Company(name=f"{prefix} {i}", slug=f"{prefix}-{i}") for i in range(count)
    )
    if not all(c.pk for c in companies):  # backends without RETURNING ids
        companies = list(Company.objects.filter(slug__startswith=f"{prefix}-"))
    sessions = WhatsAppSession.objects.bulk_create(
        WhatsAppSession(
            company=c, desired_state=DesiredState.RUNNING if running else DesiredState.STOPPED
        )
        for c in companies
    )
    if not all(s.pk for s in sessions):
        sessions = list(WhatsAppSession.objects.filter(company__slug__startswith=f"{prefix}-"))
    SessionLease.objects.bulk_create(SessionLease(session=s) for s in sessions)
    return [c.pk for c in companies]


def want_running(prefix):
    """Ask for the `prefix` companies' sessions to run (as `start_session` would)."""
    from whatsapp.models import DesiredState, WhatsAppSession

    return WhatsAppSession.objects.filter(company__slug__startswith=f"{prefix}-").update(
        desired_state=DesiredState.RUNNING
    )


def counts(prefix, owner=None):
    """How many of the `prefix` companies are owned (by `owner`, or anyone),
    connected, and have tried to connect at least once."""
    from django.db.models import Q
    from django.db.models.functions import Now

    from whatsapp.models import SessionLease, SessionState, WhatsAppSession

    mine = Q(session__company__slug__startswith=f"{prefix}-")
    leases = SessionLease.objects.filter(mine, expires_at__gt=Now()).exclude(owner="")
    if owner is not None:
        leases = leases.filter(owner=owner)
    sessions = WhatsAppSession.objects.filter(company__slug__startswith=f"{prefix}-")
    tried = Q(connect_failure_count__gte=1) | Q(
        state__in=[SessionState.CONNECTED, SessionState.AWAITING_PAIRING]
    )
    return {
        "owned": leases.count(),
        "connected": sessions.filter(state=SessionState.CONNECTED).count(),
        "tried": sessions.filter(tried).count(),
    }


def owners_of(prefix):
    """company id -> owner of its unexpired lease."""
    from django.db.models.functions import Now

    from whatsapp.models import SessionLease

    rows = (
        SessionLease.objects.filter(
            session__company__slug__startswith=f"{prefix}-", expires_at__gt=Now()
        )
        .exclude(owner="")
        .values_list("session__company_id", "owner")
    )
    return dict(rows)


def wake(worker_id):
    """Send the worker a `worker.wake` hint so it reconciles now, not at its next round."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from whatsapp.models import WorkerProcess

    channel = WorkerProcess.objects.get(worker_id=worker_id).channel_name
    async_to_sync(get_channel_layer().send)(channel, {"type": "worker.wake"})


def wait_registered(worker_id, child, timeout=120):
    from whatsapp.models import WorkerProcess

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise SystemExit(f"worker {worker_id} exited:\n{child.tail()}")
        if WorkerProcess.objects.filter(worker_id=worker_id, stopped_at__isnull=True).exists():
            if os.path.exists(child.lag_file):  # the loop runs
                return
        time.sleep(0.2)
    raise SystemExit(f"worker {worker_id} did not start:\n{child.tail()}")


class RssSampler(threading.Thread):
    """Samples RSS (MiB) and thread count of one process every `interval` seconds."""

    def __init__(self, pid, interval=0.25):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples = []  # (unix time, rss MiB, threads)
        self._halt = threading.Event()

    def run(self):
        import psutil

        while not self._halt.is_set():
            try:
                with self.process.oneshot():
                    rss = self.process.memory_info().rss / 2**20
                    threads = self.process.num_threads()
            except psutil.Error:
                return
            self.samples.append((time.time(), rss, threads))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)

    def between(self, start, end):
        return [s for s in self.samples if start <= s[0] <= end]

    def median_rss(self, start, end):
        window = self.between(start, end)
        return statistics.median(s[1] for s in window) if window else float("nan")

    def peak(self, start=0.0, end=float("inf")):
        window = self.between(start, end)
        return (max(s[1] for s in window), max(s[2] for s in window)) if window else (0, 0)


def read_lag(path, start=0.0, end=float("inf")):
    """Lag samples (ms) recorded by the worker's probe between two unix times."""
    values = []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 2 and start <= float(parts[0]) <= end:
                    values.append(float(parts[1]))
    except OSError:
        pass
    return values
