"""Shared makers for the conversation tests: real neonize events through the
real inbound path (normalize -> record_inbound_message), jobs run in-process."""

from whatsapp.models import AutoReplyRule, InboundMessage, WhatsAppSession
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.processing import run_message_job
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

PHONE = "4915112345678"
PHONE_JID = f"{PHONE}@s.whatsapp.net"
LID_JID = "123456789012345@lid"
COMPANY_JID = "4930900000001@s.whatsapp.net"


def setup_company(company, reply="Hello {name}"):
    WhatsAppSession.objects.get_or_create(company=company)
    AutoReplyRule.objects.create(company=company, match=AutoReplyRule.Match.ANY, reply_text=reply)
    return company


def client_writes(company, message_id, text, chat=PHONE_JID, sender=None, alt="", name="Anna"):
    event = message_event(message_id, chat, text, sender=sender, sender_alt=alt, push_name=name)
    outcome = record_inbound_message(company.pk, normalize_message(event))
    if outcome.created:
        run_message_job(outcome.message_pk)
        return InboundMessage.objects.select_related("job", "chat", "contact").get(
            pk=outcome.message_pk
        )
    return outcome


def phone_writes(company, message_id, text, chat=PHONE_JID):
    """The business types on its own phone (from_me) into `chat`."""
    event = message_event(message_id, chat, text, sender=COMPANY_JID, from_me=True)
    return record_inbound_message(company.pk, normalize_message(event))
