"""WhatsApp JIDs: parsing, and the sender's phone number in E.164.

The seed system did `remoteJid.split('@')[0]` and broke on device suffixes,
LIDs and groups. A JID is `user[.agent][:device]@server`:

* `s.whatsapp.net`: `user` is the phone number in international digits.
* `lid`: a privacy identifier, *not* a phone number. The phone may come in
  the event's `SenderAlt`.
* `g.us`: a group; the sender is a separate participant JID.
* `broadcast`: `status@broadcast` (stories) and broadcast lists.
* `newsletter`: channels (one-to-many posts; never a client), `bot`: Meta's bots.

WhatsApp decides which JIDs exist; the phone library only derives E.164 from
them. An inbound JID is kept as the identity even where no E.164 can be
derived (Mexico's `521...` JIDs are +52...; see companies/phones.py).
Outbound recipients are checked strictly (`recipient_jid`).
"""

import re
from dataclasses import dataclass

from companies.phones import MAX_E164_DIGITS, InvalidPhoneNumber, phone_to_e164

__all__ = [
    "InvalidPhoneNumber",  # raised here, defined with the phone rule
    "InvalidRecipient",
    "Jid",
    "jid_phone",
    "phone_jid",
    "phone_or_empty",
    "recipient_jid",
]

PHONE_SERVER = "s.whatsapp.net"
LEGACY_PHONE_SERVER = "c.us"
LID_SERVER = "lid"
GROUP_SERVER = "g.us"
BROADCAST_SERVER = "broadcast"
STATUS_BROADCAST = "status@broadcast"
NEWSLETTER_SERVER = "newsletter"
BOT_SERVER = "bot"

# User parts WhatsApp issues, by server (recipients are checked against these).
_RECIPIENT = re.compile(
    r"(?P<user>[0-9-]+)(?:\.(?P<agent>\d{1,3}))?(?::(?P<device>\d{1,3}))?@(?P<server>[a-z.]+)",
    re.ASCII,
)
_PHONE_USER = re.compile(rf"[1-9]\d{{0,{MAX_E164_DIGITS - 1}}}", re.ASCII)
_LID_USER = re.compile(r"[1-9]\d{4,19}", re.ASCII)  # today 14-15 digits
# 120363025246125888 (today), or the old creator-phone-creation-time form.
_GROUP_USER = re.compile(r"\d{5,24}|[1-9]\d{4,14}-\d{9,11}", re.ASCII)


class InvalidRecipient(ValueError):
    """Not something a message can be sent to; the message says why."""


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

    @property
    def is_broadcast_list(self):
        return self.is_broadcast and not self.is_status

    @property
    def is_newsletter(self):
        return self.server == NEWSLETTER_SERVER

    @property
    def is_bot(self):
        return self.server == BOT_SERVER

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


def phone_jid(e164):
    """The user JID of an E.164 phone number."""
    return f"{e164.lstrip('+')}@{PHONE_SERVER}"


def jid_phone(jid):
    """E.164 phone of a phone JID (string or Jid); raises InvalidPhoneNumber.

    `5215512345678@s.whatsapp.net` is +525512345678 (see companies/phones.py)."""
    parsed = jid if isinstance(jid, Jid) else Jid.parse(jid)
    if not parsed.is_phone:
        raise InvalidPhoneNumber(f"{parsed} is not a phone-number JID")
    if not (parsed.user.isascii() and parsed.user.isdigit()):
        raise InvalidPhoneNumber(f"the user part of {parsed} is not a phone number")
    return phone_to_e164(parsed.user)


def phone_or_empty(jid):
    """E.164 of a phone JID, or "" where none can be derived (inbound: the JID
    stays the identity; a message is never dropped for its phone number)."""
    try:
        return jid_phone(jid)
    except (InvalidPhoneNumber, ValueError):
        return ""


def recipient_jid(value, default_region=None):
    """(bare JID, E.164 or "") of an outbound recipient: a phone number or a
    phone, @lid or @g.us JID. Raises InvalidRecipient (or InvalidPhoneNumber,
    also a ValueError) saying what is wrong.

    A phone JID is kept as given (WhatsApp's own `521...` form for Mexico is
    where replies to such a client go); its E.164 is derived beside it."""
    text = str(value or "").strip()
    if "@" not in text:
        phone = phone_to_e164(text, default_region)
        return phone_jid(phone), phone
    match = _RECIPIENT.fullmatch(text)
    if match is None:
        raise InvalidRecipient(
            f"{text!r} is not a JID: expected digits[:device]@s.whatsapp.net, digits@lid "
            "or a group id@g.us"
        )
    user, server = match["user"], match["server"]
    if server in {PHONE_SERVER, LEGACY_PHONE_SERVER}:
        if not _PHONE_USER.fullmatch(user):
            raise InvalidRecipient(
                f"{text!r}: a phone JID's user part is the international number, "
                f"1 to {MAX_E164_DIGITS} digits"
            )
        phone = phone_to_e164(user)
        return f"{user}@{PHONE_SERVER}", phone
    if server == LID_SERVER:
        if not _LID_USER.fullmatch(user):
            raise InvalidRecipient(f"{text!r}: a LID's user part is 5 to 20 digits")
        return f"{user}@{LID_SERVER}", ""
    if server == GROUP_SERVER:
        if match["agent"] or match["device"] or not _GROUP_USER.fullmatch(user):
            raise InvalidRecipient(
                f"{text!r}: a group id is digits (or the old phone-timestamp form)"
            )
        return f"{user}@{GROUP_SERVER}", ""
    raise InvalidRecipient(f"cannot send to {text!r}: only phone, LID and group JIDs are supported")
