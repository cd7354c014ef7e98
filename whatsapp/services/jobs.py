"""Enqueueing processing jobs on django-q2, and the sweeper for the crash window.

* ORM broker (default): the enqueue is a row in the same transaction as the
  message, so commit means "stored and enqueued" and rollback means neither.
  The job row is inserted already `queued`, carrying its task id.
* Redis broker: Redis is not part of the transaction, so the job is inserted
  `pending` and pushed on commit. A crash between commit and push leaves it
  `pending`; `sweep_unqueued_jobs` (scheduled every minute) enqueues those.
  The job claims its row before running, so an extra task can never run the
  handler twice.

The task takes the message's id (known before the job row exists, which
lets the ORM path write the job once); the job is found by its message.
"""

import logging
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.tasks import async_task

from whatsapp.models import ProcessingJob

logger = logging.getLogger(__name__)

TASK_PATH = "whatsapp.tasks.process_message_job"
Status = ProcessingJob.Status
_local = threading.local()


def broker_is_transactional():
    return getattr(settings, "Q_BROKER", "orm") == "orm"


def _broker():
    """One django-q2 broker per thread: async_task builds a new one per call
    otherwise (with Redis, a new connection pool and TCP connection per task)."""
    broker = getattr(_local, "broker", None)
    if broker is None:
        broker = _local.broker = get_broker()
    return broker


def task_package(message_id):
    """(task id, signed package) of the processing task of message `message_id`:
    the package django-q2's `async_task` would build, for the inbound hot path.

    `async_task` also makes a humanhash name (we name the task ourselves, yet it
    computes one anyway), parses a dozen options and sends a signal nobody here
    listens to: together about a quarter of the CPU time of recording a message
    on SQLite (docs/benchmarks.md). The package is the same dict, signed by
    django-q2's own SignedPackage; tests/whatsapp/test_jobs.py compares it
    with async_task's, key by key, so an upgrade that changes the format fails
    there, and the real cluster runs these tasks in test_qcluster_e2e.py."""
    task = {
        "id": uuid.uuid4().hex,
        "name": f"inbound-{message_id}",
        "func": TASK_PATH,
        "args": (message_id,),
        "group": "inbound",
    }
    if Conf.CACHED:
        task["cached"] = Conf.CACHED
    if Conf.ACK_FAILURES:
        task["ack_failure"] = Conf.ACK_FAILURES
    task["kwargs"] = {}
    task["started"] = timezone.now()
    return task["id"], SignedPackage.dumps(task)


def push_task(message_id):
    """Put the processing task of message `message_id` on the queue; its task id."""
    if Conf.SYNC:  # async_task runs it inline
        return async_task(
            TASK_PATH,
            message_id,
            group="inbound",
            task_name=f"inbound-{message_id}",
            broker=_broker(),
        )
    task_id, package = task_package(message_id)
    _broker().enqueue(package)
    return task_id


_INSERT_JOB = None


def _insert_job_sql():
    global _INSERT_JOB
    if _INSERT_JOB is None:
        table = connection.ops.quote_name(ProcessingJob._meta.db_table)
        _INSERT_JOB = (
            f"INSERT INTO {table} (message_id, status, attempts, enqueue_count, task_id, "
            "handler, result, error, created_at, enqueued_at) "
            "VALUES (%s, %s, 0, %s, %s, '', '', '', %s, %s) RETURNING id"
        )
    return _INSERT_JOB


def create_job(cursor, message_id, when):
    """Insert the one job of a newly stored message and enqueue it; the job id.

    Call inside the transaction that stored the message, with its cursor;
    `when` is the time of recording, adapted for the database."""
    if broker_is_transactional() and not Conf.SYNC:
        # The task row commits (or rolls back) with the message and the job.
        task_id = push_task(message_id)
        cursor.execute(_insert_job_sql(), [message_id, Status.QUEUED, 1, task_id, when, when])
        return cursor.fetchone()[0]
    cursor.execute(_insert_job_sql(), [message_id, Status.PENDING, 0, "", when, None])
    job_id = cursor.fetchone()[0]
    _after_commit(job_id, message_id)
    return job_id


_ENQUEUE_PG = None


def enqueue_inserted_job(cursor, job_id, message_id):
    """Enqueue job `job_id`, just inserted by PostgreSQL's one-statement path
    (`queued` with the ORM broker, `pending` with Redis), in the caller's
    transaction. ORM broker: the task row and the job's task id are written by
    one statement (one round trip instead of two)."""
    if not broker_is_transactional() or Conf.SYNC:
        # Redis: pushed after commit. Q_CLUSTER["sync"]: async_task runs the
        # task inline, so it must see the committed job.
        _after_commit(job_id, message_id)
        return
    global _ENQUEUE_PG
    if _ENQUEUE_PG is None:
        from django_q.models import OrmQ

        q = connection.ops.quote_name
        _ENQUEUE_PG = (
            f"WITH task AS (INSERT INTO {q(OrmQ._meta.db_table)} "
            f"({q('key')}, {q('payload')}, {q('lock')}) "
            "VALUES (%s, %s, %s) RETURNING id) "
            f"UPDATE {q(ProcessingJob._meta.db_table)} SET task_id = %s "
            "WHERE id = %s AND EXISTS (SELECT 1 FROM task)"
        )
    task_id, package = task_package(message_id)
    list_key = _broker().list_key or settings.Q_CLUSTER["name"]
    cursor.execute(_ENQUEUE_PG, [list_key, package, timezone.now(), task_id, job_id])


@contextmanager
def enqueue_together():
    """Within this block (inside the caller's transaction), jobs that are pushed
    after commit (Redis broker) are collected and pushed together once the
    transaction commits, marked queued by ONE UPDATE instead of one each: the
    group commit of the inbound path (services.inbound.record_inbound_messages)."""
    if getattr(_local, "deferred", None) is not None:  # nested: the outer block collects
        yield
        return
    _local.deferred = pending = []
    try:
        yield
    finally:
        _local.deferred = None
    if pending:  # registered in the transaction: a rollback drops it
        transaction.on_commit(lambda: _enqueue_after_commit(pending))


def _after_commit(job_id, message_id):
    pending = getattr(_local, "deferred", None)
    if pending is not None:
        pending.append((job_id, message_id))
    else:
        transaction.on_commit(lambda: _enqueue_after_commit([(job_id, message_id)]))


def _enqueue_after_commit(jobs):
    """Push each (job id, message id), then mark the pushed ones queued in one
    UPDATE: a job whose push failed stays pending for the sweeper (and so do
    the rest once the broker refused one: no timeout per job); if the sweeper
    got there first, the extra task finds nothing to claim (and the job counts
    two enqueues).

    On PostgreSQL the marker commits with synchronous_commit off: it is a hint
    for the sweeper, not data. Losing it in a crash only makes the sweeper
    push a second task that finds nothing to claim, while waiting for a WAL
    flush here would halve the inbound rate (two durable commits a message)."""
    pushed = []
    for job_id, message_id in jobs:
        try:
            pushed.append((job_id, push_task(message_id) or ""))
        except Exception:  # the broker is down: the sweeper will retry
            logger.exception(
                "enqueue of processing job %s failed; the sweeper will retry it and %d more",
                job_id,
                len(jobs) - len(pushed) - 1,
            )
            break
    if not pushed:
        return
    table = connection.ops.quote_name(ProcessingJob._meta.db_table)
    when = connection.ops.adapt_datetimefield_value(timezone.now())
    cases = " ".join("WHEN %s THEN %s" for _ in pushed)
    ids = ", ".join("%s" for _ in pushed)
    # The cluster may already have run the task: record the push whatever the
    # job's state, and move only a pending job to queued.
    sql = (
        f"UPDATE {table} SET status = CASE WHEN status = %s THEN %s ELSE status END, "
        f"task_id = CASE id {cases} END, enqueued_at = %s, "
        f"enqueue_count = enqueue_count + 1 WHERE id IN ({ids})"
    )
    if connection.vendor == "postgresql":
        # One statement in autocommit: its own transaction, committed without
        # waiting for the WAL flush (set_config(..., is_local => true)).
        sql += " AND set_config('synchronous_commit', 'off', true) IS NOT NULL"
    params = [Status.PENDING, Status.QUEUED]
    for job_id, task_id in pushed:
        params += [job_id, task_id]
    params.append(when)
    params += [job_id for job_id, _task in pushed]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _claim_and_enqueue(job_id, from_statuses):
    """Move job `job_id` from one of `from_statuses` to queued and push its task,
    in one transaction: of two callers racing for the same job only one claims
    it, and a push that fails rolls the claim back (the sweeper tries again).
    Returns the task id, or None when the job was not claimable."""
    with transaction.atomic():
        claimed = ProcessingJob.objects.filter(pk=job_id, status__in=from_statuses).update(
            status=Status.QUEUED,
            enqueued_at=timezone.now(),
            enqueue_count=F("enqueue_count") + 1,
        )
        if not claimed:
            return None
        message_id = ProcessingJob.objects.values_list("message_id", flat=True).get(pk=job_id)
        task_id = push_task(message_id)
        ProcessingJob.objects.filter(pk=job_id).update(task_id=task_id or "")
    return task_id


def enqueue_processing_job(job_id):
    """Enqueue pending job `job_id` (an operator's retry); call in a transaction."""
    if broker_is_transactional():
        _claim_and_enqueue(job_id, [Status.PENDING])
    else:
        transaction.on_commit(lambda: _claim_after_commit(job_id))


def _claim_after_commit(job_id):
    try:
        _claim_and_enqueue(job_id, [Status.PENDING])
    except Exception:  # the broker is down: the sweeper will retry
        logger.exception("enqueue of processing job %s failed; the sweeper will retry", job_id)


def sweep_unqueued_jobs(older_than=None, now=None):
    """Enqueue jobs left behind: pending too long (crash between commit and
    enqueue, broker down, a failed attempt waiting for its retry) or running
    far past the task timeout (the cluster process died mid-job). Returns how
    many were enqueued; safe to run concurrently (each job is claimed once)."""
    now = now or timezone.now()
    older_than = older_than if older_than is not None else settings.WHATSAPP["SWEEP_AFTER"]
    pending_cutoff = now - timedelta(seconds=older_than)
    stale_running = now - timedelta(seconds=settings.Q_CLUSTER["timeout"] + 30)
    stale = ProcessingJob.objects.filter(
        Q(status=Status.PENDING, created_at__lt=pending_cutoff)
        | Q(status=Status.RUNNING, started_at__lt=stale_running)
    ).values_list("pk", "status")
    count = 0
    for job_id, status in list(stale[:1000]):
        if status == Status.RUNNING:
            # A job whose cluster process died mid-run goes back to the queue
            # (only if it is still that stale run: it may have finished since).
            with transaction.atomic():
                if not ProcessingJob.objects.filter(
                    pk=job_id, status=status, started_at__lt=stale_running
                ).update(status=Status.PENDING):
                    continue
                task_id = _claim_and_enqueue(job_id, [Status.PENDING])
        else:
            task_id = _claim_and_enqueue(job_id, [Status.PENDING])
        count += task_id is not None
    if count:
        logger.warning("sweeper enqueued %d processing job(s) left unqueued", count)
    return count
