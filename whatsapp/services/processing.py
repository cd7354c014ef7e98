"""Running the processing job of an inbound message, exactly once.

The job claims its row (pending/queued -> running) with one conditional
UPDATE; a second delivery of the same task finds nothing to claim and does
nothing. The handler runs outside any transaction (it may be slow: an AI
call, a webhook); its reply and the job's success commit together, and the
reply is unique per inbound message, so a re-run after a crash cannot send
a second answer.
"""

import logging
import traceback
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.module_loading import import_string

from companies.inbound_handlers import (
    UnknownHandler,
    default_handler_name,
    registered_handler_path,
)
from whatsapp.models import ProcessingJob

from .outbound import queue_outbound_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandlerResult:
    """What a handler returns: an optional reply, and a note for the job row."""

    reply_text: str = ""
    note: str = ""


class HandlerError(Exception):
    """A handler could not be loaded, returned something unusable, or refused the
    message. Permanent by default: retrying cannot help, so the job fails at once.
    Any other exception from a handler is taken as transient and retried."""

    def __init__(self, message, permanent=True):
        super().__init__(message)
        self.permanent = permanent


def handler_path_for(company):
    """The registry *name* of the company's handler (blank: the settings default).
    It is what the job records; load_handler turns it into the handler."""
    return company.inbound_handler or default_handler_name()


def load_handler(name):
    """The handler registered as `name`. Only the registry's dotted paths (from the
    settings, imported by a system check at start) are imported, never a value
    stored on a company: an unknown name is a permanent HandlerError."""
    try:
        path = registered_handler_path(name)
    except UnknownHandler as exc:
        raise HandlerError(str(exc)) from None
    try:
        handler = import_string(path)
    except ImportError as exc:
        raise HandlerError(f"cannot import handler {name!r} ({path}): {exc}") from None
    if not callable(handler):
        raise HandlerError(f"handler {name!r} ({path}) is not callable")
    return handler


def claim_job(job_id, now=None):
    """Atomically take job `job_id` for running. False if done or running elsewhere."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.Q_CLUSTER["timeout"] + 30)
    return bool(
        ProcessingJob.objects.filter(pk=job_id)
        .filter(
            Q(status__in=[ProcessingJob.Status.PENDING, ProcessingJob.Status.QUEUED])
            | Q(status=ProcessingJob.Status.RUNNING, started_at__lt=stale)
        )
        .update(status=ProcessingJob.Status.RUNNING, started_at=now, attempts=F("attempts") + 1)
    )


def run_processing_job(job_id):
    """Run the handler of job `job_id` once; record the outcome on the row.

    Returns the job's status afterwards (succeeded, failed, or pending when a
    failed attempt will be retried), or "skipped" when there was nothing to claim."""
    if not claim_job(job_id):
        return "skipped"
    job = ProcessingJob.objects.select_related("message__company").get(pk=job_id)
    message = job.message
    path = handler_path_for(message.company)
    try:
        result = load_handler(path)(message)
        if result is None:
            result = HandlerResult()
        if not isinstance(result, HandlerResult):
            raise HandlerError(
                f"handler {path!r} returned {type(result).__name__}, not HandlerResult"
            )
        with transaction.atomic():
            if result.reply_text:
                queue_outbound_message(
                    message.company_id,
                    message.reply_jid,
                    result.reply_text,
                    idempotency_key=f"reply:{message.wa_message_id}",
                    in_reply_to=message,
                )
            ProcessingJob.objects.filter(pk=job_id).update(
                status=ProcessingJob.Status.SUCCEEDED,
                handler=path,
                result=result.note[:2000] or ("replied" if result.reply_text else "no reply"),
                error="",
                finished_at=timezone.now(),
            )
        return ProcessingJob.Status.SUCCEEDED
    except Exception as exc:
        # A transient error with attempts left: back to pending, and the sweeper
        # re-enqueues it at its next round (the retry delay). A permanent error
        # or no attempts left: failed for good (an operator can retry it).
        final = getattr(exc, "permanent", False) or (
            job.attempts >= settings.WHATSAPP["JOB_MAX_ATTEMPTS"]
        )
        status = ProcessingJob.Status.FAILED if final else ProcessingJob.Status.PENDING
        logger.exception(
            "processing job %s failed in handler %s (attempt %d%s)",
            job_id,
            path,
            job.attempts,
            ", giving up" if final else ", will retry",
        )
        ProcessingJob.objects.filter(pk=job_id).update(
            status=status,
            handler=path,
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"[:8000],
            finished_at=timezone.now() if final else None,
        )
        return status


def run_message_job(message_id):
    """Run the processing job of inbound message `message_id` (see run_processing_job)."""
    job_id = (
        ProcessingJob.objects.filter(message_id=message_id).values_list("pk", flat=True).first()
    )
    if job_id is None:
        logger.warning("no processing job for inbound message %s", message_id)
        return "skipped"
    return run_processing_job(job_id)


def retry_processing_job(job_id):
    """Operator action: put a failed job back on the queue."""
    from .jobs import enqueue_processing_job

    with transaction.atomic():
        updated = ProcessingJob.objects.filter(
            pk=job_id, status=ProcessingJob.Status.FAILED
        ).update(status=ProcessingJob.Status.PENDING, error="", attempts=0)
        if updated:
            enqueue_processing_job(job_id)
    return bool(updated)
