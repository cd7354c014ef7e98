"""Processing jobs: never zero, never two; each runs its handler once.

* Redis broker (PostgreSQL pass): the enqueue runs after commit. A crash
  between commit and enqueue is simulated by Redis refusing the push at
  django-q2's broker boundary; the sweeper then enqueues the job exactly once.
* ORM broker (embedded pass): the enqueue is a row in the message's own
  transaction, so a failing enqueue takes the message with it.
"""

import subprocess
import threading
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.brokers.redis_broker import Redis
from django_q.exceptions import TimeoutException
from django_q.signing import SignedPackage
from django_q.tasks import async_task

from tests.whatsapp.job_queue import inbound_tasks, purge
from whatsapp.handlers import auto_reply
from whatsapp.models import (
    AutoReplyRule,
    InboundMessage,
    OutboundMessage,
    ProcessingJob,
    WhatsAppSession,
)
from whatsapp.services import jobs as jobs_module
from whatsapp.services import local_processes
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.jobs import broker_is_transactional, sweep_unqueued_jobs
from whatsapp.services.outbound import queue_outbound_message
from whatsapp.services.processing import (
    HandlerResult,
    claimant,
    reply_idempotency_key,
    run_processing_job,
)
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = "491701234567@s.whatsapp.net"
GROUP = "120363025246125888@g.us"
TASK = "whatsapp.tasks.process_message_job"
calls = []  # what the test handlers below were called with


def redis_pass():
    if broker_is_transactional():
        pytest.skip("Redis broker path: runs in the PostgreSQL + Redis pass")


def orm_pass():
    if not broker_is_transactional():
        pytest.skip("ORM broker path: runs in the embedded (SQLite) pass")


@pytest.fixture(autouse=True)
def clean_queue():
    purge()
    calls.clear()
    yield
    purge()


@pytest.fixture
def session(company):
    return WhatsAppSession.objects.create(company=company)


def receive(company, message_id="3EB0JOB1", text="hello", chat=PHONE, **kw):
    msg = normalize_message(message_event(message_id, chat, text, push_name="Anna", **kw))
    return record_inbound_message(company.pk, msg)


def job_of(message_id="3EB0JOB1"):
    return ProcessingJob.objects.get(message__wa_message_id=message_id)


@pytest.fixture(autouse=True)
def test_handlers(settings):
    """The handlers below, registered under their function names."""
    settings.WHATSAPP_INBOUND_HANDLERS = {
        **settings.WHATSAPP_INBOUND_HANDLERS,
        **{
            name: {"path": f"tests.whatsapp.test_jobs.{name}", "label": name}
            for name in (
                "recording_handler",
                "failing_handler",
                "attempt_aware_handler",
                "reply_then_crash_handler",
                "different_reply_on_retry_handler",
                "overtaken_handler",
                "timing_out_handler",
            )
        },
    }


def use_handler(company, name):
    company.inbound_handler = name
    company.save(update_fields=["inbound_handler"])


def recording_handler(message):
    calls.append(message.wa_message_id)
    return HandlerResult(reply_text=f"got {message.text}", note="recorded")


def failing_handler(message):
    calls.append(message.wa_message_id)
    raise RuntimeError("the AI backend answered 503")


def redis_down(*args, **kwargs):
    raise redis.ConnectionError("Error 111 connecting to redis: Connection refused")


def orm_enqueue_fails(*args, **kwargs):
    raise RuntimeError("the queue table is gone")


# --- crash between commit and enqueue ----------------------------------------------
def test_a_crash_between_commit_and_enqueue_still_yields_exactly_one_job(
    company, session, monkeypatch
):
    redis_pass()
    with monkeypatch.context() as m:
        m.setattr(Redis, "enqueue", redis_down)
        assert receive(company).created  # committed: the message is safe
    job = job_of()
    assert job.status == ProcessingJob.Status.PENDING
    assert inbound_tasks() == []
    assert sweep_unqueued_jobs() == 0  # too fresh: its own enqueue may still be on its way
    assert sweep_unqueued_jobs(older_than=0) == 1
    assert inbound_tasks() == [(TASK, (job.message_id,))]
    job.refresh_from_db()
    assert (job.status, job.enqueue_count) == (ProcessingJob.Status.QUEUED, 1)
    assert job.task_id
    # Sweeping again, and redelivering the message, change nothing.
    assert sweep_unqueued_jobs(older_than=0) == 0
    assert receive(company).status == "duplicate"
    assert inbound_tasks() == [(TASK, (job.message_id,))]
    assert ProcessingJob.objects.count() == 1


def test_a_sweep_while_redis_is_still_down_keeps_the_job_for_the_next_sweep(
    company, session, monkeypatch
):
    redis_pass()
    monkeypatch.setattr(Redis, "enqueue", redis_down)
    receive(company)
    with pytest.raises(redis.ConnectionError):
        sweep_unqueued_jobs(older_than=0)
    assert job_of().status == ProcessingJob.Status.PENDING
    monkeypatch.undo()
    assert sweep_unqueued_jobs(older_than=0) == 1
    assert len(inbound_tasks()) == 1


def test_with_the_orm_broker_a_failing_enqueue_rolls_back_the_message(
    company, session, monkeypatch
):
    orm_pass()
    # The task package as our job module builds it (on SQLite it is pushed
    # through the broker, on PostgreSQL written by the message's own statement).
    monkeypatch.setattr(jobs_module, "task_package", orm_enqueue_fails)
    with pytest.raises(RuntimeError, match="queue table is gone"):
        receive(company)
    assert InboundMessage.objects.count() == 0
    assert ProcessingJob.objects.count() == 0
    assert WhatsAppSession.objects.get(pk=session.pk).messages_in == 0
    monkeypatch.undo()
    assert receive(company).created  # the redelivery is a new message, not a duplicate
    assert inbound_tasks() == [(TASK, (job_of().message_id,))]


def test_with_the_orm_broker_the_task_is_part_of_the_message_transaction(company, session):
    orm_pass()
    with pytest.raises(RuntimeError, match="caller failed"), transaction.atomic():
        receive(company)
        assert len(inbound_tasks()) == 1
        raise RuntimeError("the caller failed after the message was recorded")
    assert InboundMessage.objects.count() == 0
    assert inbound_tasks() == []


# --- the sweeper -----------------------------------------------------------------
def test_the_sweeper_leaves_queued_and_finished_jobs_alone(company, session):
    receive(company, "3EB0A")
    receive(company, "3EB0B")
    use_handler(company, "recording_handler")
    run_processing_job(job_of("3EB0B").pk)
    before = inbound_tasks()
    assert len(before) == 2
    assert sweep_unqueued_jobs(older_than=0) == 0
    assert inbound_tasks() == before


def test_concurrent_sweepers_enqueue_each_left_over_job_once(company, session):
    for i in range(20):
        receive(company, f"3EB0S{i:02d}")
    purge()  # as if every enqueue had been lost
    ProcessingJob.objects.update(status=ProcessingJob.Status.PENDING, enqueue_count=0)
    messages = sorted(ProcessingJob.objects.values_list("message_id", flat=True))
    barrier = threading.Barrier(4)
    counts, errors = [], []

    def sweep():
        try:
            barrier.wait(timeout=30)
            counts.append(sweep_unqueued_jobs(older_than=0))
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sum(counts) == 20
    assert sorted(args[0] for _, args in inbound_tasks()) == messages
    assert set(ProcessingJob.objects.values_list("enqueue_count", flat=True)) == {1}


def test_the_sweeper_requeues_a_job_whose_cluster_died_mid_run(company, session):
    receive(company)
    purge()
    job = job_of()
    long_ago = timezone.now() - timedelta(seconds=settings.Q_CLUSTER["timeout"] + 60)
    ProcessingJob.objects.filter(pk=job.pk).update(
        status=ProcessingJob.Status.RUNNING, started_at=long_ago, attempts=1
    )
    assert sweep_unqueued_jobs() == 1
    assert inbound_tasks() == [(TASK, (job.message_id,))]
    use_handler(company, "recording_handler")
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert calls == ["3EB0JOB1"]


def test_a_job_running_now_is_not_swept(company, session):
    receive(company)
    purge()
    ProcessingJob.objects.update(status=ProcessingJob.Status.RUNNING, started_at=timezone.now())
    assert sweep_unqueued_jobs(older_than=0) == 0
    assert inbound_tasks() == []


# --- running jobs ------------------------------------------------------------------
def test_rerunning_a_job_of_an_already_processed_message_does_nothing(company, session):
    use_handler(company, "recording_handler")
    receive(company, text="price?")
    job = job_of()
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert run_processing_job(job.pk) == "skipped"
    assert calls == ["3EB0JOB1"]
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result) == (ProcessingJob.Status.SUCCEEDED, 1, "recorded")
    assert OutboundMessage.objects.get().text == "got price?"


def test_a_handler_error_is_recorded_and_retried_up_to_the_maximum_attempts(company, session):
    use_handler(company, "failing_handler")
    receive(company)
    job = job_of()
    purge()
    max_attempts = settings.WHATSAPP["JOB_MAX_ATTEMPTS"]
    assert max_attempts >= 2
    for attempt in range(1, max_attempts + 1):
        status = run_processing_job(job.pk)
        job.refresh_from_db()
        assert job.attempts == attempt
        assert "RuntimeError: the AI backend answered 503" in job.error
        assert job.handler == "failing_handler"
        if attempt < max_attempts:
            # Back to pending: the sweeper re-enqueues it (its retry delay).
            assert status == ProcessingJob.Status.PENDING == job.status
            assert sweep_unqueued_jobs(older_than=0) == 1
            assert inbound_tasks()[-1] == (TASK, (job.message_id,))
        else:
            assert status == ProcessingJob.Status.FAILED == job.status
    assert calls == ["3EB0JOB1"] * max_attempts
    assert sweep_unqueued_jobs(older_than=0) == 0  # a failed job stays failed
    assert run_processing_job(job.pk) == "skipped"
    assert OutboundMessage.objects.count() == 0


def test_a_permanent_handler_error_fails_the_job_at_once(company, session):
    company.inbound_handler = "no_such_handler"
    company.save(update_fields=["inbound_handler"])
    receive(company)
    purge()
    assert run_processing_job(job_of().pk) == ProcessingJob.Status.FAILED
    job = job_of()
    assert "inbound handler 'no_such_handler' is not registered" in job.error
    assert (job.attempts, job.finished_at is not None) == (1, True)
    assert sweep_unqueued_jobs(older_than=0) == 0
    assert inbound_tasks() == []


# --- the auto-reply handler ----------------------------------------------------------
def rule(company, match, keyword, reply, priority=100, **kw):
    return AutoReplyRule.objects.create(
        company=company, match=match, keyword=keyword, reply_text=reply, priority=priority, **kw
    )


@pytest.fixture
def rules(tenants):
    a = tenants.a
    rule(a, "contains", "price", "Hi {name}, a cut is 30 EUR.", priority=10)
    rule(a, "exact", "hours", "Open 9-18, {name}.", priority=20)
    rule(a, "contains", "price", "never used: lower priority", priority=50)
    rule(a, "contains", "group", "Hello group!", priority=30, reply_in_groups=True)
    rule(a, "contains", "off", "inactive rule", priority=1, is_active=False)
    rule(a, "any", "", "Thanks {name}, we will answer soon.", priority=1000)
    rule(tenants.b, "any", "", "company B's fallback", priority=1)
    WhatsAppSession.objects.create(company=a)
    return a


@pytest.mark.parametrize(
    "text,reply",
    [
        ("What's the PRICE of a cut?", "Hi Anna, a cut is 30 EUR."),
        ("  Hours ", "Open 9-18, Anna."),
        ("opening hours please", "Thanks Anna, we will answer soon."),  # not exact
        ("turn it off", "Thanks Anna, we will answer soon."),  # inactive rule skipped
    ],
)
def test_the_auto_reply_handler_queues_exactly_one_reply_from_the_first_matching_rule(
    rules, text, reply
):
    receive(rules, text=text)
    job = job_of()
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert run_processing_job(job.pk) == "skipped"
    out = OutboundMessage.objects.get()
    assert (out.text, out.to_jid, out.to_phone) == (reply, PHONE, "+491701234567")
    assert out.company_id == rules.pk
    assert out.in_reply_to.wa_message_id == "3EB0JOB1"
    assert out.status == OutboundMessage.Status.QUEUED
    assert job_of().result.startswith("rule ")


def test_in_groups_only_rules_meant_for_groups_answer_and_to_the_group(rules):
    receive(rules, "3EB0G1", "price?", chat=GROUP, sender=PHONE)
    receive(rules, "3EB0G2", "hello group", chat=GROUP, sender=PHONE)
    for mid in ("3EB0G1", "3EB0G2"):
        run_processing_job(job_of(mid).pk)
    assert job_of("3EB0G1").result == "no rule matched"
    out = OutboundMessage.objects.get()
    assert (out.text, out.to_jid) == ("Hello group!", GROUP)


def test_without_a_matching_rule_nothing_is_queued(tenants):
    WhatsAppSession.objects.create(company=tenants.a)
    rule(tenants.a, "exact", "yes", "ok")
    receive(tenants.a, text="no")
    assert run_processing_job(job_of().pk) == ProcessingJob.Status.SUCCEEDED
    assert job_of().result == "no rule matched"
    assert OutboundMessage.objects.count() == 0


def test_a_push_name_missing_from_the_event_is_greeted_as_client(rules):
    msg = normalize_message(message_event("3EB0NONAME", PHONE, "price"))
    record_inbound_message(rules.pk, msg)
    assert auto_reply(InboundMessage.objects.get()).reply_text == "Hi Client, a cut is 30 EUR."


def test_the_task_entry_points_run_the_job_of_a_message_or_a_job_id(company, session):
    from whatsapp import tasks

    use_handler(company, "recording_handler")
    receive(company, "3EB0T1")
    receive(company, "3EB0T2")
    assert tasks.process_message_job(job_of("3EB0T1").message_id) == ProcessingJob.Status.SUCCEEDED
    assert tasks.process_inbound_message(job_of("3EB0T2").pk) == ProcessingJob.Status.SUCCEEDED
    assert tasks.process_message_job(job_of("3EB0T1").message_id) == "skipped"
    assert tasks.process_message_job(10**9) == "skipped"  # no such message: nothing to run
    assert calls == ["3EB0T1", "3EB0T2"]


def test_the_orm_broker_enqueue_writes_a_task_django_q_dequeues(company, session):
    orm_pass()
    broker = get_broker()
    receive(company)
    [(package_id, payload)] = broker.dequeue()
    task = SignedPackage.loads(payload)
    assert (task["func"], task["args"], task["group"]) == (TASK, (job_of().message_id,), "inbound")
    assert task["id"] == job_of().task_id
    assert broker.dequeue() is None  # locked while being worked on
    broker.acknowledge(package_id)
    assert inbound_tasks() == []


def test_with_tasks_run_inline_the_job_runs_once_after_the_message_commits(
    company, session, monkeypatch
):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)  # Q_CLUSTER["sync"] = True
    use_handler(company, "recording_handler")
    assert receive(company, text="inline").created
    assert calls == ["3EB0JOB1"]
    assert job_of().status == ProcessingJob.Status.SUCCEEDED
    assert OutboundMessage.objects.get().text == "got inline"


class _KeepPackage:
    """A broker for async_task that keeps the package instead of pushing it."""

    list_key = "keep"
    package = None

    def enqueue(self, package):
        self.package = package


def test_the_task_package_is_exactly_what_django_q2s_async_task_builds():
    """The inbound path builds django-q2's package itself (cheaper than
    async_task); an upgrade of django-q2 that changes the package fails here."""
    keep = _KeepPackage()
    their_id = async_task(TASK, 42, group="inbound", task_name="inbound-42", broker=keep)
    theirs = SignedPackage.loads(keep.package)
    our_id, package = jobs_module.task_package(42)
    ours = SignedPackage.loads(package)

    assert ours.keys() == theirs.keys()
    for key in theirs.keys() - {"id", "started"}:
        assert ours[key] == theirs[key], key
    assert ours["id"] == our_id and len(our_id) == len(their_id) == 32
    assert int(our_id, 16) != int(their_id, 16)
    assert abs(ours["started"] - theirs["started"]) < timedelta(seconds=5)


# --- lost tasks, dead attempts, retries that know (issue #15) -------------------------
attempts_seen = []  # (message id, attempt number, previous outcome) per handler call


def attempt_aware_handler(message, attempt):
    attempts_seen.append((message.wa_message_id, attempt.number, attempt.previous_outcome))
    return HandlerResult(reply_text=f"got {message.text}", note=f"attempt {attempt.number}")


def reply_then_crash_handler(message, attempt):
    """Queues its reply itself (a side effect), then fails on the first attempt."""
    attempts_seen.append((message.wa_message_id, attempt.number, attempt.previous_outcome))
    queue_outbound_message(
        message.company_id,
        message.reply_jid,
        f"answer to {message.text}",
        idempotency_key=reply_idempotency_key(message),
        in_reply_to=message,
    )
    if attempt.number == 1:
        raise RuntimeError("crashed after queueing the reply")
    return HandlerResult(reply_text=f"answer to {message.text}")


def different_reply_on_retry_handler(message, attempt):
    if attempt.number == 1:
        queue_outbound_message(
            message.company_id,
            message.reply_jid,
            "first answer",
            idempotency_key=reply_idempotency_key(message),
            in_reply_to=message,
        )
        raise RuntimeError("crashed after queueing the reply")
    return HandlerResult(reply_text="a different second answer")


def overtaken_handler(message):
    """While it runs, its lease expires and another attempt takes the job."""
    ProcessingJob.objects.filter(message=message).update(attempts=F("attempts") + 1)
    return HandlerResult(reply_text="late reply")


def timing_out_handler(message):
    raise TimeoutException("Task exceeded maximum timeout value (60 seconds)")


@pytest.fixture(autouse=True)
def clear_attempts():
    attempts_seen.clear()


def lost_after():
    return timedelta(seconds=settings.WHATSAPP["LOST_TASK_AFTER"] + 1)


def test_a_task_a_dead_cluster_popped_is_pushed_again_once_it_is_provably_lost(company, session):
    """Seen on the Redis broker: the cluster popped the task (no ack) and was
    SIGKILLed; the job stayed queued forever and was on no list."""
    redis_pass()
    use_handler(company, "attempt_aware_handler")
    receive(company)
    job = job_of()
    assert get_broker().dequeue()  # the cluster's pusher took it... and died
    assert inbound_tasks() == []

    # Off the list but maybe still in a live cluster's hands: noted, not pushed.
    assert sweep_unqueued_jobs(older_than=0) == 0
    assert inbound_tasks() == []
    later = timezone.now() + lost_after()
    assert sweep_unqueued_jobs(older_than=0, now=later) == 1
    assert inbound_tasks() == [(TASK, (job.message_id,))]
    job.refresh_from_db()
    assert (job.status, job.enqueue_count) == (ProcessingJob.Status.QUEUED, 2)
    # Pushed once: the new task is on the list, so nothing more is pushed.
    assert sweep_unqueued_jobs(older_than=0, now=later + lost_after()) == 0
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert attempts_seen == [("3EB0JOB1", 1, "")]  # it never ran before: a first attempt


def test_a_healthy_backlog_waiting_on_the_list_is_never_pushed_again(company, session):
    redis_pass()
    for i in range(30):
        receive(company, f"3EB0BL{i:02d}")
    before = inbound_tasks()
    assert len(before) == 30
    far = timezone.now() + timedelta(hours=2)
    for _ in range(3):
        assert sweep_unqueued_jobs(older_than=0, now=far) == 0
        far += lost_after()
    assert inbound_tasks() == before
    assert set(ProcessingJob.objects.values_list("enqueue_count", flat=True)) == {1}


def test_a_lost_task_claimed_before_the_sweeper_pushes_it_is_not_pushed(company, session):
    redis_pass()
    receive(company)
    job = job_of()
    get_broker().dequeue()
    assert sweep_unqueued_jobs(older_than=0) == 0  # noted off the list
    use_handler(company, "recording_handler")
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED  # it was in live hands
    assert sweep_unqueued_jobs(older_than=0, now=timezone.now() + lost_after()) == 0
    assert inbound_tasks() == []


def dead_process_identity():
    """The identity of a real process that has ended (started, killed, reaped)."""
    proc = subprocess.Popen(["sleep", "30"])
    identity = local_processes.identity_of(proc.pid)
    proc.kill()
    proc.wait()
    assert identity.host_key, "needs Linux /proc"
    return f"{identity.host_key}|{identity.pid}|{identity.start}"


def run_as_claimed_by(job, claimed_by, lease_seconds=3600):
    ProcessingJob.objects.filter(pk=job.pk).update(
        status=ProcessingJob.Status.RUNNING,
        attempts=1,
        started_at=timezone.now(),
        lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds),
        claimed_by=claimed_by,
    )


@pytest.mark.e2e
def test_a_job_whose_process_died_mid_run_runs_again_knowing_it_is_a_retry(company, session):
    """Seen: a job running at the kill was re-sent and its handler ran again,
    unaware. Its process is provably gone: no need to wait for its lease."""
    use_handler(company, "attempt_aware_handler")
    receive(company, text="price?")
    purge()
    job = job_of()
    run_as_claimed_by(job, dead_process_identity())
    assert run_processing_job(job.pk) == "skipped"  # its lease still runs: not taken
    assert sweep_unqueued_jobs() == 1
    assert inbound_tasks() == [(TASK, (job.message_id,))]
    job.refresh_from_db()
    assert (job.status, job.last_outcome) == (ProcessingJob.Status.QUEUED, "died")
    assert "attempt 1 died: its process" in job.error
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert attempts_seen == [("3EB0JOB1", 2, "died")]
    assert OutboundMessage.objects.get().text == "got price?"


def test_a_job_running_in_a_live_process_is_left_alone_until_its_lease_expires(company, session):
    use_handler(company, "attempt_aware_handler")
    receive(company)
    purge()
    job = job_of()
    run_as_claimed_by(job, claimant(), lease_seconds=60)
    assert sweep_unqueued_jobs(older_than=0) == 0
    assert run_processing_job(job.pk) == "skipped"
    assert inbound_tasks() == []
    # Past its lease, the attempt counts as dead (another machine cannot see
    # the process): the job goes back on the queue, once.
    later = timezone.now() + timedelta(seconds=61)
    assert sweep_unqueued_jobs(now=later) == 1
    assert sweep_unqueued_jobs(now=later) == 0
    assert len(inbound_tasks()) == 1
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert attempts_seen == [("3EB0JOB1", 2, "died")]


def test_a_redelivered_task_takes_over_a_job_whose_lease_expired_as_a_retry(company, session):
    """ORM broker: django-q2 delivers the dead cluster's task again after `retry`."""
    use_handler(company, "attempt_aware_handler")
    receive(company)
    job = job_of()
    run_as_claimed_by(job, claimant(), lease_seconds=-1)
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert attempts_seen == [("3EB0JOB1", 2, "died")]


def test_an_attempt_that_lost_its_lease_commits_neither_reply_nor_outcome(company, session):
    use_handler(company, "overtaken_handler")
    receive(company)
    job = job_of()
    assert run_processing_job(job.pk) == "superseded"
    assert OutboundMessage.objects.count() == 0
    job.refresh_from_db()
    assert (job.status, job.attempts) == (ProcessingJob.Status.RUNNING, 2)


def test_a_retry_that_produces_the_reply_again_does_not_queue_a_second_one(company, session):
    use_handler(company, "reply_then_crash_handler")
    receive(company, text="hours?")
    job = job_of()
    assert run_processing_job(job.pk) == ProcessingJob.Status.PENDING
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert attempts_seen == [("3EB0JOB1", 1, ""), ("3EB0JOB1", 2, "failed")]
    out = OutboundMessage.objects.get()
    assert (out.text, out.idempotency_key) == ("answer to hours?", "reply:3EB0JOB1:0")


def test_a_retry_with_a_different_reply_keeps_the_one_already_queued(company, session):
    use_handler(company, "different_reply_on_retry_handler")
    receive(company)
    job = job_of()
    assert run_processing_job(job.pk) == ProcessingJob.Status.PENDING
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert list(OutboundMessage.objects.values_list("text", flat=True)) == ["first answer"]
    assert "kept the reply an earlier attempt queued" in job_of().result


def test_a_handler_that_times_out_is_recorded_and_retried_knowing_it(company, session):
    use_handler(company, "timing_out_handler")
    receive(company)
    job = job_of()
    with pytest.raises(TimeoutException):  # django-q2's worker handles it (replaces itself)
        run_processing_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.last_outcome) == (ProcessingJob.Status.PENDING, "timed_out")
    assert job.lease_expires_at is None
    use_handler(company, "attempt_aware_handler")
    assert sweep_unqueued_jobs(older_than=0) == 1
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert attempts_seen == [("3EB0JOB1", 2, "timed_out")]


def test_a_job_lease_shorter_than_the_task_timeout_is_refused_at_startup(settings):
    from whatsapp.checks import check_whatsapp_settings

    settings.WHATSAPP = {**settings.WHATSAPP, "JOB_LEASE": settings.Q_CLUSTER["timeout"] - 1}
    assert "whatsapp.E007" in [e.id for e in check_whatsapp_settings(None)]
    settings.WHATSAPP = {**settings.WHATSAPP, "JOB_LEASE": 0}
    assert "whatsapp.E007" not in [e.id for e in check_whatsapp_settings(None)]


# --- the job watch (runcluster, every few seconds) ----------------------------------
def test_orm_a_task_a_dead_cluster_took_is_released_once_it_is_provably_lost(company, session):
    """ORM broker: a taken task stays locked for `retry` (90 s) after its
    cluster died; the job watch lifts the lock after LOST_TASK_AFTER."""
    orm_pass()
    use_handler(company, "attempt_aware_handler")
    receive(company)
    job = job_of()
    broker = get_broker()
    assert broker.dequeue()  # the cluster's pusher took it... and died
    assert broker.dequeue() is None  # locked: no cluster sees it any more
    assert jobs_module.watch_stranded_jobs() == 0  # maybe in a live cluster's hands
    assert jobs_module.watch_stranded_jobs(now=timezone.now() + lost_after()) == 1
    (row,) = broker.dequeue()  # any cluster takes it again now
    assert SignedPackage.loads(row[1])["args"] == (job.message_id,)
    job.refresh_from_db()
    assert (job.status, job.enqueue_count) == (ProcessingJob.Status.QUEUED, 2)
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert attempts_seen == [("3EB0JOB1", 1, "")]  # it never ran before: a first attempt


def test_orm_a_taken_task_whose_job_ran_or_a_waiting_backlog_is_left_alone(company, session):
    orm_pass()
    use_handler(company, "recording_handler")
    for i in range(6):
        receive(company, f"3EB0BL{i:02d}")
    broker = get_broker()
    taken = broker.dequeue()  # up to Q_CLUSTER["bulk"] tasks at once
    assert 2 <= len(taken) < 6
    ran, *lost = [SignedPackage.loads(payload)["args"][0] for _pk, payload in taken]
    assert run_processing_job(ProcessingJob.objects.get(message_id=ran).pk) == (
        ProcessingJob.Status.SUCCEEDED
    )  # ran; its acknowledgement is still to come (the cluster died first)
    far = timezone.now() + lost_after()
    assert jobs_module.watch_stranded_jobs(now=far) == len(lost)
    assert jobs_module.watch_stranded_jobs(now=far) == 0
    counts = dict(ProcessingJob.objects.values_list("message_id", "enqueue_count"))
    assert {m for m, n in counts.items() if n == 2} == set(lost)
    # The lost ones are takeable again with the waiting ones; the one that ran is not.
    again = []
    while batch := broker.dequeue():
        again += [SignedPackage.loads(payload)["args"][0] for _pk, payload in batch]
    assert sorted(again) == sorted(set(counts) - {ran})


def test_redis_a_job_never_pushed_is_pushed_by_the_watch_within_seconds(
    company, session, monkeypatch
):
    """The process died between the commit and the push (simulated by Redis
    refusing it): the watch pushes it UNPUSHED_AFTER seconds later, once."""
    redis_pass()
    with monkeypatch.context() as m:
        m.setattr(Redis, "enqueue", redis_down)
        assert receive(company).created
    assert jobs_module.watch_stranded_jobs() == 0  # its own push may still be on its way
    soon = timezone.now() + timedelta(seconds=settings.WHATSAPP["UNPUSHED_AFTER"] + 1)
    assert jobs_module.watch_stranded_jobs(now=soon) == 1
    assert jobs_module.watch_stranded_jobs(now=soon) == 0
    assert inbound_tasks() == [(TASK, (job_of().message_id,))]


def test_redis_the_watch_reads_only_the_head_of_a_long_healthy_backlog(
    company, session, monkeypatch
):
    redis_pass()
    for i in range(30):
        receive(company, f"3EB0BL{i:02d}")
    before = inbound_tasks()
    ranges = []
    real_lrange = redis.Redis.lrange
    monkeypatch.setattr(
        redis.Redis, "lrange", lambda *a, **k: ranges.append(a) or real_lrange(*a, **k)
    )
    far = timezone.now() + timedelta(hours=2)
    for _ in range(3):
        assert jobs_module.watch_stranded_jobs(now=far) == 0
        far += lost_after()
    assert ranges == []
    monkeypatch.undo()
    assert inbound_tasks() == before
