"""Phone numbers in E.164: the one rule for every number a person types.

The lowest layer that needs phone numbers is a company's contact phone, so
the rule lives here and `whatsapp` imports it (never the other way round).
Every call site -- the API, the admin forms, the services, the JID layer --
uses `parse_phone` (the configured default country applies everywhere) or,
for international digits taken from a JID, `phone_to_e164` without a region.

E.164: `+`, a country code and the national number, at most 15 digits. A
number is accepted when libphonenumber calls it *possible* (country code and
length right), not *valid* (assigned ranges): stale metadata must not refuse
a real number. Extensions, URIs (`tel:`) and letters are refused.
"""

import re
from functools import lru_cache

import phonenumbers
from django.conf import settings

MAX_E164_DIGITS = 15  # ITU-T E.164
MAX_INPUT_CHARS = 32
# What people put between the digits of a phone number; anything else
# (letters, `tel:`, `ext.`, `;`, `<`...) makes the input something else.
_PHONE_CHARS = re.compile(r"[0-9+\-\s().\/\u00a0]+")
# Mexico dropped the mobile "1" after the country code in 2019, but WhatsApp
# still issues `521` + ten digits JIDs (whatsmeow issue #874): the same
# subscriber as +52 + the ten digits.
_MEXICO = 52


class InvalidPhoneNumber(ValueError):
    """Not a possible phone number; the message says what is wrong."""


def default_region():
    """The country a national number (no `+`) belongs to, or None."""
    return (getattr(settings, "WHATSAPP", None) or {}).get("DEFAULT_COUNTRY") or None


def parse_phone(raw):
    """E.164 of a number typed by a person, with the configured default country
    for national numbers. The one function for phone input (API, admin, services)."""
    return phone_to_e164(raw, default_region())


@lru_cache(maxsize=8192)  # a pure function; clients write again and again
def phone_to_e164(raw, region=None):
    """E.164 of `+49 170 1234567`, `0049...`, international digits as in JIDs
    (`491701234567`) and, with `region`, national numbers. Raises
    InvalidPhoneNumber with a message that says what was wrong."""
    text = str(raw or "").strip()
    if not text:
        raise InvalidPhoneNumber("phone number is empty")
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidPhoneNumber("phone number is too long")
    if not _PHONE_CHARS.fullmatch(text) or "+" in text[1:]:
        raise InvalidPhoneNumber(
            f"{text!r} is not a phone number: only digits, one leading +, spaces and "
            "- ( ) . / are allowed (no extensions, letters or tel: URIs)"
        )
    candidate = text
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    elif candidate.isdigit() and not region:
        candidate = "+" + candidate
    try:
        number = phonenumbers.parse(candidate, region or None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"{text!r} is not a phone number: {exc}") from None
    national = str(number.national_number)
    if number.country_code == _MEXICO and len(national) == 11 and national.startswith("1"):
        number = phonenumbers.PhoneNumber(country_code=_MEXICO, national_number=int(national[1:]))
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(e164) - 1 > MAX_E164_DIGITS:
        raise InvalidPhoneNumber(
            f"{text!r} has {len(e164) - 1} digits; an international (E.164) number has at "
            f"most {MAX_E164_DIGITS}"
        )
    if not phonenumbers.is_possible_number(number):
        raise InvalidPhoneNumber(
            f"{text!r} is not a possible phone number (check the country code and length)"
        )
    return e164
