"""Enqueueing processing jobs on django-q2, and the sweeper for the crash window.

* ORM broker (default): the enqueue is a row in the same transaction as the
  message, so commit means "stored and enqueued" and rollback means neither.
* Redis broker: Redis is not part of the transaction, so the job is enqueued
  on commit. A crash between commit and enqueue leaves the job `pending`;
  `sweep_unqueued_jobs` (scheduled every minute, and run by the worker)
  enqueues those. The job itself claims its row before running, so an extra
  enqueue can never run the handler twice.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django_q.tasks import async_task

from whatsapp.models import ProcessingJob

logger = logging.getLogger(__name__)

TASK_PATH = "whatsapp.tasks.process_inbound_message"


def broker_is_transactional():
    return getattr(settings, "Q_BROKER", "orm") == "orm"


def _claim_and_enqueue(job_id, from_statuses):
    """Move job `job_id` from one of `from_statuses` to queued and push its task,
    in one transaction: of two callers racing for the same job only one claims
    it, and a push that fails rolls the claim back (the sweeper tries again).
    Returns the task id, or None when the job was not claimable."""
    with transaction.atomic():
        claimed = ProcessingJob.objects.filter(pk=job_id, status__in=from_statuses).update(
            status=ProcessingJob.Status.QUEUED,
            enqueued_at=timezone.now(),
            enqueue_count=F("enqueue_count") + 1,
        )
        if not claimed:
            return None
        task_id = async_task(TASK_PATH, job_id, group="inbound")
        ProcessingJob.objects.filter(pk=job_id).update(task_id=task_id or "")
    return task_id


def enqueue_processing_job(job_id):
    """Enqueue pending job `job_id`; call inside the transaction that created it."""
    if broker_is_transactional():
        _claim_and_enqueue(job_id, [ProcessingJob.Status.PENDING])
    else:
        transaction.on_commit(lambda: _enqueue_after_commit(job_id))


def _enqueue_after_commit(job_id):
    try:
        _claim_and_enqueue(job_id, [ProcessingJob.Status.PENDING])
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
        Q(status=ProcessingJob.Status.PENDING, created_at__lt=pending_cutoff)
        | Q(status=ProcessingJob.Status.RUNNING, started_at__lt=stale_running)
    ).values_list("pk", "status")
    count = 0
    for job_id, status in list(stale[:1000]):
        if status == ProcessingJob.Status.RUNNING:
            # A job whose cluster process died mid-run goes back to the queue
            # (only if it is still that stale run: it may have finished since).
            with transaction.atomic():
                if not ProcessingJob.objects.filter(
                    pk=job_id, status=status, started_at__lt=stale_running
                ).update(status=ProcessingJob.Status.PENDING):
                    continue
                task_id = _claim_and_enqueue(job_id, [ProcessingJob.Status.PENDING])
        else:
            task_id = _claim_and_enqueue(job_id, [ProcessingJob.Status.PENDING])
        count += task_id is not None
    if count:
        logger.warning("sweeper enqueued %d processing job(s) left unqueued", count)
    return count
