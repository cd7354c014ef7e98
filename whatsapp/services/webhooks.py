"""Webhook events: recorded with the change that caused them, delivered by jobs.

* `emit_event` writes one WebhookDelivery per subscribed endpoint in the
  caller's transaction (an outbox: a rolled-back change emits nothing, a
  committed one cannot lose its event) and enqueues a django-q2 task for
  each (in the transaction with the ORM broker, on commit with Redis).
* `deliver_webhook` (the task) claims the row with one conditional UPDATE,
  POSTs it signed, records a WebhookAttempt, and either marks it delivered,
  schedules the next attempt (exponential backoff with full jitter, stored in
  `next_attempt_at`), or dead-letters it after MAX_ATTEMPTS.
* `dispatch_due_webhooks` (scheduled every minute) enqueues deliveries whose
  retry is due, pending ones whose task was lost, and ones stuck
  `delivering` past the request timeout (the cluster died mid-request).

Delivery is at-least-once: receivers dedupe on the event id (also sent as
the X-Aiadmin-Event-Id header), which never changes across retries and replays.
"""

import logging
import random
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django_q.tasks import async_task

from whatsapp.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WhatsAppSession,
)
from whatsapp.models.webhooks import generate_webhook_secret, next_attempt_time

from .jobs import broker_is_transactional
from .webhook_http import encode_body, post_signed

logger = logging.getLogger(__name__)

TASK_PATH = "whatsapp.tasks.deliver_webhook"
Status = WebhookDelivery.Status
PENDING_GRACE = timedelta(seconds=30)  # a fresh pending row's own task is still on its way


def _conf():
    return settings.WHATSAPP_WEBHOOKS


# --- recording events ---------------------------------------------------------
def emit_event(company_id, event_type, data):
    """Record `event_type` for each active endpoint of the company subscribed to it.

    Returns the delivery ids. Never raises: a failure to record an event is
    logged and must not undo the change that caused it (it runs in a savepoint)."""
    if event_type not in WebhookEvent.values:
        raise ValueError(f"unknown webhook event {event_type!r}")
    try:
        with transaction.atomic():
            endpoints = [
                e
                for e in WebhookEndpoint.objects.filter(company_id=company_id, is_active=True)
                if e.wants(event_type)
            ]
            event_id = uuid.uuid4()
            ids = [
                WebhookDelivery.objects.create(
                    endpoint=endpoint,
                    company_id=company_id,
                    event_id=event_id,
                    event_type=event_type,
                    payload=data,
                ).pk
                for endpoint in endpoints
            ]
            _enqueue(ids)
        return ids
    except Exception:
        logger.exception("could not record webhook event %s for company %s", event_type, company_id)
        return []


def _enqueue(delivery_ids):
    if broker_is_transactional():
        _enqueue_now(delivery_ids)
    else:
        transaction.on_commit(lambda: _enqueue_now(delivery_ids, swallow=True))


def _enqueue_now(delivery_ids, swallow=False):
    for pk in delivery_ids:
        try:
            async_task(TASK_PATH, pk, group="webhooks")
        except Exception:
            if not swallow:
                raise
            logger.exception("enqueue of webhook delivery %s failed; the dispatcher retries", pk)


def _iso(moment):
    return moment.isoformat() if moment else None


def message_data(message):
    return {
        "message": {
            "id": message.wa_message_id,
            "pk": message.pk,
            "chat_jid": message.chat_jid,
            "sender_jid": message.sender_jid,
            "sender_phone": message.sender_phone,
            "sender_lid": message.sender_lid,
            "push_name": message.push_name,
            "kind": message.kind,
            "text": message.text,
            "is_group": message.is_group,
            "sent_at": _iso(message.sent_at),
            "received_at": _iso(message.received_at),
        }
    }


def emit_message_received(message):
    return emit_event(message.company_id, WebhookEvent.MESSAGE_RECEIVED, message_data(message))


def emit_outbound_status(outbound_ids, company_id=None):
    """One message.status event per outbound row (after its status changed).
    `company_id`: the rows' company, when the caller knows it (a query less)."""
    from whatsapp.models import OutboundMessage

    ids = list(outbound_ids)
    if not ids:
        return
    rows = OutboundMessage.objects.filter(pk__in=ids).select_related("in_reply_to")
    if company_id is not None:
        rows = rows.filter(company_id=company_id)
        company_ids = {company_id}
    else:
        company_ids = set(rows.values_list("company_id", flat=True))
    subscribed = {
        e.company_id
        for e in WebhookEndpoint.objects.filter(company_id__in=company_ids, is_active=True)
        if e.wants(WebhookEvent.MESSAGE_STATUS)
    }
    if not subscribed:
        return
    for row in rows.filter(company_id__in=subscribed):
        emit_event(
            row.company_id,
            WebhookEvent.MESSAGE_STATUS,
            {
                "message": {
                    "pk": row.pk,
                    "status": row.status,
                    "to_jid": row.to_jid,
                    "to_phone": row.to_phone,
                    "wa_message_id": row.wa_message_id,
                    "idempotency_key": row.idempotency_key,
                    "in_reply_to": row.in_reply_to.wa_message_id if row.in_reply_to else None,
                    "attempts": row.attempts,
                    "error": row.last_error,
                    "sent_at": _iso(row.sent_at),
                }
            },
        )


def emit_session_changes(company_id, previous_state, state, reason="", qr_code=""):
    """After a session write: session.state_changed when the state really changed,
    session.qr_updated when a new QR code was stored."""
    changed = state is not None and previous_state is not None and previous_state != state
    if not (changed or qr_code):
        return
    if not WebhookEndpoint.objects.filter(company_id=company_id, is_active=True).exists():
        return  # the common case: no query for the session summary
    if changed:
        session = _session_summary(company_id)
        emit_event(
            company_id,
            WebhookEvent.SESSION_STATE_CHANGED,
            {
                "session": {
                    **session,
                    "previous_state": previous_state,
                    "state": str(state),
                    "reason": str(reason)[:500],
                }
            },
        )
    if qr_code:
        emit_event(
            company_id,
            WebhookEvent.SESSION_QR_UPDATED,
            {"session": {**_session_summary(company_id), "qr_code": qr_code}},
        )


def companies_with_webhooks(company_ids):
    """Which of `company_ids` have an active endpoint (one query for many)."""
    return set(
        WebhookEndpoint.objects.filter(company_id__in=list(company_ids), is_active=True)
        .values_list("company_id", flat=True)
        .distinct()
    )


def _session_summary(company_id):
    row = (
        WhatsAppSession.objects.filter(company_id=company_id)
        .values("pk", "state", "phone", "jid", "push_name", "qr_updated_at")
        .first()
        or {}
    )
    return {
        "pk": row.get("pk"),
        "state": row.get("state"),
        "phone": row.get("phone", ""),
        "jid": row.get("jid", ""),
        "push_name": row.get("push_name", ""),
        "qr_updated_at": _iso(row.get("qr_updated_at")),
    }


# --- delivering -----------------------------------------------------------------
def _stale_claim(now):
    return now - timedelta(seconds=_conf()["TIMEOUT"] + 60)


def _claim(delivery_id, now):
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    return bool(
        WebhookDelivery.objects.filter(pk=delivery_id)
        .filter(
            (Q(status__in=[Status.PENDING, Status.RETRYING]) & due)
            | Q(status=Status.DELIVERING, claimed_at__lt=_stale_claim(now))
        )
        .update(status=Status.DELIVERING, claimed_at=now, attempts=F("attempts") + 1)
    )


def deliver_webhook(delivery_id, now=None, rng=random):
    """One attempt of delivery `delivery_id`. Returns its resulting status, or
    "skipped" when the row is not due (already delivered, not yet due, or
    being delivered by another task)."""
    now = now or timezone.now()
    if not _claim(delivery_id, now):
        return "skipped"
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=Status.DELIVERING, claimed_at=now
    )
    if not endpoint.is_active:
        claimed.update(status=Status.DEAD, last_error="endpoint is inactive", claimed_at=None)
        return Status.DEAD
    conf = _conf()
    body = encode_body(delivery.envelope())
    outcome = post_signed(
        endpoint.url, endpoint.signing_secrets(now), delivery.event_id, body, conf["TIMEOUT"]
    )
    finished = now + timedelta(milliseconds=outcome.duration_ms)  # on the caller's clock

    with transaction.atomic():
        number = WebhookAttempt.objects.filter(delivery_id=delivery_id).count() + 1
        WebhookAttempt.objects.create(
            delivery_id=delivery_id,
            number=number,
            started_at=now,
            duration_ms=outcome.duration_ms,
            status_code=outcome.status_code,
            succeeded=outcome.ok,
            error=outcome.error[:2000],
            response_excerpt=outcome.excerpt,
        )
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
            last_attempt_at=finished,
            last_status_code=outcome.status_code,
            last_error=outcome.error[:2000],
        )
        common = {"last_status_code": outcome.status_code, "claimed_at": None}
        if outcome.ok:
            status = Status.SUCCEEDED
            claimed.update(
                status=status, delivered_at=finished, last_error="", next_attempt_at=None, **common
            )
        elif outcome.refused or delivery.attempts >= conf["MAX_ATTEMPTS"]:
            status = Status.DEAD
            why = "target refused" if outcome.refused else f"gave up after {delivery.attempts}"
            claimed.update(
                status=status,
                next_attempt_at=None,
                last_error=f"{outcome.describe()} ({why})"[:2000],
                **common,
            )
        else:
            status = Status.RETRYING
            retry_at = next_attempt_time(
                delivery.attempts, conf["BACKOFF_BASE"], conf["BACKOFF_CAP"], finished, rng
            )
            claimed.update(
                status=status,
                next_attempt_at=retry_at,
                last_error=f"{outcome.describe()} (attempt {delivery.attempts}; next at "
                f"{retry_at:%H:%M:%S} UTC)"[:2000],
                **common,
            )
    if status == Status.DEAD:
        logger.warning("webhook delivery %s dead-lettered: %s", delivery_id, outcome.describe())
    return status


def dispatch_due_webhooks(now=None, limit=500):
    """Enqueue deliveries that are due: retries whose time came, pending rows whose
    task was lost, and rows stuck in `delivering`. Returns the enqueued ids."""
    now = now or timezone.now()
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    ids = list(
        WebhookDelivery.objects.filter(
            (Q(status=Status.RETRYING) & due)
            | (Q(status=Status.PENDING, created_at__lt=now - PENDING_GRACE) & due)
            | Q(status=Status.DELIVERING, claimed_at__lt=_stale_claim(now))
        )
        .order_by("next_attempt_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    _enqueue_now(ids, swallow=True)
    return ids


def prune_webhook_deliveries(now=None, batch=1000):
    """Delete delivered and dead deliveries (and their attempts) older than
    WEBHOOK_RETENTION_DAYS, at most `batch` per call. Returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=_conf()["RETENTION_DAYS"])
    ids = list(
        WebhookDelivery.objects.filter(
            status__in=[Status.SUCCEEDED, Status.DEAD], created_at__lt=cutoff
        ).values_list("pk", flat=True)[:batch]
    )
    if not ids:
        return 0
    WebhookDelivery.objects.filter(pk__in=ids).delete()
    return len(ids)


def replay_webhook_delivery(delivery_id):
    """Operator action: send a dead (or delivered) delivery again with a fresh
    attempt budget. Same event id, so receivers that saw it can ignore it."""
    with transaction.atomic():
        updated = WebhookDelivery.objects.filter(
            pk=delivery_id, status__in=[Status.DEAD, Status.SUCCEEDED]
        ).update(status=Status.PENDING, attempts=0, next_attempt_at=None, claimed_at=None)
        if updated:
            _enqueue([delivery_id])
    return bool(updated)


# --- signing secrets ----------------------------------------------------------------
def rotate_webhook_secret(endpoint_id, now=None):
    """Give endpoint `endpoint_id` a new signing secret and return it (to be shown
    once). The secret it replaces keeps signing too, alongside the new one, for
    WEBHOOK_SECRET_OVERLAP seconds, so receivers can switch without missing a
    request. A second rotation within the overlap ends the first one's old secret."""
    now = now or timezone.now()
    overlap = timedelta(seconds=_conf()["SECRET_OVERLAP"])
    new_secret = generate_webhook_secret()
    with transaction.atomic():
        current = (
            WebhookEndpoint.objects.select_for_update()
            .values_list("secret", flat=True)
            .get(pk=endpoint_id)
        )
        keep = overlap > timedelta(0)
        WebhookEndpoint.objects.filter(pk=endpoint_id).update(
            secret=new_secret,
            previous_secret=current if keep else "",
            previous_secret_expires_at=now + overlap if keep else None,
        )
    return new_secret


def forget_expired_webhook_secrets(now=None):
    """Erase rotated-out secrets whose overlap ended (they no longer sign anyway).
    Returns how many."""
    now = now or timezone.now()
    return WebhookEndpoint.objects.filter(previous_secret_expires_at__lte=now).update(
        previous_secret="", previous_secret_expires_at=None
    )


# --- the webhook as message handler ------------------------------------------------
HANDLER_EVENT = "message.handle"
HANDLER_NAMESPACE = uuid.UUID("6f1c1f0e-3a51-4d0b-9a57-5d8e0c2b7a11")


class WebhookReplyError(RuntimeError):
    """The handler endpoint failed or answered something unusable."""


def handler_event_id(message):
    """Stable per inbound message: a re-run of the job sends the same id."""
    return uuid.uuid5(HANDLER_NAMESPACE, f"{message.company_id}:{message.wa_message_id}")


def message_handler_endpoint(company_id):
    return WebhookEndpoint.objects.filter(
        company_id=company_id, is_message_handler=True, is_active=True
    ).first()


def request_webhook_reply(endpoint, message):
    """POST `message` to the handler endpoint and return its reply text ("" for none).

    The answer may be empty (204 or no body: no reply) or a JSON object whose
    optional "reply" is a string. Anything else raises WebhookReplyError."""
    event_id = handler_event_id(message)
    outcome = _post_to_handler(endpoint, event_id, HANDLER_EVENT, message_data(message))
    if not outcome.body.strip():
        return ""
    try:
        answer = outcome.json()
    except ValueError:
        raise WebhookReplyError(
            f"handler endpoint answered non-JSON: {outcome.excerpt[:200]!r}"
        ) from None
    if not isinstance(answer, dict):
        raise WebhookReplyError("handler endpoint must answer a JSON object")
    reply = answer.get("reply")
    if reply is None:
        return ""
    if not isinstance(reply, str):
        raise WebhookReplyError(f'"reply" must be a string, not {type(reply).__name__}')
    return reply.strip()


def _post_to_handler(endpoint, event_id, event_type, data):
    """POST one signed event to the company's handler endpoint, record the
    attempt on the endpoint, and return the outcome; WebhookReplyError unless
    it answered 2xx. (The message handler and the turn handler both call it.)"""
    document = {
        "id": str(event_id),
        "type": event_type,
        "created_at": timezone.now().isoformat(),
        "company_id": endpoint.company_id,
        "data": data,
    }
    outcome = post_signed(
        endpoint.url,
        endpoint.signing_secrets(),
        event_id,
        encode_body(document),
        _conf()["HANDLER_TIMEOUT"],
    )
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        last_attempt_at=timezone.now(),
        last_status_code=outcome.status_code,
        last_error=outcome.error[:2000],
    )
    if not outcome.ok:
        raise WebhookReplyError(f"handler endpoint {endpoint.url}: {outcome.describe()}")
    return outcome


TURN_HANDLER_EVENT = "turn.handle"


def request_webhook_turn(endpoint, event_id, data):
    """POST a turn (its messages and thread, `data`) to the handler endpoint.

    Returns ("later", None) for a 202 (the answer comes through the turn's reply
    URL), or ("now", answer) with the JSON object answered (None for an empty
    body). Anything else raises WebhookReplyError."""
    outcome = _post_to_handler(endpoint, event_id, TURN_HANDLER_EVENT, data)
    if outcome.status_code == 202:
        return "later", None
    if not outcome.body.strip():
        return "now", None
    try:
        answer = outcome.json()
    except ValueError:
        raise WebhookReplyError(
            f"handler endpoint answered non-JSON: {outcome.excerpt[:200]!r}"
        ) from None
    if not isinstance(answer, dict):
        raise WebhookReplyError("handler endpoint must answer a JSON object")
    return "now", answer
