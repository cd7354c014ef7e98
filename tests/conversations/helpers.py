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


# --- on the simulator (e2e) -----------------------------------------------------------
def sim_writes(sim, company, text, mode="phone", phone=PHONE, name="Anna"):
    """A phone writes to the company through the simulator (or, mode "own", the
    company's own phone writes to `phone`). Returns the message id."""
    answer = sim.post(
        "messages", company=company.pk, **{"from": phone}, text=text, mode=mode, push_name=name
    )
    return answer["ids"][0]


def wait_job(message_id, app, timeout=45):
    """The finished processing job of the stored message `message_id`."""
    from tests.e2e_processes import wait_for
    from whatsapp.models import ProcessingJob

    jobs = ProcessingJob.objects.filter(
        message__wa_message_id=message_id, status=ProcessingJob.Status.SUCCEEDED
    )
    try:
        wait_for(jobs.exists, timeout, f"job of {message_id} succeeded", interval=0.2)
    except AssertionError:
        print(app.logs())
        raise
    return jobs.get()


def wait_replies(sim, company, count, phone=PHONE, timeout=45):
    from tests.e2e_processes import wait_for

    wait_for(
        lambda: len(sim.sends(company=company.pk, phone=phone)) >= count,
        timeout,
        f"{count} replies at {phone}",
        interval=0.2,
    )
    return sim.sends(company=company.pk, phone=phone)
