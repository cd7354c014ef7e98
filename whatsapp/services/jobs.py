"""Enqueueing processing jobs on django-q2, and the sweeper for the crash window.

* ORM broker (default): the enqueue is a row in the same transaction as the
  message, so commit means "stored and enqueued" and rollback means neither.
  The job row is inserted already `queued`, carrying its task id.
* Redis broker: Redis is not part of the transaction, so the job is inserted
  `pending` and pushed on commit. A crash between commit and push leaves it
  `pending`; `sweep_unqueued_jobs` (scheduled every minute) enqueues those.
  A task popped by a cluster that then died is found and pushed again
  (`requeue_lost_tasks`). The job claims its row before running, so an extra
  task can never run the handler twice.
* A running attempt that died (lease expired, or its process gone) is put
  back on the queue by the sweeper (`release_dead_attempts`).

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

from . import local_processes

logger = logging.getLogger(__name__)

TASK_PATH = "whatsapp.tasks.process_message_job"
Status = ProcessingJob.Status
_local = threading.local()


def broker_is_transactional():
    return getattr(settings, "Q_BROKER", "orm") == "orm"


def _broker():
    """One django-q2 broker per thread: async_task builds a new one per call
    otherwise (with Redis, a new connection pool and TCP connection per task).
    Always the queue of client messages, also when called from the
    maintenance cluster (the sweeper), whose own default queue is another."""
    broker = getattr(_local, "broker", None)
    if broker is None:
        broker = _local.broker = get_broker(list_key=settings.Q_CLUSTER["name"])
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


def retry_processing_job(job_id):
    """Operator action (admin and API): put a failed job back on the queue for
    one more attempt. Its attempt count and last outcome stay, so the handler
    is told it is a retry and how the previous attempt ended. Only a failed job
    is retried: a pending, queued, running or succeeded one is left as it is
    (returns False)."""
    with transaction.atomic():
        updated = ProcessingJob.objects.filter(
            pk=job_id, status=ProcessingJob.Status.FAILED
        ).update(status=ProcessingJob.Status.PENDING, finished_at=None)
        if updated:
            enqueue_processing_job(job_id)
    return bool(updated)


def _claim_after_commit(job_id):
    try:
        _claim_and_enqueue(job_id, [Status.PENDING])
    except Exception:  # the broker is down: the sweeper will retry
        logger.exception("enqueue of processing job %s failed; the sweeper will retry", job_id)


def sweep_unqueued_jobs(older_than=None, now=None):
    """Enqueue jobs left behind; returns how many were enqueued. Safe to run
    concurrently (each job is claimed once by a conditional UPDATE):

    * pending too long: a crash between commit and enqueue, the broker down,
      or a failed attempt waiting for its retry;
    * running whose attempt provably died: its lease expired, or its process
      on this machine is gone (seen at once, without waiting for the lease);
    * queued whose task was lost (Redis broker: a cluster popped it and died
      before claiming it; see requeue_lost_tasks)."""
    now = now or timezone.now()
    older_than = older_than if older_than is not None else settings.WHATSAPP["SWEEP_AFTER"]
    count = release_dead_attempts(now)
    pending_cutoff = now - timedelta(seconds=older_than)
    stale = ProcessingJob.objects.filter(status=Status.PENDING, created_at__lt=pending_cutoff)
    for job_id in list(stale.values_list("pk", flat=True)[:1000]):
        count += _claim_and_enqueue(job_id, [Status.PENDING]) is not None
    count += requeue_lost_tasks(now, older_than)
    if count:
        logger.warning("sweeper enqueued %d processing job(s) left behind", count)
    return count


def watch_stranded_jobs(now=None):
    """The quick round against stranded jobs: `runcluster` runs it every
    WHATSAPP["JOB_WATCH_INTERVAL"] seconds (the minute sweeper stays, for
    installs that run a bare qcluster). Every rule is one a healthy backlog
    never meets, so running it often costs a few small queries and never
    pushes a waiting job twice:

    * running jobs whose attempt provably died (lease expired, or its process
      on this machine gone): seen within one round;
    * pending jobs never pushed (Redis broker: the process died between the
      commit and the push), UNPUSHED_AFTER seconds after they were stored;
    * queued jobs whose task a dead cluster took (requeue_lost_tasks).

    Returns how many jobs were put on the queue again."""
    now = now or timezone.now()
    count = release_dead_attempts(now)
    unpushed = ProcessingJob.objects.filter(
        status=Status.PENDING,
        attempts=0,
        enqueue_count=0,
        created_at__lt=now - timedelta(seconds=settings.WHATSAPP["UNPUSHED_AFTER"]),
    )
    for job_id in list(unpushed.values_list("pk", flat=True)[:1000]):
        count += _claim_and_enqueue(job_id, [Status.PENDING]) is not None
    count += requeue_lost_tasks(now, older_than=0)
    if count:
        logger.warning("job watch: %d stranded processing job(s) put on the queue again", count)
    return count


def release_dead_attempts(now):
    """Put back on the queue each running job whose attempt provably died:
    its lease expired, or it was claimed by a process on this machine that
    is gone. The next attempt is told (last_outcome "died"). Returns how many."""
    from .processing import claimant_identity, job_lease_seconds

    running = ProcessingJob.objects.filter(status=Status.RUNNING)
    expired = running.filter(
        Q(lease_expires_at__lt=now)
        | Q(
            lease_expires_at__isnull=True,  # claimed before leases existed
            started_at__lt=now - timedelta(seconds=job_lease_seconds()),
        )
    )
    dead = {
        pk: (attempts, "its lease expired")
        for pk, attempts in expired.values_list("pk", "attempts")[:1000]
    }
    here = local_processes.host_key()
    if here:
        for pk, attempts, claimed_by in running.filter(
            claimed_by__startswith=f"{here}|"
        ).values_list("pk", "attempts", "claimed_by")[:1000]:
            identity = claimant_identity(claimed_by)
            if pk not in dead and local_processes.is_gone(identity):
                dead[pk] = (attempts, f"its process {identity.pid} is gone")
    count = 0
    for pk, (attempts, why) in dead.items():
        with transaction.atomic():
            # Only that attempt, if it is still running (it may have finished).
            if not ProcessingJob.objects.filter(
                pk=pk, status=Status.RUNNING, attempts=attempts
            ).update(
                status=Status.PENDING,
                last_outcome=ProcessingJob.Outcome.DIED,
                lease_expires_at=None,
                error=f"attempt {attempts} died: {why}",
            ):
                continue
            count += _claim_and_enqueue(pk, [Status.PENDING]) is not None
    if count:
        logger.warning("%d processing job(s) whose attempt died were enqueued again", count)
    return count


def requeue_lost_tasks(now=None, older_than=None):
    """Redis broker: push again the queued jobs whose task a cluster took and
    lost (it died before claiming them). Returns how many were pushed.

    django-q2's Redis broker removes a task from the list when its pusher pops
    it; there is no acknowledgement. A queued job whose task id is still on
    the list is legitimately waiting, however long the backlog: it is never
    touched. One whose task is off the list and still unclaimed is either in
    a live cluster's hands (its local queue: at most `queue_limit` + workers
    tasks per cluster, claimed within a task's time) or lost. Each such job is
    noted with the time it was first seen off the list (a Redis hash); still
    unclaimed with the same task LOST_TASK_AFTER seconds later, it is lost and
    pushed again. A wrong guess costs one extra task that finds nothing to
    claim; it can never flood a healthy backlog, which stays on the list.

    The ORM broker needs none of this: a taken task stays in its table,
    locked, until acknowledged, and comes back after `retry` seconds."""
    if Conf.SYNC:
        return 0
    now = now or timezone.now()
    if broker_is_transactional():
        return _unlock_lost_orm_tasks(now)
    older_than = older_than if older_than is not None else settings.WHATSAPP["SWEEP_AFTER"]
    broker = _broker()
    absent_key = f"{broker.list_key}:aiadmin:absent"
    redis = broker.connection
    # The list is FIFO (django-q2 RPUSHes and BLPOPs): a job pushed before the
    # task now at its head has been popped. Only those are looked at, so a long
    # healthy backlog costs one LINDEX, not a read of the whole list.
    cutoff = now - timedelta(seconds=older_than)
    head = _head_pushed_at(redis.lindex(broker.list_key, 0))
    if head is not None:
        cutoff = min(cutoff, head - timedelta(seconds=HEAD_SLACK))
    off_list = dict(
        ProcessingJob.objects.filter(status=Status.QUEUED, enqueued_at__lt=cutoff)
        .order_by("enqueued_at")
        .values_list("pk", "task_id")[:1000]
    )
    if not off_list:
        redis.delete(absent_key)
        return 0
    seen = {
        int(pk): value.decode().partition("|") for pk, value in redis.hgetall(absent_key).items()
    }
    stamp = now.timestamp()
    cutoff = stamp - settings.WHATSAPP["LOST_TASK_AFTER"]
    lost, keep = [], {}
    for pk, task_id in off_list.items():
        old_task, _, since = seen.get(pk, ("", "", ""))
        if old_task == task_id and float(since or stamp) <= cutoff:
            lost.append((pk, task_id))
        else:
            keep[pk] = f"{task_id}|{since if old_task == task_id else stamp}"
    pipe = redis.pipeline()
    pipe.delete(absent_key)
    if keep:
        pipe.hset(absent_key, mapping=keep)
        pipe.expire(absent_key, 86400)
    pipe.execute()
    count = 0
    for pk, task_id in lost:
        with transaction.atomic():
            still_lost = ProcessingJob.objects.filter(pk=pk, status=Status.QUEUED, task_id=task_id)
            if not still_lost.update(
                enqueued_at=timezone.now(), enqueue_count=F("enqueue_count") + 1
            ):
                continue  # claimed (or pushed again) meanwhile
            message_id = ProcessingJob.objects.values_list("message_id", flat=True).get(pk=pk)
            new_task = push_task(message_id)
            ProcessingJob.objects.filter(pk=pk).update(task_id=new_task or "")
        count += 1
    if count:
        logger.warning(
            "%d queued processing job(s) whose task a cluster took and lost were pushed again",
            count,
        )
    return count


# Seconds of clock difference allowed between two processes (the one that
# stamped a job's enqueued_at or a task's lock, and the one judging it).
HEAD_SLACK = 2.0


def _head_pushed_at(payload):
    """When the task `payload` (the head of the Redis list) was built, or None."""
    if payload is None:
        return None
    try:
        started = SignedPackage.loads(payload).get("started")
    except Exception:  # not ours to judge: django-q2 fails it when popped
        return None
    return started if hasattr(started, "tzinfo") else None


def _unlock_lost_orm_tasks(now):
    """ORM broker: a task a cluster took stays in its table, locked until
    taken-time + `retry` (90 s), then comes back by itself. A queued job whose
    task was taken more than LOST_TASK_AFTER seconds ago and is still
    unclaimed was taken by a cluster that died (or sits long in a live one's
    local queue): its lock is lifted so that any cluster takes it now. A wrong
    guess runs one extra task that finds nothing to claim. Only taken rows
    are read (a waiting backlog is unlocked, never looked at)."""
    from django_q.models import OrmQ

    lost_after = timedelta(seconds=settings.WHATSAPP["LOST_TASK_AFTER"])
    taken_long_ago = now - lost_after + timedelta(seconds=Conf.RETRY)
    # A waiting row's lock is its enqueue time (up to now, give or take the
    # clocks of the enqueuing hosts); a taken one's is taken-time + retry.
    surely_taken = max(now, timezone.now()) + timedelta(seconds=HEAD_SLACK)
    rows = OrmQ.objects.filter(
        key=_broker().list_key or settings.Q_CLUSTER["name"],
        lock__gt=surely_taken,
        lock__lt=taken_long_ago,
    ).values_list("pk", "payload", "lock")[:1000]
    tasks = {}
    for pk, payload, lock in rows:
        try:
            tasks[SignedPackage.loads(payload)["id"]] = (pk, lock)
        except Exception:  # not ours to judge: django-q2 fails it when popped
            continue
    if not tasks:
        return 0
    count = 0
    for job_id, task_id in ProcessingJob.objects.filter(
        status=Status.QUEUED, task_id__in=list(tasks)
    ).values_list("pk", "task_id"):
        row, lock = tasks[task_id]
        with transaction.atomic():
            if not OrmQ.objects.filter(pk=row, lock=lock).update(lock=timezone.now()):
                continue  # acknowledged or taken again meanwhile
            ProcessingJob.objects.filter(pk=job_id, status=Status.QUEUED).update(
                enqueued_at=now, enqueue_count=F("enqueue_count") + 1
            )
        count += 1
    if count:
        logger.warning(
            "%d queued processing job(s) whose task a cluster took and lost were released "
            "to the queue again",
            count,
        )
    return count
