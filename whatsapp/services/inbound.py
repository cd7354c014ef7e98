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
"""

import logging
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from companies.models import Company
from whatsapp.models import InboundMessage, WebhookEndpoint, WhatsAppSession
from whatsapp.transport.normalize import NormalizedMessage

from .jobs import create_job
from .webhooks import emit_message_received

logger = logging.getLogger(__name__)


class UnknownCompany(LookupError):
    """The company id does not exist (or is not active)."""


@dataclass(frozen=True)
class InboundOutcome:
    CREATED = "created"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"

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
    if not isinstance(message, NormalizedMessage):
        raise TypeError("record_inbound_message takes a NormalizedMessage")
    try:
        company_id = int(company_id)
    except (TypeError, ValueError):
        raise UnknownCompany(f"company {company_id!r} does not exist") from None
    now = timezone.now()
    if not message.is_client_message:
        WhatsAppSession.objects.filter(company_id=company_id).update(last_event_at=now)
        return InboundOutcome(InboundOutcome.IGNORED, reason=message.ignore_reason)

    sql = _statements()
    when = connection.ops.adapt_datetimefield_value(now)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            sql.insert_message,
            [
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
            ],
        )
        row = cursor.fetchone()
        if row is None:  # a duplicate -- or no such company
            cursor.execute(sql.count_redelivery, [company_id, message.message_id])
            if not cursor.rowcount:
                raise UnknownCompany(f"company {company_id} does not exist")
            cursor.execute(sql.count_duplicate, [when, company_id])
            return InboundOutcome(InboundOutcome.DUPLICATE, reason="already recorded")
        message_pk = row[0]
        create_job(cursor, message_pk, now)
        # The counter UPDATE also answers "does the company have webhook
        # endpoints?" (one statement instead of two on every message).
        cursor.execute(sql.count_message, [when, company_id, company_id])
        counted = cursor.fetchone()
        if counted is None:  # no session row: ask directly
            cursor.execute(sql.has_endpoints, [company_id])
            counted = (cursor.fetchone(),)
        if counted[0] is not None:  # webhooks: the event commits with the message
            emit_message_received(InboundMessage.objects.get(pk=message_pk))
    return InboundOutcome(InboundOutcome.CREATED, message_pk=message_pk)


@dataclass(frozen=True)
class _Statements:
    insert_message: str
    count_redelivery: str
    count_duplicate: str
    count_message: str
    has_endpoints: str


_SQL = None


def _statements():
    """The hot path's SQL, built once from the models' table and column names."""
    global _SQL
    if _SQL is None:
        q = connection.ops.quote_name
        messages = q(InboundMessage._meta.db_table)
        sessions = q(WhatsAppSession._meta.db_table)
        endpoints = q(WebhookEndpoint._meta.db_table)
        companies = q(Company._meta.db_table)
        columns = [
            "company_id",
            "wa_message_id",
            "chat_jid",
            "sender_jid",
            "sender_phone",
            "sender_lid",
            "push_name",
            "kind",
            "text",
            "is_group",
            "sent_at",
            "received_at",
        ]
        _SQL = _Statements(
            # INSERT ... SELECT (not VALUES) for the company check; SQLite needs
            # the WHERE clause there to parse ON CONFLICT after a SELECT.
            insert_message=(
                f"INSERT INTO {messages} ({', '.join(columns)}, redeliveries) "
                f"SELECT {', '.join(['%s'] * len(columns))}, 0 "
                f"WHERE EXISTS (SELECT 1 FROM {companies} WHERE id = %s) "
                "ON CONFLICT (company_id, wa_message_id) DO NOTHING RETURNING id"
            ),
            count_redelivery=(
                f"UPDATE {messages} SET redeliveries = redeliveries + 1 "
                "WHERE company_id = %s AND wa_message_id = %s"
            ),
            count_duplicate=(
                f"UPDATE {sessions} SET duplicates_blocked = duplicates_blocked + 1, "
                "last_event_at = %s WHERE company_id = %s"
            ),
            count_message=(
                f"UPDATE {sessions} SET messages_in = messages_in + 1, last_event_at = %s "
                f"WHERE company_id = %s RETURNING (SELECT 1 FROM {endpoints} "
                "WHERE company_id = %s AND is_active LIMIT 1)"
            ),
            has_endpoints=(
                f"SELECT 1 FROM {endpoints} WHERE company_id = %s AND is_active LIMIT 1"
            ),
        )
    return _SQL
