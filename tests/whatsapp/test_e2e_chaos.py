"""End to end, real processes, under faults: SIGKILL a worker in the middle of a
message stream, three times.

The simulator, two `runworker whatsapp` and a `qcluster` run on the test
database (SQLite in the embedded pass, PostgreSQL + Redis in the production
pass). Phones write all along; each message has its own push name, so the
auto-reply it earns names it and can be traced. While the killed worker's
sessions wait for a new owner, outbound messages are queued for them. Checked
from the database and from what the simulator received:

* nothing lost, nothing processed twice: stored rows == jobs == distinct
  messages sent, every job succeeded;
* the killed worker's sessions are owned again at once, never while it lived:
  the surviving worker sees its process gone and frees its leases without
  waiting for them to expire;
* every reply and every message queued meanwhile reached its phone exactly
  once and reads sent: a send the killed worker had started but not recorded
  is sent again by the next owner with the same message id, which the phone
  keeps once (the simulator counts those resends as duplicates, never shows
  them). Nothing ends "outcome unknown" with a transport that takes our id.
"""

import json
import signal
import threading
import time
from collections import Counter, defaultdict

import pytest
from django.utils import timezone

from companies.models import Company
from tests.e2e_processes import AppProcesses, Simulator, pair_companies, wait_connected, wait_for
from whatsapp.models import (
    AutoReplyRule,
    ConnectionEvent,
    InboundMessage,
    OutboundMessage,
    ProcessingJob,
    SessionLease,
)
from whatsapp.services.control import start_session
from whatsapp.services.outbound import queue_outbound_message
from whatsapp.services.sending import INTERRUPTED

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]

TTL = 5.0
INTERVAL = 1.0
KILLS = 3
PER_BURST = 12  # messages written before and after each kill
PHONES = ["491519000001", "491519000002", "491519000003", "491519000004"]


@pytest.fixture
def system(tmp_path):
    sim = Simulator(tmp_path).start()
    app = AppProcesses(
        tmp_path,
        sim,
        WHATSAPP_LEASE_TTL=TTL,
        WHATSAPP_RECONCILE_INTERVAL=INTERVAL,
        WHATSAPP_BACKOFF_BASE=1,
        WHATSAPP_BACKOFF_CAP=4,
        WHATSAPP_SHUTDOWN_GRACE=8,
    )
    yield sim, app
    app.stop_all()
    sim.stop()


class Stream:
    """Messages written by the phones, each with a unique push name (its reply names it)."""

    def __init__(self, sim, company_ids):
        self.sim = sim
        self.company_ids = company_ids
        self.sent = []  # (company id, push name)

    def burst(self, count):
        for _ in range(count):
            i = len(self.sent)
            company_id = self.company_ids[i % len(self.company_ids)]
            name = f"m{i:04d}"
            self.sim.post(
                "messages",
                company=company_id,
                **{"from": PHONES[i % len(PHONES)]},
                push_name=name,
                text=f"chaos {i}",
            )
            self.sent.append((company_id, name))
            time.sleep(0.05)


def owners(company_ids):
    rows = SessionLease.objects.filter(session__company_id__in=company_ids).values_list(
        "session__company_id", "owner"
    )
    return dict(rows)


def test_sigkilled_workers_lose_nothing_and_process_nothing_twice(system, tenants):
    sim, app = system
    third = Company.objects.create(name="Clinic Gamma", slug="gamma")
    companies = [tenants.a, tenants.b, third]
    ids = [c.pk for c in companies]
    for company in companies:
        AutoReplyRule.objects.create(
            company=company, match=AutoReplyRule.Match.ANY, reply_text="Reply to {name}"
        )
        start_session(company.pk, actor="e2e test")
    app.start_workers("w1", "w2")
    app.start_qcluster()
    pair_companies(sim, ids, app)
    stream = Stream(sim, ids)
    queued = []  # texts queued while a victim's sessions had no owner
    takeovers = []

    for kill in range(1, KILLS + 1):
        stream.burst(PER_BURST)
        by_owner = owners(ids)
        name = max(("w1", "w2"), key=lambda n: sum(o == app.ids[n] for o in by_owner.values()))
        victim_id = app.ids[name]
        orphans = [c for c, o in by_owner.items() if o == victim_id]
        assert orphans, f"{name} owns nothing: {by_owner}"
        # The dead worker's leases as they stood at the kill: when they would expire.
        expires = dict(
            SessionLease.objects.filter(session__company_id__in=orphans).values_list(
                "session__company_id", "expires_at"
            )
        )
        signalled = timezone.now()
        app.procs[name].send_signal(signal.SIGKILL)
        app.procs[name].wait(timeout=10)
        killed = time.monotonic()
        for company_id in orphans:  # outbound queued while nobody owns the session
            text = f"queued during kill {kill} for {company_id}"
            queue_outbound_message(company_id, PHONES[0], text, idempotency_key=text)
            queued.append(text)
        stream.burst(PER_BURST)  # phones keep writing to every company
        try:
            wait_for(
                lambda orphans=orphans, gone=victim_id: all(
                    owners(orphans)[c] not in ("", gone) for c in orphans
                ),
                TTL + 4 * INTERVAL + 10,
                f"kill {kill}: {name}'s sessions owned again",
            )
        except AssertionError:
            print(app.logs())
            raise
        took = time.monotonic() - killed
        takeovers.append(round(took, 1))
        # Owned again after the kill, never while the victim lived: freed by the
        # survivor, which saw the victim's process gone -- or, when the survivor was
        # itself only starting at the kill (restarted after the previous kill), taken
        # once the leases ran out. The first kill finds both workers long running.
        acquired = dict(
            SessionLease.objects.filter(session__company_id__in=orphans).values_list(
                "session__company_id", "acquired_at"
            )
        )
        assert all(acquired[c] >= signalled for c in orphans), "a live lease was taken"
        freed = set(
            ConnectionEvent.objects.filter(
                worker_id=victim_id,
                kind="lease_lost",
                reason__startswith=f"worker {victim_id} died (process ",
                created_at__gte=signalled,
            ).values_list("session__company_id", flat=True)
        )
        late = {c for c in orphans if c not in freed and acquired[c] < expires[c]}
        assert not late, f"kill {kill}: taken before expiry but not freed: {late}"
        if kill == 1:
            assert set(orphans) <= freed, "kill 1: not freed by the survivor"
        early = sum(1 for c in orphans if acquired[c] < expires[c])
        print(f"kill {kill}: {early} of {len(orphans)} owned again before the old expiry")
        app.start_workers(name)  # back for the next round (its old id frees up)

    total = len(stream.sent)
    replies_expected = {f"Reply to {name}" for _, name in stream.sent}
    try:
        wait_connected(ids, app, "every company connected after the kills")
        wait_for(
            lambda: (
                ProcessingJob.objects.filter(status=ProcessingJob.Status.SUCCEEDED).count() >= total
                and not OutboundMessage.objects.filter(status__in=["queued", "sending"]).exists()
            ),
            120,
            "every message processed and every outbound settled",
            interval=0.5,
        )
    except AssertionError:
        print(summary(sim, stream, queued, takeovers))
        print(app.logs())
        raise
    time.sleep(1.5)  # a late duplicate would show up now
    print(summary(sim, stream, queued, takeovers))

    # Nothing lost, nothing processed twice.
    assert InboundMessage.objects.count() == total
    assert ProcessingJob.objects.count() == total
    assert ProcessingJob.objects.filter(status=ProcessingJob.Status.SUCCEEDED).count() == total
    stored = set(InboundMessage.objects.values_list("push_name", flat=True))
    assert stored == {name for _, name in stream.sent}

    # Each text reached its phone exactly once and is recorded as sent.
    received = Counter(s["text"] for s in sim.sends())
    assert max(received.values()) == 1, [t for t, n in received.items() if n > 1]
    outbound = {o.text: o for o in OutboundMessage.objects.all()}
    assert set(outbound) == replies_expected | set(queued)
    for text, row in outbound.items():
        assert row.last_error != INTERRUPTED, text  # the simulator takes our ids
        assert row.status in {"sent", "delivered", "read"}, (text, row.status, row.last_error)
        assert received[text] == 1, f"{text!r} recorded as sent, received {received[text]}x"
    # Resent with its id: at most the one send in flight per kill per session of the victim.
    assert sim.stats()["totals"].get("duplicate_sends", 0) <= KILLS * len(ids)


def summary(sim, stream, queued, takeovers):
    totals = sim.stats()["totals"]
    statuses = Counter(OutboundMessage.objects.values_list("status", flat=True))
    received = Counter(s["text"] for s in sim.sends())
    return (
        f"chaos: {KILLS} SIGKILLs, takeovers after {takeovers}s (TTL {TTL:g}s)\n"
        f"  sent {len(stream.sent)} messages: {InboundMessage.objects.count()} stored, "
        f"{ProcessingJob.objects.count()} jobs "
        f"({dict(Counter(ProcessingJob.objects.values_list('status', flat=True)))}), "
        f"redelivered {totals.get('redelivered', 0)}, conflicts {totals.get('conflicts', 0)}\n"
        f"  outbound {dict(statuses)} ({len(queued)} queued during kills); simulator received "
        f"{sum(received.values())} sends, {totals.get('duplicate_sends', 0)} resends kept once"
    )


# --- the whole path under every fault at once (issue 15) ---------------------------
CHAOS_HANDLER = {"chaos_record": {"path": "tests.whatsapp.chaos_handler.record", "label": "c"}}
COMPANIES = 6  # one worker owns them all; a second one makes it hand over 2 (rebalance)
RATE = 6.0  # messages/s, from the phones, all along


class Flow(threading.Thread):
    """Phones writing at RATE messages/s from a thread until stopped; each
    message names itself (push name), round robin over the companies."""

    def __init__(self, sim, company_ids):
        super().__init__(daemon=True)
        self.sim = sim
        self.company_ids = company_ids
        self.sent = []  # (company id, push name)
        self.errors = []
        self.halt = threading.Event()

    def run(self):
        i = 0
        while not self.halt.wait(1 / RATE):
            company_id = self.company_ids[i % len(self.company_ids)]
            name = f"f{i:04d}"
            try:
                self.sim.post(
                    "messages",
                    company=company_id,
                    **{"from": PHONES[i % len(PHONES)]},
                    push_name=name,
                    text=f"flow {i}",
                )
            except Exception as exc:  # the simulator is never killed: a test failure
                self.errors.append(repr(exc))
                return
            self.sent.append((company_id, name))
            i += 1

    def stop(self):
        self.halt.set()
        self.join(timeout=30)


def running_job():
    return ProcessingJob.objects.filter(status=ProcessingJob.Status.RUNNING).first()


def test_kills_and_a_rebalance_under_load_answer_every_message_exactly_once(
    tenants, tmp_path, settings
):
    """While phones write: a second worker makes the first hand sessions over
    (rebalance), the job cluster is SIGKILLed mid-job and restarted, then the
    worker owning most sessions is SIGKILLed and restarted. Then: every message
    stored once; its handler run once, or again only as a retry told that the
    previous attempt died; answered exactly once at the phone (counted by the
    simulator, per inbound message id); no job left unfinished."""
    settings.WHATSAPP_INBOUND_HANDLERS = {**settings.WHATSAPP_INBOUND_HANDLERS, **CHAOS_HANDLER}
    calls = tmp_path / "calls.txt"
    sim = Simulator(tmp_path).start()
    app = AppProcesses(
        tmp_path,
        sim,
        WHATSAPP_LEASE_TTL=TTL,
        WHATSAPP_RECONCILE_INTERVAL=INTERVAL,
        WHATSAPP_BACKOFF_BASE=1,
        WHATSAPP_BACKOFF_CAP=4,
        WHATSAPP_SHUTDOWN_GRACE=8,
        WHATSAPP_LOST_TASK_AFTER=4,
        WHATSAPP_EXTRA_INBOUND_HANDLERS=json.dumps(CHAOS_HANDLER),
        AIADMIN_CHAOS_CALLS=calls,
        AIADMIN_CHAOS_HANDLER_SECONDS=0.05,
        Q_WORKERS=3,
    )
    companies = [tenants.a, tenants.b] + [
        Company.objects.create(name=f"Chaos {i}", slug=f"chaos-{i}")
        for i in range(COMPANIES - 2)
    ]
    ids = [c.pk for c in companies]
    for company in companies:
        company.inbound_handler = "chaos_record"
        company.save(update_fields=["inbound_handler"])
        start_session(company.pk, actor="e2e test")
    flow = Flow(sim, ids)
    timeline = []
    try:
        app.start_workers("w1")
        app.start_qcluster("jobs")
        pair_companies(sim, ids, app)
        flow.start()
        started = time.monotonic()

        def note(what):
            timeline.append(f"{time.monotonic() - started:5.1f}s {what}")

        # 1. Rebalance: w2 starts, w1 hands some of its sessions over while messages flow.
        time.sleep(2)
        app.start_workers("w2")
        note("w2 started")
        wait_for(
            lambda: app.ids["w2"] in owners(ids).values(), 30, "w2 to take over some sessions"
        )
        note(f"rebalanced: {Counter(owners(ids).values())}")
        # 2. SIGKILL of the job cluster while a job runs; a new one starts.
        wait_for(running_job, 30, "a job to run")
        app.procs["jobs"].send_signal(signal.SIGKILL)
        app.procs["jobs"].wait(timeout=10)
        note("job cluster SIGKILLed")
        time.sleep(1)
        app.start_qcluster("jobs")
        note("job cluster restarted")
        # 3. SIGKILL of the worker owning most sessions; it comes back.
        time.sleep(3)
        by_owner = Counter(owners(ids).values())
        name = max(("w1", "w2"), key=lambda n: by_owner.get(app.ids[n], 0))
        app.procs[name].send_signal(signal.SIGKILL)
        app.procs[name].wait(timeout=10)
        note(f"{name} SIGKILLed (owned {by_owner.get(app.ids[name], 0)})")
        time.sleep(1)
        app.start_workers(name)
        note(f"{name} restarted")
        time.sleep(3)
        flow.stop()
        note(f"flow stopped after {len(flow.sent)} messages")
        assert not flow.errors, flow.errors
        total = len(flow.sent)
        wait_for(
            lambda: (
                ProcessingJob.objects.filter(status=ProcessingJob.Status.SUCCEEDED).count()
                >= total
                and not OutboundMessage.objects.filter(status__in=["queued", "sending"]).exists()
            ),
            90,
            "every message processed and every reply settled",
            interval=0.5,
        )
        note("all answered")
        time.sleep(1.5)  # a late duplicate would show up now
        at_phones = [s["text"] for s in sim.sends()]
    except AssertionError as exc:
        flow.stop()
        states = Counter(ProcessingJob.objects.values_list("status", flat=True))
        sends = Counter(OutboundMessage.objects.values_list("status", flat=True))
        raise AssertionError(
            f"{exc}\n{timeline}\njobs {dict(states)}, outbound {dict(sends)}\n{app.logs()}"
        ) from None
    finally:
        flow.stop()
        app.stop_all()
        sim.stop()
    print("\n".join(timeline))

    # Stored once.
    total = len(flow.sent)
    assert total >= 60, timeline
    names = list(InboundMessage.objects.values_list("push_name", flat=True))
    assert sorted(names) == sorted(name for _, name in flow.sent)
    # Processed once, or again only knowing that the previous attempt died.
    jobs = dict(ProcessingJob.objects.values_list("message__wa_message_id", "attempts"))
    assert len(jobs) == total
    assert set(ProcessingJob.objects.values_list("status", flat=True)) == {"succeeded"}
    runs = defaultdict(list)
    for line in calls.read_text().splitlines():
        wa_id, number, previous = line.split()
        runs[wa_id].append((int(number), previous))
    assert set(runs) == set(jobs)
    for wa_id, seen in runs.items():
        numbers = [n for n, _ in seen]
        assert len(set(numbers)) == len(numbers), (wa_id, seen)  # no attempt run twice
        assert max(numbers) == jobs[wa_id], (wa_id, seen)
        for number, previous in seen:
            assert previous == ("-" if number == 1 else "died"), (wa_id, seen)
    retried = sorted(wa_id for wa_id, n in jobs.items() if n > 1)
    # Answered exactly once, at the phone: the simulator's sends per inbound message id.
    received = Counter(text for text in at_phones if text.startswith("re "))
    assert received == Counter({f"re {wa_id}": 1 for wa_id in jobs}), {
        t: n for t, n in received.items() if n != 1
    }
    statuses = Counter(OutboundMessage.objects.values_list("status", flat=True))
    assert set(statuses) <= {"sent", "delivered", "read"}, statuses
    assert sum(statuses.values()) == total
    assert ConnectionEvent.objects.filter(reason="rebalancing").exists()
    print(f"{total} messages, {len(retried)} retried knowingly, outbound {dict(statuses)}")
