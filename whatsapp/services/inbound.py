"""Recording inbound messages: one WhatsApp message, exactly one row and one job.

Dedupe is a database fact. The insert runs in a savepoint; the unique
constraint on (company, wa_message_id) turns every further delivery -- a
redelivery after reconnect, a second worker, a replayed event -- into an
IntegrityError that we count instead of a second job.
"""

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from companies.models import Company
from whatsapp.models import InboundMessage, ProcessingJob, WhatsAppSession
from whatsapp.transport.normalize import NormalizedMessage

from .jobs import enqueue_processing_job
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
    ignored (own messages, status broadcasts, reactions, edits...)."""
    if not isinstance(message, NormalizedMessage):
        raise TypeError("record_inbound_message takes a NormalizedMessage")
    now = timezone.now()
    if not message.is_client_message:
        WhatsAppSession.objects.filter(company_id=company_id).update(last_event_at=now)
        return InboundOutcome(InboundOutcome.IGNORED, reason=message.ignore_reason)

    with transaction.atomic():
        if not Company.objects.filter(pk=company_id).exists():
            raise UnknownCompany(f"company {company_id!r} does not exist")
        try:
            with transaction.atomic():
                row = InboundMessage.objects.create(
                    company_id=company_id,
                    wa_message_id=message.message_id,
                    chat_jid=message.chat_jid,
                    sender_jid=message.sender_jid,
                    sender_phone=message.sender_phone,
                    sender_lid=message.sender_lid,
                    push_name=message.push_name,
                    kind=message.kind,
                    text=message.text,
                    is_group=message.is_group,
                    sent_at=message.timestamp,
                    received_at=now,
                )
        except IntegrityError:
            blocked = InboundMessage.objects.filter(
                company_id=company_id, wa_message_id=message.message_id
            ).update(redeliveries=F("redeliveries") + 1)
            if not blocked:  # some other constraint failed: not a duplicate
                raise
            WhatsAppSession.objects.filter(company_id=company_id).update(
                duplicates_blocked=F("duplicates_blocked") + 1, last_event_at=now
            )
            return InboundOutcome(InboundOutcome.DUPLICATE, reason="already recorded")

        job = ProcessingJob.objects.create(message=row)
        WhatsAppSession.objects.filter(company_id=company_id).update(
            messages_in=F("messages_in") + 1, last_event_at=now
        )
        enqueue_processing_job(job.pk)
        emit_message_received(row)
    return InboundOutcome(InboundOutcome.CREATED, message_pk=row.pk)
