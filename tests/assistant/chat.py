"""Client messages as WhatsApp delivers them, through the real inbound path."""

from django.utils import timezone

from whatsapp.models import OutboundMessage, ProcessingJob
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.processing import run_message_job, run_processing_job
from whatsapp.services.turns import run_due_turns
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


def turn_writes(company, text, message_id):
    """A client message of a company on a turn handler: stored, its job run
    (it joins the chat's turn)."""
    event = message_event(message_id, CLIENT_JID, text, push_name="Ben")
    outcome = record_inbound_message(company.pk, normalize_message(event))
    assert run_message_job(outcome.message_pk) == ProcessingJob.Status.IN_TURN


def answer_due_turns():
    """Run the turns that are due a minute from now; their outcomes."""
    return list(run_due_turns(now=timezone.now() + timezone.timedelta(seconds=60)).values())
