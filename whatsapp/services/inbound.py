"""Recording inbound messages: one WhatsApp message, exactly one row and one job.

Dedupe is a database fact: one `INSERT ... ON CONFLICT (company, message id)
DO NOTHING RETURNING id` either stores the message or, for every further
delivery -- a redelivery after reconnect, a second worker, a replayed event --
inserts nothing, and that delivery is counted instead of getting a second job.
The same statement checks the company exists (`WHERE EXISTS`), so an unknown
company stores nothing and costs no extra query.

This is the hot path of every worker (bench/inbound_throughput.py): raw SQL
on one cursor, no savepoint, no ORM query compilation. Both SQLite (>= 3.35)
and PostgreSQL support `ON CONFLICT DO NOTHING RETURNING`.

Lock order (PostgreSQL): a transaction that records messages first locks the
session rows of all its companies, sorted by company id, in one statement.
Every later lock it takes -- a message's unique-index entry, its session
counter -- belongs to one of those companies, so two transactions that record
for the same companies (two workers around a hand-over, in any order, even
the same redelivered messages) queue behind each other instead of
deadlocking. SQLite serialises writers anyway.
"""

import logging
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from companies.models import Company
from whatsapp.models import InboundMessage, ProcessingJob, WhatsAppSession
from whatsapp.transport.normalize import NormalizedMessage

from .conversations import link_inbound, record_person_reply
from .inbound_sql import inbound_statements
from .jobs import broker_is_transactional, create_job, enqueue_inserted_job, enqueue_together
from .webhooks import emit_message_received

logger = logging.getLogger(__name__)
Status = ProcessingJob.Status


class UnknownCompany(LookupError):
    """The company id does not exist (or is not active)."""


@dataclass(frozen=True)
class InboundOutcome:
    CREATED = "created"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    BY_PERSON = "by_person"  # typed on the business's phone: an outbound row, no job

    status: str
    message_pk: int | None = None
    reason: str = ""

    @property
    def created(self):
        return self.status == self.CREATED


def record_inbound_message(company_id, message: NormalizedMessage) -> InboundOutcome:
    """Store `message` for `company_id` once and enqueue its one processing job.

    Returns an InboundOutcome: created, duplicate (counted, nothing new) or
    ignored (own messages, status broadcasts, reactions, edits...). Raises
    UnknownCompany, storing nothing, when the company does not exist."""
    checked = _checked(company_id, message)
    if isinstance(checked, Exception):
        raise checked
    with transaction.atomic():
        _lock_sessions([checked[0]])
        return _record(*checked, _companies([checked[0]]))


def record_inbound_messages(items):
    """Group commit: record many (company_id, NormalizedMessage) pairs in ONE
    transaction, so the messages that arrived while the previous commit ran
    share one commit (the worker's InboundBatcher calls this).

    Returns one entry per item, in order: its InboundOutcome, or the exception
    record_inbound_message would have raised for it (UnknownCompany,
    TypeError). If the database refuses any statement, the whole transaction
    is rolled back and every item is recorded again on its own, so one bad
    message never costs the others their row (and with the database down each
    item fails, which the worker then does not acknowledge)."""
    checked = [_checked(company_id, message) for company_id, message in items]
    try:
        with transaction.atomic(), enqueue_together():
            ids = [c[0] for c in checked if not isinstance(c, Exception)]
            _lock_sessions(ids)
            companies = _companies(ids)
            return [
                c if isinstance(c, Exception) else _record_or_refusal(*c, companies)
                for c in checked
            ]
    except Exception:  # the database, or its driver, refused something
        logger.warning(
            "a batch of %d inbound messages failed; recording them one by one",
            len(checked),
            exc_info=True,
        )
    results = []
    for c in checked:
        if isinstance(c, Exception):
            results.append(c)
            continue
        try:
            with transaction.atomic():
                _lock_sessions([c[0]])
                results.append(_record(*c, _companies([c[0]])))
        except Exception as exc:
            results.append(exc)
    return results


def _lock_sessions(company_ids):
    """PostgreSQL: lock the companies' session rows in company order before
    anything else in the transaction (the lock order above)."""
    if connection.vendor != "postgresql" or not company_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(inbound_statements().lock_sessions_pg, [sorted(set(company_ids))])


def _checked(company_id, message):
    """(company pk, message), or the refusal as an exception (nothing stored)."""
    if not isinstance(message, NormalizedMessage):
        return TypeError("record_inbound_message takes a NormalizedMessage")
    try:
        return int(company_id), message
    except (TypeError, ValueError):
        return UnknownCompany(f"company {company_id!r} does not exist")


def _companies(company_ids):
    """The companies of a transaction, loaded once (their conversation settings)."""
    return Company.objects.in_bulk(set(company_ids))


def _record_or_refusal(company_id, message, companies):
    """_record inside a batch: an unknown company is that item's result (the
    transaction is still usable); database errors abort the batch."""
    try:
        return _record(company_id, message, companies)
    except UnknownCompany as exc:
        return exc


def _record(company_id, message, companies):
    """The statements of one message (the caller holds the transaction)."""
    now = timezone.now()
    if message.is_person_reply:
        if company_id not in companies:
            raise UnknownCompany(f"company {company_id} does not exist")
        WhatsAppSession.objects.filter(company_id=company_id).update(last_event_at=now)
        stored = record_person_reply(company_id, message, now)
        if stored != "stored":
            return InboundOutcome(InboundOutcome.DUPLICATE, reason=f"own message ({stored})")
        return InboundOutcome(InboundOutcome.BY_PERSON, reason="written by a person")
    if not message.is_client_message:
        WhatsAppSession.objects.filter(company_id=company_id).update(
            last_event_at=now, events_ignored=F("events_ignored") + 1
        )
        return InboundOutcome(InboundOutcome.IGNORED, reason=message.ignore_reason)

    sql = inbound_statements()
    when = connection.ops.adapt_datetimefield_value(now)
    values = [
        company_id,
        message.message_id,
        message.chat_jid,
        message.sender_jid,
        message.sender_phone,
        message.sender_lid,
        message.push_name,
        message.kind,
        message.text,
        message.is_group,
        connection.ops.adapt_datetimefield_value(message.timestamp),
        when,
        company_id,
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One statement (data-modifying CTEs): message, job, session
            # counter and the webhook question in a single round trip.
            queued = broker_is_transactional()
            cursor.execute(
                sql.insert_all_pg,
                values
                + [
                    Status.QUEUED if queued else Status.PENDING,
                    int(queued),
                    when,
                    when if queued else None,
                    when,
                    company_id,
                    company_id,
                ],
            )
            row = cursor.fetchone()
            if row is None:
                return _count_duplicate(cursor, sql, company_id, message, when)
            message_pk, job_id, has_endpoints = row
            enqueue_inserted_job(cursor, job_id, message_pk)
        else:
            cursor.execute(sql.insert_message, values)
            row = cursor.fetchone()
            if row is None:
                return _count_duplicate(cursor, sql, company_id, message, when)
            message_pk = row[0]
            create_job(cursor, message_pk, when)
            # The counter UPDATE also answers "does the company have webhook
            # endpoints?" (one statement instead of two on every message).
            cursor.execute(sql.count_message, [when, company_id, company_id])
            counted = cursor.fetchone()
            if counted is None:  # no session row: ask directly
                cursor.execute(sql.has_endpoints, [company_id])
                counted = (cursor.fetchone(),)
            has_endpoints = counted[0] is not None
    # Its contact and chat (LID <-> phone learned, opt-out, needs-a-person).
    link_inbound(companies[company_id], message, message_pk, now)
    if has_endpoints:  # webhooks: the event commits with the message
        emit_message_received(InboundMessage.objects.get(pk=message_pk))
    return InboundOutcome(InboundOutcome.CREATED, message_pk=message_pk)


def _count_duplicate(cursor, sql, company_id, message, when):
    """Nothing was inserted: a redelivery (counted on the row and the session)
    -- or no such company. Returns the DUPLICATE outcome or raises UnknownCompany."""
    if connection.vendor == "postgresql":
        cursor.execute(sql.count_duplicate_pg, [company_id, message.message_id, when, company_id])
        found = cursor.fetchone()[0]
    else:
        cursor.execute(sql.count_redelivery, [company_id, message.message_id])
        found = cursor.rowcount
        if found:
            cursor.execute(sql.count_session_duplicate, [when, company_id])
    if not found:
        raise UnknownCompany(f"company {company_id} does not exist")
    return InboundOutcome(InboundOutcome.DUPLICATE, reason="already recorded")
