"""Opt-out: a stop word (the company's list; STOP and translations by default)
opts the contact out, confirmed once; handlers and the API send them nothing
(409) until they write a start word."""

import time

import pytest

from whatsapp.models import Contact, OutboundMessage
from whatsapp.models.messages import OPT_OUT_CONFIRMED, OPTED_OUT
from whatsapp.services.outbound import OptedOut, queue_outbound_message

from .helpers import PHONE, client_writes, setup_company, sim_writes, wait_job, wait_replies


@pytest.mark.parametrize("word", ["STOP", "stop.", "Baja", "ARRÊT", "abmelden"])
def test_a_stop_word_opts_out_and_is_confirmed_once(company, word):
    setup_company(company)
    client_writes(company, "M1", "hi")
    stop = client_writes(company, "M2", word)
    contact = Contact.objects.get()
    assert contact.is_opted_out and word.strip(".") in contact.opted_out_how
    assert contact.opt_outs == 1
    assert stop.job.result == OPT_OUT_CONFIRMED
    confirmation = OutboundMessage.objects.get(author="system")
    assert confirmation.text == company.opt_out_confirmation

    again = client_writes(company, "M3", word)  # a second stop: no second confirmation
    assert OutboundMessage.objects.filter(author="system").count() == 1
    assert again.job.result in {OPT_OUT_CONFIRMED, OPTED_OUT}
    assert client_writes(company, "M4", "hello?").job.result == OPTED_OUT
    assert OutboundMessage.objects.filter(author="handler").count() == 1  # only M1's reply


def test_the_api_refuses_a_send_until_a_start_word(company):
    setup_company(company)
    client_writes(company, "M1", "STOP")
    with pytest.raises(OptedOut, match="opted out"):
        queue_outbound_message(company.pk, f"+{PHONE}", "our offer")
    assert client_writes(company, "M2", "START").reply.author == "handler"
    assert not Contact.objects.get().is_opted_out
    message, created = queue_outbound_message(company.pk, f"+{PHONE}", "welcome back")
    assert created and message.contact == Contact.objects.get()


def test_per_company_stop_words_and_no_confirmation(company):
    setup_company(company)
    company.stop_words = "HALT, ENOUGH"
    company.opt_out_confirmation = ""
    company.save()
    client_writes(company, "M1", "stop")
    assert not Contact.objects.get().is_opted_out  # STOP is not this company's word
    client_writes(company, "M2", "enough!")
    assert Contact.objects.get().is_opted_out
    assert not OutboundMessage.objects.filter(author="system").exists()


def test_a_stop_word_inside_a_sentence_does_not_opt_out(company):
    setup_company(company)
    client_writes(company, "M1", "please don't stop the music")
    assert not Contact.objects.get().is_opted_out


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_on_the_simulator_an_opted_out_client_gets_one_confirmation_and_nothing_else(live):
    sim, app, company = live
    stop = sim_writes(sim, company, "STOP")
    assert wait_job(stop, app).result == OPT_OUT_CONFIRMED
    (confirmation,) = wait_replies(sim, company, 1)
    assert confirmation["text"] == company.opt_out_confirmation
    with pytest.raises(OptedOut):
        queue_outbound_message(company.pk, f"+{PHONE}", "our weekly offer")
    hello = sim_writes(sim, company, "hello?")
    assert wait_job(hello, app).result == OPTED_OUT
    time.sleep(1.5)
    assert len(sim.sends(company=company.pk, phone=PHONE)) == 1

    start = sim_writes(sim, company, "START")
    wait_job(start, app)
    assert [s["text"] for s in wait_replies(sim, company, 2)][1] == "Hello Anna"
