"""Client messages as WhatsApp delivers them, through the real inbound path."""

from whatsapp.models import OutboundMessage, ProcessingJob
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.processing import run_processing_job
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

CLIENT_JID = "4915112345678@s.whatsapp.net"


def client_writes(company, text, message_id, chat=CLIENT_JID):
    """Store the message (as the worker does) and run its processing job.
    Returns (job, [reply texts queued for it, in order])."""
    sender = CLIENT_JID if chat.endswith("@g.us") else None
    event = message_event(message_id, chat, text, sender=sender, push_name="Ben")
    outcome = record_inbound_message(company.pk, normalize_message(event))
    job = ProcessingJob.objects.get(message_id=outcome.message_pk)
    run_processing_job(job.pk)
    job.refresh_from_db()
    replies = OutboundMessage.objects.filter(
        idempotency_key__startswith=f"reply:{message_id}:"
    ).order_by("idempotency_key")
    return job, [r.text for r in replies]
