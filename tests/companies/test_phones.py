"""The one phone-number rule (companies/phones.py), as a table.

Every place a person types a phone number -- the API, the admin pairing form,
a company's contact phone -- and every JID the worker derives a phone from
goes through it, so each row holds for all of them."""

import pytest

from companies.phones import InvalidPhoneNumber, parse_phone, phone_to_e164

ACCEPTED = [
    # (input, region, E.164)
    ("+49 170 1234567", None, "+491701234567"),
    ("0049 170 1234567", None, "+491701234567"),
    ("491701234567", None, "+491701234567"),  # international digits, as in JIDs
    ("+49 (170) 123-4567", None, "+491701234567"),
    ("+49/170.1234567", None, "+491701234567"),
    ("0170 1234567", "DE", "+491701234567"),  # national, with the default country
    ("+52 55 1234 5678", None, "+525512345678"),
    ("+52 1 55 1234 5678", None, "+525512345678"),  # Mexico's old mobile 1 is dropped
    ("5215512345678", None, "+525512345678"),  # ...as WhatsApp's JIDs still carry it
    ("+54 9 11 2345 6789", None, "+5491123456789"),  # Argentina's mobile 9 is E.164
    ("+1 202 555 0123", None, "+12025550123"),
    ("+44 7911 123456", None, "+447911123456"),
    ("+55 11 91234 5678", None, "+5511912345678"),  # Brazil, 9-digit mobile
    ("+91 98765 43210", None, "+919876543210"),
    ("+62 812 3456 7890", None, "+6281234567890"),
    ("+234 803 123 4567", None, "+2348031234567"),
    ("+7 916 123 4567", None, "+79161234567"),
    ("+39 06 1234 5678", None, "+390612345678"),  # Italy keeps its leading zero
    ("+683 7001", None, "+6837001"),  # Niue: seven digits in all
]

REFUSED = [
    # (input, region, part of the message)
    ("", None, "empty"),
    ("   ", None, "empty"),
    ("12", None, "not a phone number"),
    ("+999 1234567", None, "not a phone number"),
    ("+1 23", None, "not a possible phone number"),
    ("+49 1234 5678 9012 34", None, "at most 15"),  # 16 digits: E.164 has at most 15
    ("4912345678901234", None, "at most 15"),
    ("+49 170 1234567 ext. 5", None, "no extensions"),
    ("+49 170 1234567;ext=5", None, "no extensions"),
    ("+49 170 1234567 x5", None, "no extensions"),
    ("tel:+491701234567", None, "tel: URIs"),
    ("+49 170 12345+67", None, "one leading +"),
    ("<script>alert(1)</script>", None, "not a phone number"),
    ("491701234567@s.whatsapp.net", None, "not a phone number"),
    ("0170 1234567", None, "not a phone number"),  # national, no default country
    ("1" * 40, None, "too long"),
]


@pytest.mark.parametrize("raw,region,e164", ACCEPTED, ids=[a[0] or "blank" for a in ACCEPTED])
def test_it_turns_a_phone_number_into_e164(raw, region, e164):
    assert phone_to_e164(raw, region) == e164
    assert phone_to_e164(e164) == e164  # E.164 is a fixed point


@pytest.mark.parametrize("raw,region,reason", REFUSED, ids=[r[0] or "blank" for r in REFUSED])
def test_it_refuses_what_is_not_one_phone_number_and_says_why(raw, region, reason):
    with pytest.raises(InvalidPhoneNumber, match=reason):
        phone_to_e164(raw, region)


def test_the_configured_default_country_applies_to_national_numbers(settings):
    settings.WHATSAPP = {**settings.WHATSAPP, "DEFAULT_COUNTRY": "DE"}
    assert parse_phone("0170 1234567") == "+491701234567"
    assert parse_phone("+44 7911 123456") == "+447911123456"  # international stays so
    settings.WHATSAPP = {**settings.WHATSAPP, "DEFAULT_COUNTRY": ""}
    with pytest.raises(InvalidPhoneNumber):
        parse_phone("0170 1234567")


def test_an_invalid_phone_number_is_a_value_error():
    assert issubclass(InvalidPhoneNumber, ValueError)
