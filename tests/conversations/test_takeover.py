"""Human takeover: a person's reply (phone, linked device, operator) pauses the
bot in that chat; client messages then keep their one job, which records
"handled by a person", and the chat shows it needs a person; a button, the
API, the company's keyword or the timeout resume it."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.e2e_processes import wait_for
from whatsapp.models import Chat, OutboundMessage, ProcessingJob, WebhookDelivery, WebhookEndpoint
from whatsapp.models.messages import HANDLED_BY_PERSON
from whatsapp.services.conversations import resume_chat, send_as_operator
from whatsapp.services.inbound import InboundOutcome

from .helpers import (
    PHONE,
    PHONE_JID,
    client_writes,
    phone_writes,
    setup_company,
    sim_writes,
    wait_job,
    wait_replies,
)


def test_a_reply_typed_on_the_phone_pauses_the_bot_in_that_chat_only(company):
    setup_company(company)
    WebhookEndpoint.objects.create(company=company, url="https://hooks.example/x")
    first = client_writes(company, "C1", "hi")
    assert first.reply.author == "handler"

    outcome = phone_writes(company, "P1", "Hi Anna, it's Maria here")
    assert outcome.status == InboundOutcome.BY_PERSON
    person = OutboundMessage.objects.get(wa_message_id="P1")
    assert (person.author, person.status, person.chat_id) == ("phone", "sent", first.chat_id)
    chat = Chat.objects.get(pk=first.chat_id)
    assert chat.bot_is_paused() and chat.paused_by == "phone"
    minutes = (chat.bot_paused_until - timezone.now()).total_seconds() / 60
    assert 29 < minutes <= 30  # the company's default takeover time

    second = client_writes(company, "C2", "thanks!")
    assert second.job.status == ProcessingJob.Status.SUCCEEDED
    assert second.job.result == HANDLED_BY_PERSON
    assert not hasattr(second, "reply") or second.reply is None
    assert ProcessingJob.objects.filter(message__company=company).count() == 2
    chat.refresh_from_db()
    assert chat.needs_human and chat.unread == 1

    other = client_writes(company, "D1", "hello", chat="4917099887766@s.whatsapp.net")
    assert other.reply.author == "handler"  # another chat: the bot still answers

    events = list(WebhookDelivery.objects.values_list("event_type", flat=True))
    for event in ("message.sent_by_person", "chat.paused", "chat.needs_human"):
        assert events.count(event) == 1, events


def test_the_company_keyword_typed_by_a_person_resumes_the_bot(company):
    setup_company(company)
    company.bot_resume_keyword = "#bot"
    company.save()
    client_writes(company, "C1", "hi")
    phone_writes(company, "P1", "one moment")
    phone_writes(company, "P2", "#BOT")
    chat = Chat.objects.get(chat_jid=PHONE_JID)
    assert not chat.bot_is_paused() and not chat.needs_human
    assert client_writes(company, "C2", "and now?").reply.author == "handler"


def test_resume_by_button_or_api_and_by_timeout(company):
    setup_company(company)
    client_writes(company, "C1", "hi")
    phone_writes(company, "P1", "I'll take this one")
    chat = Chat.objects.get(chat_jid=PHONE_JID)
    resume_chat(chat, "operator")
    assert client_writes(company, "C2", "still there?").reply.author == "handler"

    phone_writes(company, "P2", "me again")
    Chat.objects.filter(pk=chat.pk).update(bot_paused_until=timezone.now() - timedelta(seconds=1))
    assert client_writes(company, "C3", "hello?").reply.author == "handler"


def test_an_operator_send_is_queued_by_a_person_and_pauses_the_bot(company):
    setup_company(company)
    client_writes(company, "C1", "hi")
    chat = Chat.objects.get(chat_jid=PHONE_JID)
    message, created = send_as_operator(chat, "Maria from the front desk here")
    assert created and message.author == "operator" and message.status == "queued"
    chat.refresh_from_db()
    assert chat.bot_is_paused() and chat.paused_by == "operator"
    assert client_writes(company, "C2", "great").job.result == HANDLED_BY_PERSON


def test_an_echo_of_our_own_send_and_a_redelivered_phone_message_store_nothing(company):
    setup_company(company)
    reply = client_writes(company, "C1", "hi").reply
    OutboundMessage.objects.filter(pk=reply.pk).update(wa_message_id="3EB0MINE")
    assert phone_writes(company, "3EB0MINE", reply.text).status == InboundOutcome.DUPLICATE
    assert phone_writes(company, "P1", "typed").status == InboundOutcome.BY_PERSON
    assert phone_writes(company, "P1", "typed").status == InboundOutcome.DUPLICATE
    assert OutboundMessage.objects.filter(author="phone").count() == 1
    assert not Chat.objects.get(chat_jid=PHONE_JID).needs_human


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_on_the_simulator_a_reply_typed_on_the_phone_pauses_the_bot_until_resumed(live):
    sim, app, company = live
    first = sim_writes(sim, company, "hi, are you open?")
    wait_job(first, app)
    assert [s["text"] for s in wait_replies(sim, company, 1)] == ["Hello Anna"]

    typed = sim_writes(sim, company, "Hi Anna, Maria here - yes until 6", mode="own")
    wait_for(
        lambda: OutboundMessage.objects.filter(wa_message_id=typed, author="phone").exists(),
        30,
        "the phone's reply stored as a person's",
    )
    assert ProcessingJob.objects.count() == 1  # never a job

    second = sim_writes(sim, company, "great, see you")
    assert wait_job(second, app).result == HANDLED_BY_PERSON
    time.sleep(1.5)  # a reply would show up by now
    assert len(sim.sends(company=company.pk, phone=PHONE)) == 1
    chat = Chat.objects.get(chat_jid=PHONE_JID)
    assert chat.needs_human and chat.bot_is_paused() and chat.paused_by == "phone"

    resume_chat(chat, "operator")  # the admin's button and the API call this
    third = sim_writes(sim, company, "one more question")
    wait_job(third, app)
    assert [s["text"] for s in wait_replies(sim, company, 2)] == ["Hello Anna"] * 2
    assert ProcessingJob.objects.count() == 3  # exactly one job per client message
