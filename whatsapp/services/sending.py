"""The worker's outbound sending: claim queued rows, record the outcome.

The API and the processing jobs only queue rows (services.outbound). The
worker that holds a company's lease sends them through its logged-in client
-- the one it already has; a send never creates a client -- and records
WhatsApp's message id. Transient failures go back to `queued` with
exponential backoff (full jitter) until WHATSAPP["SEND_MAX_ATTEMPTS"];
permanent ones are marked `failed` with the reason.

At-most-once on an unknown outcome: a row left in `sending` by a worker that
died mid-send may or may not have reached WhatsApp, and neonize gives us no
way to send with our own message id (to let WhatsApp dedupe). Such rows are
marked failed with an explicit reason rather than risking a duplicate.
"""

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from whatsapp.models import OutboundMessage, WhatsAppSession, backoff_delay

from .leases import Held, holds_lease
from .webhooks import emit_outbound_status

logger = logging.getLogger(__name__)

Status = OutboundMessage.Status
MIN_SEND_RETRY = 1.0
INTERRUPTED = "outcome unknown: the worker stopped while sending; not retried to avoid a duplicate"


@dataclass(frozen=True)
class Claimed:
    """A row claimed for sending: what the client needs, nothing more."""

    pk: int
    to_jid: str
    text: str
    attempts: int


def claim_outbound(held: Held, limit=20, now=None):
    """Move up to `limit` due rows of the held company from queued to sending.

    Returns the claimed rows (oldest first). Nothing is claimed unless the
    lease is still ours; each row is claimed with a conditional UPDATE."""
    now = now or timezone.now()
    if not holds_lease(held):
        return []
    due = (
        OutboundMessage.objects.filter(company_id=held.company_id, status=Status.QUEUED)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .order_by("created_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    claimed = []
    for pk in list(due):
        won = OutboundMessage.objects.filter(pk=pk, status=Status.QUEUED).update(
            status=Status.SENDING, attempts=F("attempts") + 1, next_attempt_at=None
        )
        if won:
            claimed.append(pk)
    rows = OutboundMessage.objects.filter(pk__in=claimed).order_by("created_at", "id")
    return [Claimed(r.pk, r.to_jid, r.text, r.attempts) for r in rows]


def companies_with_due_outbound(company_ids, now=None):
    """Which of `company_ids` have queued rows due now (one query per round)."""
    now = now or timezone.now()
    return set(
        OutboundMessage.objects.filter(company_id__in=list(company_ids), status=Status.QUEUED)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .values_list("company_id", flat=True)
        .distinct()
    )


def mark_outbound_sent(outbound_id, wa_message_id):
    """WhatsApp accepted the message. Applies even if the row was meanwhile marked
    failed as `outcome unknown` (the truth arrived late); never downgrades."""
    now = timezone.now()
    with transaction.atomic():
        updated = OutboundMessage.objects.filter(
            pk=outbound_id, status__in=[Status.SENDING, Status.QUEUED, Status.FAILED]
        ).update(
            status=Status.SENT,
            wa_message_id=str(wa_message_id)[:128],
            sent_at=now,
            last_error="",
            next_attempt_at=None,
        )
        if updated:
            company_id = (
                OutboundMessage.objects.filter(pk=outbound_id)
                .values_list("company_id", flat=True)
                .get()
            )
            WhatsAppSession.objects.filter(company_id=company_id).update(
                messages_out=F("messages_out") + 1
            )
            emit_outbound_status([outbound_id])
    return bool(updated)


def mark_outbound_failed(outbound_id, error, permanent=False, rng=None):
    """Record a failed attempt. Returns ("failed", None) or ("retry", delay_seconds)."""
    conf = settings.WHATSAPP
    now = timezone.now()
    with transaction.atomic():
        row = (
            OutboundMessage.objects.filter(pk=outbound_id, status=Status.SENDING)
            .values_list("attempts", flat=True)
            .first()
        )
        if row is None:
            return ("gone", None)
        attempts = row
        if permanent or attempts >= conf["SEND_MAX_ATTEMPTS"]:
            why = "permanent" if permanent else f"gave up after {attempts} attempts"
            OutboundMessage.objects.filter(pk=outbound_id, status=Status.SENDING).update(
                status=Status.FAILED,
                last_error=f"{error} ({why})"[:2000],
                next_attempt_at=None,
            )
            emit_outbound_status([outbound_id])
            return ("failed", None)
        kwargs = {"rng": rng} if rng is not None else {}
        delay = backoff_delay(attempts - 1, conf["BACKOFF_BASE"], conf["BACKOFF_CAP"], **kwargs)
        delay = max(delay, min(MIN_SEND_RETRY, conf["BACKOFF_BASE"]))
        OutboundMessage.objects.filter(pk=outbound_id, status=Status.SENDING).update(
            status=Status.QUEUED,
            last_error=f"{error} (attempt {attempts}; retry in {delay:.1f}s)"[:2000],
            next_attempt_at=now + timedelta(seconds=delay),
        )
        return ("retry", delay)


def release_claimed(outbound_id, reason):
    """Put a claimed row back untouched (the client went away before sending it)."""
    return bool(
        OutboundMessage.objects.filter(pk=outbound_id, status=Status.SENDING).update(
            status=Status.QUEUED, attempts=F("attempts") - 1, last_error=str(reason)[:2000]
        )
    )


def fail_interrupted_sends(company_id, exclude=()):
    """Rows a previous owner left in `sending` (it died mid-send): mark them failed.

    Called by a worker that just acquired the company's lease, before it sends."""
    return fail_interrupted_sends_of([company_id], exclude).get(company_id, 0)


def fail_interrupted_sends_of(company_ids, exclude=()):
    """fail_interrupted_sends for many companies in one transaction (a worker
    taking over many sessions at once). Returns {company id: rows failed}."""
    with transaction.atomic():
        rows = list(
            OutboundMessage.objects.select_for_update()
            .filter(company_id__in=list(company_ids), status=Status.SENDING)
            .exclude(pk__in=list(exclude))
            .values_list("pk", "company_id")
        )
        if not rows:
            return {}
        ids = [pk for pk, _company in rows]
        OutboundMessage.objects.filter(pk__in=ids, status=Status.SENDING).update(
            status=Status.FAILED, last_error=INTERRUPTED, next_attempt_at=None
        )
        emit_outbound_status(ids)
    return dict(Counter(company_id for _pk, company_id in rows))


RECEIPT_STATUS = {"delivered": Status.DELIVERED, "read": Status.READ, "played": Status.READ}
_ORDER = [Status.SENT, Status.DELIVERED, Status.READ]


def record_receipt(company_id, message_ids, kind):
    """Delivery/read receipts for our messages; status only moves forward."""
    target = RECEIPT_STATUS.get(kind)
    if target is None or not message_ids:
        return 0
    earlier = _ORDER[: _ORDER.index(target)]
    with transaction.atomic():
        rows = OutboundMessage.objects.filter(
            company_id=company_id, wa_message_id__in=list(message_ids)[:500], status__in=earlier
        )
        ids = list(rows.values_list("pk", flat=True))
        moved = OutboundMessage.objects.filter(pk__in=ids, status__in=earlier).update(status=target)
        emit_outbound_status(ids)
    return moved
