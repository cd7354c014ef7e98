"""Running the processing job of an inbound message, exactly once.

The job claims its row (pending/queued -> running) with one conditional
UPDATE; a second delivery of the same task finds nothing to claim and does
nothing. The claim takes a lease (`lease_expires_at`, beyond django-q2's task
timeout) and records the claiming process (`claimed_by`). The handler runs
again only when that attempt provably died -- its lease expired, or the
sweeper saw its process gone (services.jobs) -- and then it is told so: it
gets an Attempt (number, previous outcome) if it takes one.

The handler runs outside any transaction (it may be slow: an AI call, a
webhook); its reply and the job's success commit together, fenced by the
attempt number (an attempt that lost its lease commits nothing), and the
reply's idempotency key is per message and reply index, so a retry that
produces the same reply never queues a second one.
"""

import inspect
import logging
import os
import traceback
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.exceptions import TimeoutException

from companies.inbound_handlers import (
    UnknownHandler,
    default_handler_name,
    registered_handler_path,
)
from whatsapp.models import Author, InboundMessage, ProcessingJob

from . import local_processes
from .outbound import IdempotencyConflict, OptedOut, queue_outbound_message
from .turn_contract import Attempt, is_turn_handler
from .turn_join import join_turn

__all__ = ["Attempt", "HandlerError", "HandlerResult", "run_message_job", "run_processing_job"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandlerResult:
    """What a handler returns: an optional reply, and a note for the job row.

    `more_replies`: further messages sent after `reply_text` (a long answer
    split for WhatsApp), each once (idempotency key per message and index)."""

    reply_text: str = ""
    note: str = ""
    more_replies: tuple = ()


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


def job_lease_seconds():
    """How long an attempt holds its job: beyond django-q2's task timeout (at
    which the worker is killed), so a live attempt never loses its lease."""
    return settings.WHATSAPP["JOB_LEASE"] or settings.Q_CLUSTER["timeout"] + 15


_claimant = (0, "")


def claimant():
    """This process, as recorded on the job it claims (`claimed_by`). Read from
    /proc once per process (a forked child reads its own)."""
    global _claimant
    pid = os.getpid()
    if _claimant[0] != pid:
        me = local_processes.this_process()
        _claimant = (pid, f"{me.host_key}|{me.pid}|{me.start}")
    return _claimant[1]


def claimant_identity(claimed_by):
    """The ProcessIdentity a `claimed_by` value names (empty key if unparsable)."""
    key, _, rest = (claimed_by or "").partition("|")
    pid, _, start = rest.partition("|")
    try:
        return local_processes.ProcessIdentity(key, int(pid), int(start))
    except ValueError:
        return local_processes.ProcessIdentity("", 0, 0)


_CLAIM_SQL = {}


def claim_job(job_id=None, now=None, message_id=None):
    """Atomically take a job for running -- by its id, or by its message's id
    (what the task carries) -- with one conditional UPDATE ... RETURNING: of
    two deliveries of its task only one claims it. A running job is taken
    only once its lease has expired (its attempt died), and is then told so.

    Returns (job id, message id, Attempt), or None if done or running elsewhere."""
    now = now or timezone.now()
    Status = ProcessingJob.Status
    key = "id" if message_id is None else "message_id"
    if key not in _CLAIM_SQL:
        table = connection.ops.quote_name(ProcessingJob._meta.db_table)
        # SET expressions read the row as it was: last_outcome sees the old status.
        _CLAIM_SQL[key] = (
            f"UPDATE {table} SET "
            "last_outcome = CASE WHEN status = %s THEN %s ELSE last_outcome END, "
            "status = %s, started_at = %s, lease_expires_at = %s, claimed_by = %s, "
            "attempts = attempts + 1 "
            f"WHERE {key} = %s AND (status IN (%s, %s) OR (status = %s AND "
            "(lease_expires_at < %s OR (lease_expires_at IS NULL AND started_at < %s)))) "
            "RETURNING id, message_id, attempts, last_outcome, error"
        )
    adapt = connection.ops.adapt_datetimefield_value
    lease = timedelta(seconds=job_lease_seconds())
    params = [
        Status.RUNNING,
        ProcessingJob.Outcome.DIED,
        Status.RUNNING,
        adapt(now),
        adapt(now + lease),
        claimant(),
        job_id if message_id is None else message_id,
        Status.PENDING,
        Status.QUEUED,
        Status.RUNNING,
        adapt(now),
        adapt(now - lease),  # claimed before leases existed
    ]
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL[key], params)
        row = cursor.fetchone()
    if row is None:
        return None
    job_pk, message_pk, attempts, outcome, error = row
    return job_pk, message_pk, Attempt(attempts, outcome, (error or "")[:2000])


def call_handler(handler, message, attempt):
    """Call `handler` with the attempt if it takes one (a parameter named
    `attempt`, or **kwargs); handlers written as `handler(message)` still work."""
    try:
        params = inspect.signature(handler).parameters
    except (TypeError, ValueError):
        params = {}
    takes_attempt = "attempt" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )
    return handler(message, attempt=attempt) if takes_attempt else handler(message)


def reply_idempotency_key(message, index=0):
    """One key per inbound message and reply index: a retry that produces its
    reply again finds it already queued instead of queueing a second one."""
    return f"reply:{message.wa_message_id}:{index}"


class _Superseded(Exception):
    """This attempt lost its job (lease expired and another attempt took it)."""


def run_processing_job(job_id):
    """Run the handler of job `job_id` once; record the outcome on the row.

    Returns the job's status afterwards (succeeded, failed, or pending when a
    failed attempt will be retried), "skipped" when there was nothing to
    claim, or "superseded" when this attempt outlived its lease and another
    took the job over (nothing of this attempt is committed)."""
    return _run(claim_job(job_id))


def _run(claimed):
    if claimed is None:
        return "skipped"
    job_id, message_id, attempt = claimed
    message = InboundMessage.objects.select_related("company", "contact", "chat__contact").get(
        pk=message_id
    )
    mine = ProcessingJob.objects.filter(
        pk=job_id, status=ProcessingJob.Status.RUNNING, attempts=attempt.number
    )
    path = handler_path_for(message.company)
    verdict = message.job_verdict()
    if verdict:  # a person has the chat, or the client opted out: no handler
        if not mine.update(
            status=ProcessingJob.Status.SUCCEEDED,
            handler="",
            result=verdict,
            error="",
            lease_expires_at=None,
            finished_at=timezone.now(),
        ):
            return "superseded"
        return ProcessingJob.Status.SUCCEEDED
    try:
        handler = load_handler(path)
        if is_turn_handler(handler):
            # Answered with its chat's turn: the job is finished by the
            # turn's outcome (services.turns), not here.
            if not join_turn(job_id, attempt.number, message, path):
                raise _Superseded
            return ProcessingJob.Status.IN_TURN
        result = call_handler(handler, message, attempt)
        if result is None:
            result = HandlerResult()
        if not isinstance(result, HandlerResult):
            raise HandlerError(
                f"handler {path!r} returned {type(result).__name__}, not HandlerResult"
            )
        note = result.note[:2000] or ("replied" if result.reply_text else "no reply")
        with transaction.atomic():
            replies = [result.reply_text, *result.more_replies] if result.reply_text else []
            for index, text in enumerate(replies):
                try:
                    queue_outbound_message(
                        message.company_id,
                        message.reply_jid,
                        text,
                        idempotency_key=reply_idempotency_key(message, index),
                        # The first part is "the" reply (one per message).
                        in_reply_to=message if index == 0 else None,
                        author=Author.HANDLER,
                    )
                except IdempotencyConflict:
                    # An earlier attempt already queued a different reply:
                    # that one stands (it may be on its way to the client).
                    note = f"{note}; kept the reply an earlier attempt queued"[:2000]
                    break
                except OptedOut:
                    note = f"{note}; not sent: the client opted out"[:2000]
                    break
            # The reply commits only with this attempt's success (fenced by
            # the attempt number): an attempt that lost its lease adds nothing.
            if not _succeed(job_id, attempt.number, path, note):
                raise _Superseded
        return ProcessingJob.Status.SUCCEEDED
    except _Superseded:
        logger.warning("processing job %s: attempt %d was superseded", job_id, attempt.number)
        return "superseded"
    except (Exception, TimeoutException) as exc:
        # A transient error with attempts left: back to pending, and the sweeper
        # re-enqueues it at its next round (the retry delay). A permanent error
        # or no attempts left: failed for good (an operator can retry it).
        timed_out = isinstance(exc, TimeoutException)
        final = getattr(exc, "permanent", False) or (
            attempt.number >= settings.WHATSAPP["JOB_MAX_ATTEMPTS"]
        )
        status = ProcessingJob.Status.FAILED if final else ProcessingJob.Status.PENDING
        logger.exception(
            "processing job %s failed in handler %s (attempt %d%s)",
            job_id,
            path,
            attempt.number,
            ", giving up" if final else ", will retry",
        )
        mine.update(
            status=status,
            handler=path,
            last_outcome=(
                ProcessingJob.Outcome.TIMED_OUT if timed_out else ProcessingJob.Outcome.FAILED
            ),
            lease_expires_at=None,
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"[:8000],
            finished_at=timezone.now() if final else None,
        )
        if timed_out:
            raise  # django-q2 replaces the worker
        return status


_SUCCEED_SQL = None


def _succeed(job_id, attempt_number, path, note):
    """Mark this attempt's job succeeded, if it still holds it: 1, else 0 (one
    statement, its SQL built once: this runs once per message)."""
    global _SUCCEED_SQL
    if _SUCCEED_SQL is None:
        table = connection.ops.quote_name(ProcessingJob._meta.db_table)
        _SUCCEED_SQL = (
            f"UPDATE {table} SET status = %s, handler = %s, result = %s, error = '', "
            "lease_expires_at = NULL, finished_at = %s "
            "WHERE id = %s AND status = %s AND attempts = %s"
        )
    params = [
        ProcessingJob.Status.SUCCEEDED,
        path,
        note,
        connection.ops.adapt_datetimefield_value(timezone.now()),
        job_id,
        ProcessingJob.Status.RUNNING,
        attempt_number,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_SUCCEED_SQL, params)
        return cursor.rowcount


def run_message_job(message_id):
    """Run the processing job of inbound message `message_id` (see run_processing_job)."""
    claimed = claim_job(message_id=message_id)
    if claimed is None and not ProcessingJob.objects.filter(message_id=message_id).exists():
        logger.warning("no processing job for inbound message %s", message_id)
    return _run(claimed)

