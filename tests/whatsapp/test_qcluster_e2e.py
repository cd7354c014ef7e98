"""Jobs run on a real `manage.py runcluster` (django-q2's cluster; both passes: SQLite + ORM broker,
PostgreSQL + Redis broker), started with the test database in its environment."""

import os
import signal

import pytest
from django_q.models import Task

from tests.e2e_processes import AppProcesses, wait_for
from tests.whatsapp.job_queue import purge
from whatsapp.models import AutoReplyRule, OutboundMessage, ProcessingJob, WhatsAppSession
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.processing import claimant_identity
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]


@pytest.fixture(autouse=True)
def empty_queue():
    purge()  # nothing left on the Redis list by other tests
    yield
    purge()


def receive(company, i, text):
    phone = f"4917012345{i:02d}@s.whatsapp.net"
    msg = normalize_message(message_event(f"3EB0E2E{i:04d}", phone, text, push_name=f"P{i}"))
    return record_inbound_message(company.pk, msg)


def succeeded(company):
    return ProcessingJob.objects.filter(
        message__company=company, status=ProcessingJob.Status.SUCCEEDED
    ).count()


def test_a_real_qcluster_runs_every_job_once_and_queues_the_auto_replies(tenants, tmp_path):
    company = tenants.a
    WhatsAppSession.objects.create(company=company)
    AutoReplyRule.objects.create(
        company=company,
        match="contains",
        keyword="price",
        reply_text="Hi {name}, 30 EUR.",
        priority=1,
    )
    AutoReplyRule.objects.create(
        company=company, match="any", reply_text="Thanks {name}!", priority=9
    )
    # Stored and enqueued before the cluster exists (it must pick up the backlog)...
    for i in range(10):
        assert receive(company, i, "price?" if i % 2 else "hello").created
        assert receive(company, i, "again").status == "duplicate"

    app = AppProcesses(tmp_path)
    cluster = app.start_qcluster()
    try:
        wait_for(lambda: succeeded(company) == 10, 120, "the backlog of 10 jobs to succeed")
        # ...and messages arriving while it runs.
        for i in range(10, 15):
            assert receive(company, i, "price please").created
        wait_for(lambda: succeeded(company) == 15, 90, "the 5 live jobs to succeed")
    except AssertionError:
        raise AssertionError(app.logs()) from None
    finally:
        code = app.stop("qcluster", timeout=60)

    assert code == 0, app.logs()
    assert cluster.poll() == 0
    jobs = ProcessingJob.objects.filter(message__company=company)
    assert jobs.count() == 15
    assert set(jobs.values_list("attempts", flat=True)) == {1}
    assert set(jobs.values_list("enqueue_count", flat=True)) == {1}
    # The cluster's worker processes ran them (each claim records its process),
    # and django-q2 stored no success rows of its own (save_limit -1: our job
    # rows are the record).
    claimants = {claimant_identity(c) for c in jobs.values_list("claimed_by", flat=True)}
    assert claimants and all(c.pid not in (0, os.getpid()) for c in claimants)
    assert not Task.objects.filter(success=True).exists()

    replies = {o.in_reply_to.wa_message_id: o for o in OutboundMessage.objects.all()}
    assert len(replies) == 15
    for i in range(15):
        out = replies[f"3EB0E2E{i:04d}"]
        assert out.to_jid == f"4917012345{i:02d}@s.whatsapp.net"
        assert out.status == OutboundMessage.Status.QUEUED
        expected = f"Hi P{i}, 30 EUR." if (i % 2 or i >= 10) else f"Thanks P{i}!"
        assert out.text == expected


def test_a_qcluster_stops_cleanly_on_sigint_too(tenants, tmp_path):
    company = tenants.a
    WhatsAppSession.objects.create(company=company)
    app = AppProcesses(tmp_path)
    cluster = app.start_qcluster()
    try:
        assert receive(company, 1, "hi").created
        wait_for(lambda: succeeded(company) == 1, 90, "the job to succeed")
    except AssertionError:
        app.stop("qcluster")
        raise AssertionError(app.logs()) from None
    cluster.send_signal(signal.SIGINT)
    assert cluster.wait(timeout=60) == 0, app.logs()
    app.stop("qcluster")  # reaps anything left in its process group
