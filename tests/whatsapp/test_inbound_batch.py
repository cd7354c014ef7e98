"""Group commit: the inbound messages waiting in a worker share one transaction.

Each message keeps its own guarantees (one row, one job, one queued task under
the unique constraint; duplicates counted), its own outcome, and its own
failure: a message the database refuses never costs the others their row.
Real commits, both passes (SQLite + ORM broker, PostgreSQL + Redis).
"""

import asyncio
import dataclasses
import logging

import pytest
import redis
from django.db import connection
from django_q.brokers.redis_broker import Redis

from companies.models import Company
from tests.whatsapp.job_queue import inbound_tasks, purge
from whatsapp.models import InboundMessage, ProcessingJob, WhatsAppSession
from whatsapp.services.inbound import InboundOutcome, UnknownCompany, record_inbound_messages
from whatsapp.services.jobs import sweep_unqueued_jobs
from whatsapp.transport import base
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message
from whatsapp.worker.supervisor import SessionSupervisor

from .test_jobs import redis_pass
from .test_worker_leases import running_companies
from .worker_doubles import ScriptedTransport, fast_settings, run, until, wait_until

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(autouse=True)
def empty_queue():
    purge()
    yield
    purge()


def normalized(message_id, phone="491701234567", text="hello"):
    return normalize_message(message_event(message_id, f"{phone}@s.whatsapp.net", text))


def companies(count=2):
    return [
        WhatsAppSession.objects.create(
            company=Company.objects.create(name=f"Batch {i}", slug=f"batch-{i}")
        ).company
        for i in range(count)
    ]


def test_one_batch_records_each_message_once_with_its_own_outcome():
    a, b = companies()
    own = normalize_message(
        message_event("3EB0OWN", "491701234567@s.whatsapp.net", "mine", from_me=True)
    )
    results = record_inbound_messages(
        [
            (a.pk, normalized("3EB0A1")),
            (a.pk, normalized("3EB0A1")),  # the same message twice in one batch
            (b.pk, normalized("3EB0A1")),  # same id, another company: its own message
            (999_999, normalized("3EB0LOST")),
            ("not-an-id", normalized("3EB0LOST")),
            (a.pk, "not a message"),
            (a.pk, own),
        ]
    )
    created, duplicate, other, unknown, garbage, wrong_type, by_person = results
    assert created.status == InboundOutcome.CREATED and other.status == InboundOutcome.CREATED
    assert duplicate.status == InboundOutcome.DUPLICATE
    assert isinstance(unknown, UnknownCompany) and isinstance(garbage, UnknownCompany)
    assert isinstance(wrong_type, TypeError)
    assert by_person.status == InboundOutcome.BY_PERSON  # stored as outbound, no job

    rows = InboundMessage.objects.order_by("company_id")
    assert list(rows.values_list("company_id", "wa_message_id", "redeliveries")) == [
        (a.pk, "3EB0A1", 1),
        (b.pk, "3EB0A1", 0),
    ]
    jobs = ProcessingJob.objects.all()
    assert len(jobs) == 2
    # Queued once each, with the task id the queue holds (Redis: pushed after
    # the batch's commit and marked by one UPDATE for the whole batch).
    assert {(j.status, j.enqueue_count) for j in jobs} == {(ProcessingJob.Status.QUEUED, 1)}
    assert len({j.task_id for j in jobs}) == 2 and all(j.task_id for j in jobs)
    assert sorted(inbound_tasks()) == sorted(
        ("whatsapp.tasks.process_message_job", (pk,))
        for pk in (created.message_pk, other.message_pk)
    )
    counters = dict(WhatsAppSession.objects.values_list("company_id", "duplicates_blocked"))
    assert counters == {a.pk: 1, b.pk: 0}


def test_a_message_the_database_refuses_does_not_cost_the_others_their_row(caplog):
    (a,) = companies(1)
    # Refused by the database (or its driver), differently on each: SQLite cannot
    # bind an integer this large; PostgreSQL refuses an id longer than its column.
    if connection.vendor == "sqlite":
        poison = (2**70, normalized("3EB0HUGE"))
    else:
        poison = (a.pk, dataclasses.replace(normalized("3EB0LONG"), message_id="3EB0" * 40))
    items = [(a.pk, normalized("3EB0GOOD1")), poison, (a.pk, normalized("3EB0GOOD2"))]

    with caplog.at_level(logging.WARNING, logger="whatsapp.services.inbound"):
        first, refused, second = record_inbound_messages(items)

    assert "recording them one by one" in caplog.text  # the batch was rolled back
    assert isinstance(refused, Exception)
    assert first.status == second.status == InboundOutcome.CREATED
    assert sorted(InboundMessage.objects.values_list("wa_message_id", flat=True)) == [
        "3EB0GOOD1",
        "3EB0GOOD2",
    ]
    assert ProcessingJob.objects.count() == 2 and len(inbound_tasks()) == 2
    assert WhatsAppSession.objects.get(company=a).messages_in == 2  # not counted twice


def test_a_worker_commits_messages_that_arrive_together_in_one_transaction(settings, tmp_path):
    # Leases and connects get room: this test is about the group commit, not
    # hand-overs. With the 3 s lease of the fast settings, a loaded machine
    # (renewals wait on the one database thread behind a group commit) could
    # fence a session; a delivery to its stopped client is then not
    # acknowledged (WhatsApp sends it again to the next client), which the
    # scripted client, not WhatsApp, drops: 32 of 40 once.
    fast_settings(settings, tmp_path, LEASE_TTL=60.0, CONNECT_TIMEOUT=60.0)
    sessions = running_companies(5, "batch")
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-batch", transport=transport)
    events = [
        (
            session.company_id,
            message_event(f"3EB0B{session.pk}X{n}", f"4917000{n:05d}@s.whatsapp.net", f"hi {n}"),
        )
        for session in sessions
        for n in range(8)
    ]

    def live_clients():
        """company -> the client its session holds now, once all five are connected."""
        held = {
            company_id: ms.client
            for company_id, ms in sup.sessions.items()
            if ms.client is not None and ms.client.live and ms.client.logged_in
        }
        return held if len(held) == 5 else None

    async def scenario():
        await sup.start()
        await wait_until(
            lambda: WhatsAppSession.objects.filter(state="connected").count() == 5,
            timeout=60,
            what="5 connected",
        )
        await until(live_clients, "5 live clients held by their sessions", timeout=60)
        client = live_clients()
        deliveries = [
            client[company_id].emit(base.InboundMessage(event=event))
            for company_id, event in events + events[:10]  # ten redelivered at once
        ]
        await asyncio.gather(*deliveries)
        await sup.shutdown("test over")

    run(scenario, timeout=150)
    # One client per session, none replaced meanwhile: every delivery met the
    # live client its session held (a stopped client's would not be acknowledged).
    assert len(transport.clients) == 5, transport.log
    assert InboundMessage.objects.count() == 40
    assert ProcessingJob.objects.count() == 40
    assert sum(WhatsAppSession.objects.values_list("duplicates_blocked", flat=True)) == 10
    assert sup.inbound.recorded == 50
    assert sup.inbound.batches < 10  # 50 deliveries, a handful of commits
    assert sup.inbound.largest > 1


def test_a_broker_failing_mid_batch_leaves_the_rest_to_the_sweeper(monkeypatch):
    redis_pass()
    (a,) = companies(1)
    real_enqueue = Redis.enqueue
    pushes = []

    def fails_after_one(self, package):
        pushes.append(package)
        if len(pushes) > 1:
            raise redis.ConnectionError("Error 111 connecting to redis: Connection refused")
        return real_enqueue(self, package)

    monkeypatch.setattr(Redis, "enqueue", fails_after_one)
    results = record_inbound_messages([(a.pk, normalized(f"3EB0MID{i}")) for i in range(3)])
    assert all(r.status == InboundOutcome.CREATED for r in results)  # stored: safe
    assert len(pushes) == 2  # the second push failed; the third was not tried
    status = dict(ProcessingJob.objects.values_list("message__wa_message_id", "status"))
    assert status == {"3EB0MID0": "queued", "3EB0MID1": "pending", "3EB0MID2": "pending"}

    monkeypatch.setattr(Redis, "enqueue", real_enqueue)
    assert sweep_unqueued_jobs(older_than=0) == 2
    assert len(inbound_tasks()) == 3
    assert {(j.status, j.enqueue_count) for j in ProcessingJob.objects.all()} == {
        (ProcessingJob.Status.QUEUED, 1)
    }


# --- two group commits at once (PostgreSQL row locks) ------------------------------
class Interleave:
    """Run two batches on two threads, each pausing after its first statement
    until the other has run its first statement too -- or is blocked by a lock
    (seen in pg_stat_activity from a third connection). That is the worst
    interleaving for lock order, made deterministic; errors of every statement
    are recorded, also those the batch's fallback then hides."""

    def __init__(self):
        import threading

        self.first_done = {name: threading.Event() for name in ("a", "b")}
        self.pids = {}
        self.errors = []
        self.results = {}

    def _blocked(self, name):
        import psycopg

        pid = self.pids.get(name)
        if pid is None:
            return False
        settings_dict = connection.settings_dict
        with psycopg.connect(
            host=settings_dict["HOST"] or "127.0.0.1",
            port=settings_dict["PORT"] or 5432,
            user=settings_dict["USER"] or "postgres",
            password=settings_dict["PASSWORD"] or None,
            dbname=settings_dict["NAME"],
            autocommit=True,
        ) as monitor:
            row = monitor.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()
        return row is not None and row[0] == "Lock"

    def wrapper(self, name):
        import time

        other = "b" if name == "a" else "a"

        def wrap(execute, sql, params, many, context):
            self.pids.setdefault(name, context["connection"].connection.info.backend_pid)
            try:
                return execute(sql, params, many, context)
            except Exception as exc:
                self.errors.append((name, repr(exc)))
                raise
            finally:
                if not self.first_done[name].is_set():
                    self.first_done[name].set()
                    deadline = time.monotonic() + 30
                    while not self.first_done[other].is_set() and not self._blocked(other):
                        if time.monotonic() > deadline:
                            break
                        time.sleep(0.02)

        return wrap

    def run(self, name, items):
        from django.db import connections

        try:
            with connection.execute_wrapper(self.wrapper(name)):
                self.results[name] = record_inbound_messages(items)
        finally:
            connections.close_all()

    def both(self, a_items, b_items):
        import threading

        threads = [
            threading.Thread(target=self.run, args=("a", a_items)),
            threading.Thread(target=self.run, args=("b", b_items)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        return self


@pytest.mark.postgres
def test_two_batches_for_the_same_sessions_in_opposite_orders_never_deadlock():
    if connection.vendor != "postgresql":
        pytest.skip("row locks of concurrent transactions: PostgreSQL pass")
    first, second = companies()
    run = Interleave().both(
        [(first.pk, normalized("3EB0A1")), (second.pk, normalized("3EB0A2"))],
        [(second.pk, normalized("3EB0B1")), (first.pk, normalized("3EB0B2"))],
    )
    assert run.errors == []  # before the fix: DeadlockDetected, a 1 s stall, then one by one
    assert [o.status for o in run.results["a"] + run.results["b"]] == ["created"] * 4
    assert InboundMessage.objects.count() == 4 and ProcessingJob.objects.count() == 4
    counts = WhatsAppSession.objects.values_list("messages_in", flat=True)
    assert sorted(counts) == [2, 2]


@pytest.mark.postgres
def test_two_batches_redelivering_the_same_messages_in_opposite_orders_never_deadlock():
    if connection.vendor != "postgresql":
        pytest.skip("row locks of concurrent transactions: PostgreSQL pass")
    first, second = companies()
    run = Interleave().both(
        [(first.pk, normalized("3EB0X1")), (second.pk, normalized("3EB0X2"))],
        [(second.pk, normalized("3EB0X2")), (first.pk, normalized("3EB0X1"))],
    )
    assert run.errors == []
    statuses = sorted(o.status for o in run.results["a"] + run.results["b"])
    assert statuses == ["created", "created", "duplicate", "duplicate"]
    assert InboundMessage.objects.count() == 2 and ProcessingJob.objects.count() == 2
    assert sorted(WhatsAppSession.objects.values_list("duplicates_blocked", flat=True)) == [1, 1]
