"""The worker's outbound sending: claim queued rows, record the outcome.

The API and the processing jobs only queue rows (services.outbound). The
worker that holds a company's lease sends them through its logged-in client
-- the one it already has; a send never creates a client -- and records
WhatsApp's message id. Transient failures go back to `queued` with
exponential backoff (full jitter) until WHATSAPP["SEND_MAX_ATTEMPTS"];
permanent ones are marked `failed` with the reason.

Exactly once through the sender's message id: when the transport sends with
an id we choose (`sends_with_id`), the id is stored on the row when it is
claimed, before the first attempt, and every later attempt uses the same id.
WhatsApp's recipient ignores a second message with an id it already has, so
a row left in `sending` by a worker that died mid-send is simply sent again
with its id by the next owner. Only where the id is WhatsApp's choice (neonize
0.5.2 cannot pass ours, see whatsapp/transport/neonize_client.py) is such a
row's outcome unknown: it is marked failed with that reason rather than
risking a duplicate.
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
from .live import chats_changed
from .webhooks import emit_outbound_status

logger = logging.getLogger(__name__)

Status = OutboundMessage.Status
MIN_SEND_RETRY = 1.0
INTERRUPTED = "outcome unknown: the worker stopped while sending; not retried to avoid a duplicate"
RESENT = "interrupted while sending; sent again with the same message id (WhatsApp keeps one)"


@dataclass(frozen=True)
class Claimed:
    """A row claimed for sending: what the client needs, nothing more."""

    pk: int
    to_jid: str
    text: str
    attempts: int
    message_id: str = ""  # the id to send with ("" = WhatsApp chooses)
    to_phone: str = ""
    resolve: bool = False  # ask WhatsApp where `to_phone` lives first (services.recipients)
    media_id: int | None = None  # a file or a location to send (services.media_outbound)


def claim_outbound(held: Held, limit=20, now=None, with_id=False):
    """Move up to `limit` due rows of the held company from queued to sending.

    Returns the claimed rows (oldest first). Nothing is claimed unless the
    lease is still ours; each row is claimed with a conditional UPDATE.

    `with_id` (the transport sends with our id): the same UPDATE stores the
    row's message id -- a new one on the first attempt, the same one on every
    later attempt -- so a row in `sending` carries an id exactly when a resend
    with it is safe. Without, the id is cleared (WhatsApp's comes back)."""
    now = now or timezone.now()
    if not holds_lease(held):
        return []
    due = (
        OutboundMessage.objects.filter(company_id=held.company_id, status=Status.QUEUED)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .order_by("created_at", "id")
        .values_list(
            "pk", "to_jid", "text", "attempts", "wa_message_id", "to_phone",
            "resolve_recipient", "media__id",
        )[:limit]
    )
    claimed = []
    for pk, to_jid, text, attempts, old_id, to_phone, resolve, media_id in list(due):
        # The id it keeps (an earlier attempt's) or gets; the UPDATE is
        # conditional on the row being as read, so what is returned is what
        # was stored (no query to read it back).
        wa_id = (old_id or OutboundMessage.new_wa_message_id()) if with_id else ""
        won = OutboundMessage.objects.filter(
            pk=pk, status=Status.QUEUED, attempts=attempts, wa_message_id=old_id
        ).update(
            status=Status.SENDING,
            attempts=F("attempts") + 1,
            next_attempt_at=None,
            wa_message_id=wa_id,
        )
        if won:
            claimed.append(
                Claimed(
                    pk, to_jid, text, attempts + 1, wa_id, to_phone, resolve and bool(to_phone),
                    media_id,
                )
            )
    return claimed


def companies_with_due_outbound(company_ids, now=None):
    """Which of `company_ids` have queued rows due now (one query per round)."""
    now = now or timezone.now()
    return set(
        OutboundMessage.objects.filter(company_id__in=list(company_ids), status=Status.QUEUED)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .values_list("company_id", flat=True)
        .distinct()
    )


def mark_outbound_sent(outbound_id, wa_message_id, company_id=None):
    """WhatsApp accepted the message. Applies even if the row was meanwhile marked
    failed as `outcome unknown` (the truth arrived late); never downgrades.
    `company_id`: the row's company when the caller knows it (a query less)."""
    now = timezone.now()
    with transaction.atomic():
        updated = OutboundMessage.objects.filter(
            pk=outbound_id, status__in=[Status.SENDING, Status.QUEUED, Status.FAILED]
        )
        if company_id is not None:
            updated = updated.filter(company_id=company_id)
        updated = updated.update(
            status=Status.SENT,
            wa_message_id=str(wa_message_id)[:128],
            sent_at=now,
            last_error="",
            next_attempt_at=None,
        )
        if updated:
            if company_id is None:
                company_id = (
                    OutboundMessage.objects.filter(pk=outbound_id)
                    .values_list("company_id", flat=True)
                    .get()
                )
            WhatsAppSession.objects.filter(company_id=company_id).update(
                messages_out=F("messages_out") + 1
            )
            emit_outbound_status([outbound_id], company_id=company_id)
    return bool(updated)


def mark_sent_and_claim_next(outbound_id, wa_message_id, held: Held, with_id=False):
    """mark_outbound_sent, then claim_outbound(held, 1) -- one transaction, one
    call on the worker's database thread instead of two. The claim checks the
    lease as claim_outbound always does; the sent row is recorded either way."""
    with transaction.atomic():
        mark_outbound_sent(outbound_id, wa_message_id, company_id=held.company_id)
        return claim_outbound(held, 1, with_id=with_id)


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


def recover_interrupted_sends(company_id, resend=True):
    """Rows a previous owner left in `sending` (it died or was cut off mid-send).

    Called by a worker that just acquired the company's lease, before it sends.
    Returns (rows queued again, rows failed as outcome unknown)."""
    return recover_interrupted_sends_of([company_id], resend).get(company_id, (0, 0))


def recover_interrupted_sends_of(company_ids, resend=True):
    """recover_interrupted_sends for many companies in one transaction (a worker
    taking over many sessions at once). Returns {company id: (resent, failed)}.

    A row that carries its message id was being sent with it: it is queued again
    at once and sent with the same id, which WhatsApp keeps only once. A row
    without one (WhatsApp chooses the id), or any row when this worker's
    transport cannot send with our id (`resend` false), may or may not have
    arrived: it is failed as outcome unknown rather than risk a duplicate."""
    with transaction.atomic():
        rows = list(
            OutboundMessage.objects.select_for_update()
            .filter(company_id__in=list(company_ids), status=Status.SENDING)
            .order_by("pk")
            .values_list("pk", "company_id", "wa_message_id")
        )
        if not rows:
            return {}
        again = [pk for pk, _c, wa_id in rows if resend and wa_id]
        lost = [pk for pk, _c, wa_id in rows if not (resend and wa_id)]
        if again:
            OutboundMessage.objects.filter(pk__in=again, status=Status.SENDING).update(
                status=Status.QUEUED, last_error=RESENT, next_attempt_at=None
            )
        if lost:
            OutboundMessage.objects.filter(pk__in=lost, status=Status.SENDING).update(
                status=Status.FAILED, last_error=INTERRUPTED, next_attempt_at=None
            )
            emit_outbound_status(lost)
    requeued = set(again)
    resent = Counter(c for pk, c, _w in rows if pk in requeued)
    failed = Counter(c for pk, c, _w in rows if pk not in requeued)
    return {c: (resent[c], failed[c]) for c in set(resent) | set(failed)}


RECEIPT_STATUS = {"delivered": Status.DELIVERED, "read": Status.READ, "played": Status.READ}
_ORDER = [Status.SENT, Status.DELIVERED, Status.READ]


def record_receipts(company_id, receipts):
    """record_receipt for each (message ids, kind), in order, in one transaction."""
    with transaction.atomic():
        moved = sum(record_receipt(company_id, ids, kind) for ids, kind in receipts)
        if moved:
            chats_changed([company_id])  # the chat pages' ticks
        return moved


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
