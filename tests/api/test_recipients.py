"""Strict outbound recipients (#14): a phone number, or a JID WhatsApp issues.

`whatsapp.transport.jids.recipient_jid` is the one rule; the API answers a
bad recipient with a 400 in its one error shape and stores nothing. Phone
numbers typed anywhere go through one function (companies.phones.parse_phone),
so a national number works everywhere once a default country is configured.
"""

import pytest

from companies.phones import InvalidPhoneNumber
from whatsapp.models import OutboundMessage, WhatsAppSession
from whatsapp.services.outbound import InvalidOutbound, queue_outbound_message
from whatsapp.transport.jids import InvalidRecipient, recipient_jid

SENDABLE = [
    # (recipient, bare JID, E.164 or "")
    ("+49 170 7654321", "491707654321@s.whatsapp.net", "+491707654321"),
    ("491707654321@s.whatsapp.net", "491707654321@s.whatsapp.net", "+491707654321"),
    ("491707654321:12@s.whatsapp.net", "491707654321@s.whatsapp.net", "+491707654321"),
    ("491707654321.0:12@s.whatsapp.net", "491707654321@s.whatsapp.net", "+491707654321"),
    ("491707654321@c.us", "491707654321@s.whatsapp.net", "+491707654321"),
    # a Mexican client's reply goes to the JID WhatsApp gave (521...), phone +52...
    ("5215512345678@s.whatsapp.net", "5215512345678@s.whatsapp.net", "+525512345678"),
    ("+52 1 55 1234 5678", "525512345678@s.whatsapp.net", "+525512345678"),
    ("5491123456789@s.whatsapp.net", "5491123456789@s.whatsapp.net", "+5491123456789"),
    ("123456789012345@lid", "123456789012345@lid", ""),
    ("123456789012345:4@lid", "123456789012345@lid", ""),
    ("120363025246125486@g.us", "120363025246125486@g.us", ""),
    ("491701234567-1612345678@g.us", "491701234567-1612345678@g.us", ""),  # old group id
]

REFUSED = [
    "abc@lid",
    "<script>alert(1)</script>@lid",
    "12@lid",  # too short for a LID
    "123456789012345678901@lid",  # 21 digits
    "a@g.us",
    "1203630-abc@g.us",
    "120363025246125486:3@g.us",  # a group has no devices
    "tel:+491707654321",
    "+49 170 7654321 ext. 5",
    "+49 170 7654321 x5",
    "4912345678901234@s.whatsapp.net",  # 16 digits: E.164 has at most 15
    "+49 1234 5678 9012 34",
    "0491707654321@s.whatsapp.net",
    "999123456789@s.whatsapp.net",  # no such country
    "491707654321@s.whatsapp.net.evil.example",
    "491707654321@@s.whatsapp.net",
    "491707654321 @s.whatsapp.net",
    "status@broadcast",
    "1612345678@broadcast",
    "120363198765432101@newsletter",
    "867051314767696@bot",
    "@s.whatsapp.net",
    "12",
    "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668@lid",  # digits of another script
    "491707654321:\u0661@s.whatsapp.net",
]


@pytest.mark.parametrize("to,jid,phone", SENDABLE, ids=[s[0] for s in SENDABLE])
def test_a_sendable_recipient_becomes_its_bare_jid_and_phone(to, jid, phone):
    assert recipient_jid(to) == (jid, phone)


@pytest.mark.parametrize("to", REFUSED)
def test_a_recipient_whatsapp_would_never_issue_is_refused(to):
    with pytest.raises((InvalidRecipient, InvalidPhoneNumber)):
        recipient_jid(to)


def url(company, suffix=""):
    return f"/api/v1/whatsapp/sessions/{company.pk}/{suffix}"


@pytest.mark.parametrize("to", REFUSED)
def test_the_api_answers_a_bad_recipient_with_a_400_and_stores_nothing(to, api_a, tenants):
    response = api_a.post(url(tenants.a, "outbound/"), {"to": to, "text": "hi"}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert list(error["fields"]) == ["to"]
    assert error["fields"]["to"][0].startswith("Invalid recipient: ")
    assert error["message"].startswith("to: Invalid recipient: ")
    assert not OutboundMessage.objects.exists()


def test_the_service_refuses_a_bad_recipient_too(tenants):
    with pytest.raises(InvalidOutbound, match="invalid recipient"):
        queue_outbound_message(tenants.a.pk, "<script>alert(1)</script>@lid", "hi")
    assert not OutboundMessage.objects.exists()


def test_a_reply_to_a_mexican_client_keeps_whatsapps_jid(api_a, tenants):
    response = api_a.post(
        url(tenants.a, "outbound/"),
        {"to": "5215512345678@s.whatsapp.net", "text": "Hola"},
        format="json",
    )
    assert response.status_code == 202
    assert response.json()["to_jid"] == "5215512345678@s.whatsapp.net"
    assert response.json()["to_phone"] == "+525512345678"


def test_a_national_number_works_everywhere_once_a_default_country_is_set(
    api_a, callers, tenants, settings
):
    settings.WHATSAPP = {**settings.WHATSAPP, "DEFAULT_COUNTRY": "DE"}
    sent = api_a.post(
        url(tenants.a, "outbound/"), {"to": "0170 7654321", "text": "Hallo"}, format="json"
    )
    assert sent.status_code == 202 and sent.json()["to_phone"] == "+491707654321"
    WhatsAppSession.objects.get_or_create(company=tenants.a)
    paired = api_a.post(url(tenants.a, "pairing-code"), {"phone": "0170 7654321"}, format="json")
    assert paired.status_code == 202 and paired.json()["pairing_phone"] == "+491707654321"
    contact = callers["superuser"].patch(
        f"/api/v1/companies/{tenants.a.pk}/", {"contact_phone": "0170 7654321"}, format="json"
    )
    assert contact.status_code == 200 and contact.json()["contact_phone"] == "+491707654321"
    inbound = api_a.get(url(tenants.a, "inbound/"), {"phone": "0170 7654321"})
    assert inbound.status_code == 200


def test_a_number_whatsapp_said_is_not_on_it_is_a_400_before_anything_is_queued(
    api_a, tenants
):
    from whatsapp.services.recipients import record_recipient_answers
    from whatsapp.transport.base import Recipient

    record_recipient_answers(tenants.a.pk, {"+4915199999999": Recipient("+4915199999999", False)})
    response = api_a.post(
        url(tenants.a, "outbound/"), {"to": "+49 151 99999999", "text": "hi"}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"] == "+4915199999999 is not on WhatsApp"
    assert not OutboundMessage.objects.exists()
    # A number without a kept answer is queued for the worker to ask about.
    assert api_a.post(
        url(tenants.a, "outbound/"), {"to": "+4915112345678", "text": "hi"}, format="json"
    ).status_code == 202
    assert OutboundMessage.objects.get().resolve_recipient
