"""Real `manage.py runworker whatsapp` processes contending for real companies.

Each worker runs the real neonize transport: offline, every dial fails on DNS
within milliseconds, so clients are created, fail, are stopped and retried
with backoff all the time -- the busiest possible lease traffic. What is
proved, from the database the workers write:

* at every sampled moment each company has at most one unexpired owner, and
  ownership only ever changes hands with a higher epoch;
* no company ever had two live clients: every client's life (from "client N
  connecting" to "client N stopped", written by the worker itself) is an
  interval, and the intervals of one company never overlap, across workers;
* SIGKILL of a worker: the other workers (same machine) see its process gone
  and free its leases at once; its companies are owned again without waiting
  for the TTL, and never while it lived;
* SIGTERM: the worker stops its clients, releases its leases at once (handed
  over within about one reconcile interval, far below the TTL) and exits
  within seconds.
"""

import os
import signal
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from companies.models import Company
from tests.e2e_processes import AppProcesses
from whatsapp.models import (
    ConnectionEvent,
    DesiredState,
    SessionLease,
    WhatsAppSession,
    WorkerProcess,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]

# Long enough that "handed over before the old leases could expire" is not a
# race on a loaded 2-core machine; short enough to keep SIGKILL takeovers quick.
TTL = 5.0
INTERVAL = 1.0


def needs_postgres():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL + Redis production path: runs in the PostgreSQL pass")


# Worker processes with the neonize transport (offline: they never reach
# WhatsApp) and compressed lease timings.
WORKER_ENV = {
    "WHATSAPP_TRANSPORT": "neonize",
    "WHATSAPP_LEASE_TTL": TTL,
    "WHATSAPP_RECONCILE_INTERVAL": INTERVAL,
    "WHATSAPP_BACKOFF_BASE": 1,
    "WHATSAPP_BACKOFF_CAP": 6,
    "WHATSAPP_REBALANCE_BATCH": 50,
    "WHATSAPP_SHUTDOWN_GRACE": 8,
}


@pytest.fixture
def workers(tmp_path):
    group = AppProcesses(tmp_path, **WORKER_ENV)
    yield group
    group.stop_all(at_once=True)


def make_companies(count):
    companies = Company.objects.bulk_create(
        Company(name=f"Company {i}", slug=f"lease-{i}") for i in range(count)
    )
    sessions = WhatsAppSession.objects.bulk_create(
        WhatsAppSession(company=c, desired_state=DesiredState.RUNNING) for c in companies
    )
    SessionLease.objects.bulk_create(SessionLease(session=s) for s in sessions)
    return [c.pk for c in companies]


class Sampler:
    """Samples the lease table; checks single ownership and epoch monotonicity."""

    def __init__(self):
        self.last = {}  # session_id -> (owner, epoch)
        self.samples = 0
        self.errors = []

    def owners(self):
        now = timezone.now()
        rows = SessionLease.objects.values_list(
            "session__company_id", "owner", "epoch", "expires_at"
        )
        current = defaultdict(set)
        for company_id, owner, epoch, expires in rows:
            seen = self.last.get(company_id)
            if seen is not None:
                if epoch < seen[1]:
                    self.errors.append(f"company {company_id}: epoch went back {seen}->{epoch}")
                if owner and seen[0] and owner != seen[0] and epoch <= seen[1]:
                    self.errors.append(
                        f"company {company_id}: {seen[0]} -> {owner} without a new epoch"
                    )
            self.last[company_id] = (owner or (seen[0] if seen else ""), epoch)
            if owner and expires and expires > now:
                current[company_id].add(owner)
        self.samples += 1
        for company_id, held_by in current.items():
            if len(held_by) > 1:
                self.errors.append(f"company {company_id} owned by {held_by}")
        return {cid: next(iter(o)) for cid, o in current.items()}

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            owners = self.owners()
            if predicate(owners):
                return owners
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s: {what}; owners: {count_by_owner(owners)}"
                )
            time.sleep(0.1)


def count_by_owner(owners):
    counts = defaultdict(int)
    for owner in owners.values():
        counts[owner] += 1
    return dict(counts)


def client_intervals(ended_at):
    """Per company: [(start, end, worker)] of every client, from the workers' own rows.
    A worker killed with SIGKILL never wrote its last stops: `ended_at[worker]`."""
    rows = (
        ConnectionEvent.objects.exclude(worker_id="")
        .filter(kind__in=["starting", "stopped"], reason__startswith="client ")
        .order_by("created_at", "id")
        .values_list("session__company_id", "worker_id", "kind", "created_at", "reason")
    )
    open_ = {}
    intervals = defaultdict(list)
    for company_id, worker, kind, at, _reason in rows:
        key = (company_id, worker)
        if kind == "starting":
            assert key not in open_, f"{worker} started a 2nd client of company {company_id}"
            open_[key] = at
        else:
            start = open_.pop(key, None)
            if start is not None:
                intervals[company_id].append((start, at, worker))
    for (company_id, worker), start in open_.items():
        end = ended_at.get(worker, timezone.now())
        intervals[company_id].append((start, end, worker))
    return intervals


def assert_no_overlap(intervals):
    count = 0
    for company_id, spans in intervals.items():
        spans.sort()
        for (_s1, e1, w1), (s2, _e2, w2) in zip(spans, spans[1:], strict=False):
            assert s2 >= e1, (
                f"company {company_id}: client of {w2} from {s2} while the "
                f"client of {w1} lived until {e1}"
            )
        count += len(spans)
    return count


def run_contention(workers, n_workers, n_companies):
    companies = make_companies(n_companies)
    names = [f"w{i}" for i in range(1, n_workers + 1)]
    workers.start_workers(*names)  # all at the same moment
    sampler = Sampler()
    ids = [workers.ids[n] for n in names]
    share = -(-n_companies // n_workers)
    try:
        owners = sampler.wait_for(
            lambda o: (
                len(o) == n_companies
                and set(o.values()) == set(ids)
                and max(count_by_owner(o).values()) <= share + 1
            ),
            timeout=40,
            what="every company owned, shared by all workers",
        )
    except AssertionError:
        print(workers.logs())
        raise
    assert set(owners) == set(companies)
    print(f"{n_workers} workers own {n_companies} companies: {count_by_owner(owners)}")
    return sampler, names


def kill_and_check_takeover(workers, sampler, victim, n_companies):
    victim_id = workers.ids[victim]
    # A worker starved of CPU may briefly fence itself (renewal overdue) and own
    # nothing for a moment: wait until it owns something to kill.
    owners = sampler.wait_for(
        lambda o: victim_id in set(o.values()), timeout=20, what=f"{victim} owns something"
    )
    victims = {c for c, o in owners.items() if o == victim_id}
    # Its leases as they stood at the kill (it renews them until then).
    expiry = dict(
        SessionLease.objects.filter(owner=victim_id).values_list(
            "session__company_id", "expires_at"
        )
    )
    signalled_at = timezone.now()
    workers.procs[victim].send_signal(signal.SIGKILL)
    workers.procs[victim].wait(timeout=10)
    killed_at = timezone.now()
    t0 = time.monotonic()
    owners = sampler.wait_for(
        lambda o: all(c in o and o[c] != victim_id for c in victims),
        timeout=TTL + 4 * INTERVAL + 4,
        what=f"{victim}'s companies owned again",
    )
    took = time.monotonic() - t0
    acquired = dict(
        SessionLease.objects.filter(session__company_id__in=victims).values_list(
            "session__company_id", "acquired_at"
        )
    )
    early = sum(1 for c in expiry if acquired[c] < expiry[c])
    print(
        f"SIGKILL {victim}: {len(victims)} companies owned again after {took:.2f}s; "
        f"{early} of {len(expiry)} before the dead worker's lease would have expired"
    )
    # Never while it lived; and not because its leases ran out: a worker on this
    # machine saw its process gone and freed them all (their lease_lost rows).
    assert all(acquired[c] >= signalled_at for c in victims), "a live worker's lease was taken"
    worker = WorkerProcess.objects.get(worker_id=victim_id)
    assert worker.stop_reason.startswith(f"worker {victim_id} died (process "), worker.stop_reason
    freed = set(
        ConnectionEvent.objects.filter(
            worker_id=victim_id, kind="lease_lost", reason=worker.stop_reason
        ).values_list("session__company_id", flat=True)
    )
    assert victims <= freed, f"not freed by a peer: {victims - freed}"
    assert len(owners) == n_companies
    return killed_at


def terminate_and_check_handover(workers, sampler, leaver, n_companies):
    leaver_id = workers.ids[leaver]
    leaving = {c for c, o in sampler.owners().items() if o == leaver_id}
    assert leaving, f"{leaver} owned nothing"
    code, took_to_exit = workers.timed_signal(leaver, signal.SIGTERM)
    assert code == 0, workers.logs()
    assert took_to_exit < 8, f"exit took {took_to_exit:.1f}s"
    t0 = time.monotonic()
    # Released at once: no lease of the leaver survives its exit ...
    assert not SessionLease.objects.filter(owner=leaver_id).exists()
    assert WorkerProcess.objects.get(worker_id=leaver_id).stopped_at is not None
    # ... and the others own its companies well before a TTL could have passed.
    sampler.wait_for(
        lambda o: all(c in o and o[c] != leaver_id for c in leaving),
        timeout=TTL + 4,
        what=f"{leaver}'s companies handed over",
    )
    handed = time.monotonic() - t0
    print(
        f"SIGTERM {leaver}: exited in {took_to_exit:.2f}s, {len(leaving)} companies "
        f"handed over {handed:.2f}s later"
    )
    # Taken over right after the leaver released them (its own lease_lost rows), far
    # sooner than a lease left to expire: nobody waited a TTL. Measured from the
    # release, not from the signal: stopping 25 real clients takes seconds on a
    # loaded machine, and the leases are held (rightly) until each client stopped.
    released = min(
        ConnectionEvent.objects.filter(
            worker_id=leaver_id, kind="lease_lost", reason="SIGTERM received"
        ).values_list("created_at", flat=True)
    )
    latest = max(
        SessionLease.objects.filter(session__company_id__in=leaving).values_list(
            "acquired_at", flat=True
        )
    )
    after = (latest - released).total_seconds()
    print(f"  all {len(leaving)} taken over within {after:.2f}s of the first release")
    assert after < TTL - INTERVAL, f"handed over {after:.1f}s after the release"


def wait_for_clients(sampler, worker_id, n_companies):
    """Until `worker_id` has started a real client for `n_companies` companies."""
    sampler.wait_for(
        lambda _o: (
            ConnectionEvent.objects.filter(
                worker_id=worker_id, kind="starting", reason__startswith="client "
            )
            .values("session")
            .distinct()
            .count()
            == n_companies
        ),
        timeout=60,
        what=f"a client of {worker_id} started for every company",
    )


@pytest.mark.postgres
def test_three_workers_share_50_companies_survive_sigkill_and_hand_over_on_sigterm(workers):
    needs_postgres()
    sampler, _ = run_contention(workers, 3, 50)
    killed_at = kill_and_check_takeover(workers, sampler, "w1", 50)
    terminate_and_check_handover(workers, sampler, "w2", 50)
    sampler.wait_for(
        lambda o: len(o) == 50 and set(o.values()) == {workers.ids["w3"]},
        timeout=10,
        what="w3 owns everything",
    )
    wait_for_clients(sampler, workers.ids["w3"], 50)
    workers.stop_all(at_once=True)
    assert not sampler.errors, sampler.errors[:5]
    assert sampler.samples > 50
    spans = assert_no_overlap(client_intervals({workers.ids["w1"]: killed_at}))
    assert spans >= 50  # every company had real clients started, failed and stopped
    assert not SessionLease.objects.exclude(owner="").exists()  # all released at the end


def worker_backends(worker_id):
    """PostgreSQL backends (pid, start) of one worker, by its application_name."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = %s",
            [f"aiadmin-worker {worker_id}"],
        )
        return set(cursor.fetchall())


@pytest.mark.postgres
def test_two_workers_started_together_never_both_own_a_company(workers):
    needs_postgres()
    sampler, _ = run_contention(workers, 2, 50)
    # Each worker keeps one connection (WHATSAPP_WORKER_CONN_MAX_AGE), named after
    # it, instead of a new one per database call: the same backend seconds apart.
    before = worker_backends(workers.ids["w1"])
    time.sleep(2 * INTERVAL)
    assert len(before) == 1 and worker_backends(workers.ids["w1"]) == before
    terminate_and_check_handover(workers, sampler, "w1", 50)
    workers.start_workers("w3")
    sampler.wait_for(
        lambda o: len(o) == 50 and set(o.values()) == {workers.ids["w2"], workers.ids["w3"]},
        timeout=30,
        what="w3 takes its share (and w2 keeps its own)",
    )
    killed_at = kill_and_check_takeover(workers, sampler, "w2", 50)
    workers.stop_all(at_once=True)
    assert not sampler.errors, sampler.errors[:5]
    assert_no_overlap(client_intervals({workers.ids["w2"]: killed_at}))


def test_two_workers_share_companies_survive_sigkill_and_stop_cleanly(workers):
    """Runs in both passes: on the embedded default (SQLite + the SQLite channel
    layer) and on PostgreSQL + Redis."""
    sampler, _ = run_contention(workers, 2, 12)
    killed_at = kill_and_check_takeover(workers, sampler, "w1", 12)
    # w2 runs real clients for all 12 companies, its own and w1's, before it stops.
    wait_for_clients(sampler, workers.ids["w2"], 12)
    code, took = workers.timed_signal("w2", signal.SIGTERM)
    assert code == 0 and took < 8, workers.logs()
    assert not SessionLease.objects.exclude(owner="").exists()
    assert not sampler.errors, sampler.errors[:5]
    spans = assert_no_overlap(client_intervals({workers.ids["w1"]: killed_at}))
    print(f"{spans} client lifetimes, none overlapping; {sampler.samples} lease samples")
    assert spans >= 12
    stopped = WorkerProcess.objects.get(worker_id=workers.ids["w2"]).stopped_at
    assert stopped is not None and timezone.now() - stopped < timedelta(seconds=30)


def test_sigint_stops_a_worker_as_cleanly_as_sigterm(workers):
    """Ctrl-C in a terminal (SIGINT): clients stopped, leases released at once,
    exit code 0 within seconds. Runs in both passes."""
    companies = make_companies(3)
    workers.start_workers("w1")
    sampler = Sampler()
    worker_id = workers.ids["w1"]
    sampler.wait_for(
        lambda o: len(o) == 3 and set(o.values()) == {worker_id},
        timeout=40,
        what="the worker owns all three companies",
    )
    code, took = workers.timed_signal("w1", signal.SIGINT)
    assert code == 0, workers.logs()
    assert took < 8, f"exit took {took:.1f}s"
    assert not SessionLease.objects.exclude(owner="").exists()
    assert WorkerProcess.objects.get(worker_id=worker_id).stopped_at is not None
    released = ConnectionEvent.objects.filter(
        worker_id=worker_id, kind="lease_lost", reason="SIGINT received"
    )
    assert set(released.values_list("session__company_id", flat=True)) == set(companies)
    assert not sampler.errors, sampler.errors[:5]


def store_handles(pid):
    """Open handles of a process on neonize store files (one per leaked client)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).endswith(".sqlite3") and "company-" in os.readlink(fd)
        except OSError:
            pass  # closed meanwhile
    return count


def test_a_worker_recycles_itself_in_place_before_leaked_store_handles_pile_up(workers):
    """neonize opens the device store on every connect and never closes it. A
    worker whose clients keep failing (offline: every dial fails) re-executes
    itself once its leak budget is spent: same pid (the process manager sees
    nothing), leases released on the way, handles back to zero."""
    budget = 4
    make_companies(2)
    workers.env.update(
        {
            "WHATSAPP_RECYCLE_AFTER_LEAKED": str(budget),
            "WHATSAPP_BACKOFF_BASE": "0.2",
            "WHATSAPP_BACKOFF_CAP": "0.4",
        }
    )
    workers.start_workers("w1")
    proc = workers.procs["w1"]
    sampler = Sampler()
    starts = ConnectionEvent.objects.filter(kind="starting", reason__startswith="client ")
    recycled = ConnectionEvent.objects.filter(kind="lease_lost", reason__startswith="recycling")
    peak = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, workers.logs()
        peak = max(peak, store_handles(proc.pid))
        sampler.owners()
        if starts.count() > 3 * budget and recycled.count() >= 2 * 2:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(
            f"no repeated recycling ({starts.count()} clients, {peak} store handles open): "
            f"{workers.logs()[-2000:]}"
        )
    print(
        f"{starts.count()} clients started in one pid, {recycled.count() // 2} recycles, "
        f"at most {peak} store handles open"
    )
    assert peak <= budget + 2, f"{peak} store handles open with a budget of {budget}"
    assert proc.poll() is None  # the same process (pid) all along
    assert not sampler.errors, sampler.errors[:5]
    code, took = workers.timed_signal("w1", signal.SIGTERM)
    assert code == 0 and took < 8, workers.logs()
    assert not SessionLease.objects.exclude(owner="").exists()
