"""Contacts: one per person and company, by phone JID and/or LID; a LID-only
sender whose phone is learned later (SenderAlt) joins the contact of that
phone, with one thread."""

import pytest

from whatsapp.models import Chat, Contact, InboundMessage
from whatsapp.simulator.protocol import lid_of

from .helpers import (
    LID_JID,
    PHONE,
    PHONE_JID,
    client_writes,
    setup_company,
    sim_writes,
    wait_job,
    wait_replies,
)


def test_a_phone_sender_gets_one_contact_and_one_chat(company):
    setup_company(company)
    client_writes(company, "M1", "hi", name="Anna")
    client_writes(company, "M2", "again", name="Anna B.")
    contact = Contact.objects.get()
    assert (contact.phone, contact.phone_jid, contact.lid) == (f"+{PHONE}", PHONE_JID, "")
    assert contact.push_names == ["Anna", "Anna B."] and contact.push_name == "Anna B."
    chat = Chat.objects.get()
    assert (chat.contact, chat.unread, chat.is_group) == (contact, 2, False)
    assert set(InboundMessage.objects.values_list("chat", "contact")) == {(chat.pk, contact.pk)}


def test_a_lid_only_sender_joins_its_phone_contact_when_the_phone_is_learned(company):
    setup_company(company)
    lid_only = client_writes(company, "L1", "hi from a hidden number", chat=LID_JID)
    assert lid_only.sender_phone == ""
    hidden = Contact.objects.get()
    assert (hidden.lid, hidden.phone_jid, hidden.phone) == (LID_JID, "", "")
    assert lid_only.reply.to_jid == LID_JID  # answered at the LID

    # The same person from their phone (another device, a new chat JID), no mapping yet.
    from_phone = client_writes(company, "P1", "it's me", chat=PHONE_JID)
    assert Contact.objects.count() == 2

    # A message carrying both (a LID sender with SenderAlt): the two are one person.
    client_writes(company, "L2", "me again", chat=LID_JID, alt=PHONE_JID)
    contact = Contact.objects.get()
    assert (contact.lid, contact.phone_jid, contact.phone) == (LID_JID, PHONE_JID, f"+{PHONE}")
    chat = Chat.objects.get()  # the two 1:1 threads became one
    assert chat.contact == contact
    assert set(InboundMessage.objects.values_list("chat", "contact")) == {(chat.pk, contact.pk)}
    assert {m.pk for m in chat.outbound.all()} == {lid_only.reply.pk, from_phone.reply.pk} | {
        InboundMessage.objects.get(wa_message_id="L2").reply.pk
    }


def test_a_known_lid_then_a_phone_with_its_lid_in_sender_alt_is_one_contact(company):
    setup_company(company)
    client_writes(company, "L1", "hi", chat=LID_JID)
    client_writes(company, "P1", "hi", chat=PHONE_JID, alt=LID_JID)
    assert Contact.objects.count() == 1
    assert Chat.objects.count() == 1


def test_group_messages_have_a_group_chat_and_participant_contacts(company):
    setup_company(company)
    group = "120363025246125486@g.us"
    client_writes(company, "G1", "hello all", chat=group, sender=LID_JID, alt=PHONE_JID)
    chat = Chat.objects.get()
    assert chat.is_group and chat.contact is None and chat.chat_jid == group
    assert InboundMessage.objects.get().contact.phone_jid == PHONE_JID


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_on_the_simulator_a_lid_only_sender_is_joined_to_its_phone_later(live):
    sim, app, company = live
    hidden = sim_writes(sim, company, "hi, hidden number here", mode="lid_only")
    wait_job(hidden, app)
    message = InboundMessage.objects.get(wa_message_id=hidden)
    assert message.sender_phone == "" and message.contact.phone == ""
    assert message.contact.lid == f"{lid_of(PHONE)}@lid"
    assert len(wait_replies(sim, company, 1)) == 1  # the reply at the LID reached the phone

    revealed = sim_writes(sim, company, "me again", mode="lid")  # with SenderAlt
    wait_job(revealed, app)
    contact = Contact.objects.get()
    assert (contact.phone, contact.phone_jid) == (f"+{PHONE}", PHONE_JID)
    from_phone = sim_writes(sim, company, "and from my number", mode="phone")
    wait_job(from_phone, app)
    assert Contact.objects.count() == 1 and Chat.objects.count() == 1
    assert set(InboundMessage.objects.values_list("contact", flat=True)) == {contact.pk}
    assert len(wait_replies(sim, company, 3)) == 3


def test_a_phone_from_the_device_store_fills_sender_alt_of_a_lid_only_message(company):
    """neonize's get_pn_from_lid answers a phone JID proto: the client puts it into
    SenderAlt before the message is recorded, so the contact gets its phone."""
    from whatsapp.services.inbound import record_inbound_message
    from whatsapp.transport.build import jid_proto, message_event
    from whatsapp.transport.neonize_client import needs_phone, with_sender_alt
    from whatsapp.transport.normalize import normalize_message

    setup_company(company)
    event = message_event("L1", LID_JID, "hi", push_name="Anna")
    assert needs_phone(event)
    assert not with_sender_alt(event, jid_proto(""))  # the store does not know it
    assert not with_sender_alt(event, jid_proto("999@lid"))  # not a phone JID
    assert needs_phone(event)
    assert with_sender_alt(event, jid_proto(PHONE_JID))
    assert not needs_phone(event)
    record_inbound_message(company.pk, normalize_message(event))
    contact = Contact.objects.get()
    assert (contact.lid, contact.phone_jid, contact.phone) == (LID_JID, PHONE_JID, f"+{PHONE}")
    assert not needs_phone(message_event("P1", PHONE_JID, "hi"))
