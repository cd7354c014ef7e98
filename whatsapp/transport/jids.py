"""WhatsApp JIDs: parsing, and the sender's phone number in E.164.

The seed system did `remoteJid.split('@')[0]` and broke on device suffixes,
LIDs and groups. A JID is `user[.agent][:device]@server`:

* `s.whatsapp.net`: `user` is the phone number in international digits.
* `lid`: a privacy identifier, *not* a phone number. The phone may come in
  the event's `SenderAlt`.
* `g.us`: a group; the sender is a separate participant JID.
* `broadcast`: `status@broadcast` (stories) and broadcast lists.
"""

from dataclasses import dataclass
from functools import lru_cache

import phonenumbers

PHONE_SERVER = "s.whatsapp.net"
LEGACY_PHONE_SERVER = "c.us"
LID_SERVER = "lid"
GROUP_SERVER = "g.us"
BROADCAST_SERVER = "broadcast"
STATUS_BROADCAST = "status@broadcast"


class InvalidPhoneNumber(ValueError):
    """A phone number (or JID user part) that is not a possible phone number."""


@dataclass(frozen=True)
class Jid:
    user: str
    server: str
    device: int = 0

    @classmethod
    def parse(cls, value):
        """Parse `user[.agent][:device]@server` (a string or a neonize JID proto)."""
        if hasattr(value, "User") and hasattr(value, "Server"):
            user, server, device = value.User, value.Server, int(value.Device or 0)
            user, _, dev = user.partition(":")
            user = user.split(".", 1)[0] if server != GROUP_SERVER else user
            return cls(user=user, server=server, device=device or _device(dev))
        text = str(value or "").strip()
        if "@" not in text:
            raise ValueError(f"not a JID (no '@server'): {text!r}")
        user, _, server = text.rpartition("@")
        user, _, dev = user.partition(":")
        if server != GROUP_SERVER:
            user = user.split(".", 1)[0]
        if not server:
            raise ValueError(f"not a JID (empty server): {text!r}")
        return cls(user=user, server=server, device=_device(dev))

    @property
    def is_empty(self):
        return not self.user and not self.server

    @property
    def is_phone(self):
        return self.server in {PHONE_SERVER, LEGACY_PHONE_SERVER}

    @property
    def is_lid(self):
        return self.server == LID_SERVER

    @property
    def is_group(self):
        return self.server == GROUP_SERVER

    @property
    def is_status(self):
        return self.user == "status" and self.server == BROADCAST_SERVER

    @property
    def is_broadcast(self):
        return self.server == BROADCAST_SERVER

    def bare(self):
        """The JID without device: where messages to this user go."""
        return f"{self.user}@{self.server}"

    def __str__(self):
        return self.bare() if not self.device else f"{self.user}:{self.device}@{self.server}"


def _device(text):
    try:
        return int(text) if text else 0
    except ValueError:
        raise ValueError(f"JID device suffix is not a number: {text!r}") from None


@lru_cache(maxsize=8192)  # a pure function; clients write again and again
def phone_to_e164(raw, default_region=None):
    """Normalise a phone number typed by a person or taken from a JID to E.164.

    Accepts `+49 170 1234567`, `0049...`, `491701234567` (international digits,
    as in JIDs) and, with `default_region`, national formats. Raises
    InvalidPhoneNumber with a message that says what was wrong."""
    text = str(raw or "").strip()
    if not text:
        raise InvalidPhoneNumber("phone number is empty")
    if len(text) > 32:
        raise InvalidPhoneNumber("phone number is too long")
    candidate = text
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    elif candidate.isdigit() and not default_region:
        candidate = "+" + candidate
    try:
        number = phonenumbers.parse(candidate, default_region or None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"{text!r} is not a phone number: {exc}") from None
    # "possible" (length and country code right) rather than "valid" (metadata
    # of assigned ranges): stale metadata must never make us drop a real
    # client's message.
    if not phonenumbers.is_possible_number(number):
        raise InvalidPhoneNumber(
            f"{text!r} is not a possible phone number (check the country code and length)"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_jid(e164):
    """The user JID of an E.164 phone number."""
    return f"{e164.lstrip('+')}@{PHONE_SERVER}"


def jid_phone(jid):
    """E.164 phone of a phone JID (string or Jid); raises InvalidPhoneNumber."""
    parsed = jid if isinstance(jid, Jid) else Jid.parse(jid)
    if not parsed.is_phone:
        raise InvalidPhoneNumber(f"{parsed} is not a phone-number JID")
    if not parsed.user.isdigit():
        raise InvalidPhoneNumber(f"the user part of {parsed} is not a phone number")
    return phone_to_e164(parsed.user)


def recipient_jid(value, default_region=None):
    """Turn an API/handler recipient (phone number or JID) into (jid, e164 or '')."""
    text = str(value or "").strip()
    if "@" in text:
        jid = Jid.parse(text)
        if jid.is_phone:
            phone = jid_phone(jid)
            return phone_jid(phone), phone
        if jid.is_lid or jid.is_group:
            if not jid.user:
                raise ValueError(f"JID has no user part: {text!r}")
            return jid.bare(), ""
        raise ValueError(f"cannot send to {text!r}: only phone, LID and group JIDs are supported")
    phone = phone_to_e164(text, default_region)
    return phone_jid(phone), phone
