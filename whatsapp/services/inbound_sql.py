"""The SQL of the inbound hot path (whatsapp/services/inbound.py), built once
from the models' table names.

* Both databases: `INSERT ... SELECT ... WHERE EXISTS (company) ON CONFLICT
  (company_id, wa_message_id) DO NOTHING RETURNING id` stores a message once
  and checks its company in the same statement (SQLite >= 3.35 and PostgreSQL).
  INSERT ... SELECT rather than VALUES for the company check; SQLite needs the
  WHERE clause there to parse ON CONFLICT after a SELECT.
* PostgreSQL: data-modifying CTEs put the message, its job, the session
  counter and "does the company have webhook endpoints?" into one statement,
  and a redelivery's two counters into another: one round trip each.
* SQLite has no data-modifying CTEs, but runs in-process: separate statements
  cost no round trips there.
* PostgreSQL: every transaction that records messages first locks the session
  rows of its companies in company order (`lock_sessions_pg`), so two
  concurrent group commits never deadlock (see services/inbound.py).
"""

from dataclasses import dataclass

from django.db import connection

from companies.models import Company
from whatsapp.models import InboundMessage, ProcessingJob, WebhookEndpoint, WhatsAppSession

MESSAGE_COLUMNS = [
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


@dataclass(frozen=True)
class InboundStatements:
    insert_message: str
    count_redelivery: str
    count_session_duplicate: str
    count_message: str
    has_endpoints: str
    insert_all_pg: str
    count_duplicate_pg: str
    lock_sessions_pg: str


_STATEMENTS = None


def inbound_statements():
    global _STATEMENTS
    if _STATEMENTS is None:
        _STATEMENTS = _build()
    return _STATEMENTS


def _build():
    q = connection.ops.quote_name
    messages = q(InboundMessage._meta.db_table)
    jobs = q(ProcessingJob._meta.db_table)
    sessions = q(WhatsAppSession._meta.db_table)
    endpoints = q(WebhookEndpoint._meta.db_table)
    companies = q(Company._meta.db_table)
    # params: the 12 message columns, then the company id (13)
    insert_message = (
        f"INSERT INTO {messages} ({', '.join(MESSAGE_COLUMNS)}, redeliveries) "
        f"SELECT {', '.join(['%s'] * len(MESSAGE_COLUMNS))}, 0 "
        f"WHERE EXISTS (SELECT 1 FROM {companies} WHERE id = %s) "
        "ON CONFLICT (company_id, wa_message_id) DO NOTHING RETURNING id"
    )
    has_endpoints = f"SELECT 1 FROM {endpoints} WHERE company_id = %s AND is_active LIMIT 1"
    return InboundStatements(
        insert_message=insert_message,
        count_redelivery=(
            f"UPDATE {messages} SET redeliveries = redeliveries + 1 "
            "WHERE company_id = %s AND wa_message_id = %s"
        ),
        count_session_duplicate=(
            f"UPDATE {sessions} SET duplicates_blocked = duplicates_blocked + 1, "
            "last_event_at = %s WHERE company_id = %s"
        ),
        # SQLite: the counter UPDATE also answers the webhook question.
        count_message=(
            f"UPDATE {sessions} SET messages_in = messages_in + 1, last_event_at = %s "
            f"WHERE company_id = %s RETURNING ({has_endpoints})"
        ),
        has_endpoints=has_endpoints,
        # params: the 13 above, then job status, enqueue count, created at,
        # enqueued at (or None), the session's last event, company id twice.
        insert_all_pg=(
            f"WITH m AS ({insert_message}), "
            f"j AS (INSERT INTO {jobs} (message_id, status, attempts, enqueue_count, task_id, "
            "handler, result, error, created_at, enqueued_at) "
            "SELECT id, %s, 0, %s, '', '', '', '', CAST(%s AS timestamptz), "
            "CAST(%s AS timestamptz) FROM m RETURNING id), "
            f"s AS (UPDATE {sessions} SET messages_in = messages_in + 1, last_event_at = %s "
            "WHERE company_id = %s AND EXISTS (SELECT 1 FROM m)) "
            f"SELECT m.id, j.id, EXISTS ({has_endpoints}) FROM m, j"
        ),
        # params: a list of company ids. LockRows runs above the Sort: the rows
        # are locked in company order, whoever runs it.
        lock_sessions_pg=(
            f"SELECT 1 FROM {sessions} WHERE company_id = ANY(%s) "
            "ORDER BY company_id FOR UPDATE"
        ),
        # params: company id, message id, the session's last event, company id.
        count_duplicate_pg=(
            f"WITH r AS (UPDATE {messages} SET redeliveries = redeliveries + 1 "
            "WHERE company_id = %s AND wa_message_id = %s RETURNING 1), "
            f"s AS (UPDATE {sessions} SET duplicates_blocked = duplicates_blocked + 1, "
            "last_event_at = %s WHERE company_id = %s AND EXISTS (SELECT 1 FROM r)) "
            "SELECT count(*) FROM r"
        ),
    )
