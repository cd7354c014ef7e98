"""Turn a neonize `MessageEv` protobuf into a plain NormalizedMessage.

Only this module reads message protobufs; everything after it sees plain
values. A malformed event raises MalformedEvent and nothing is stored.

What WhatsApp delivered from a person is never dropped for our opinion of
their number: the JID is the identity, the E.164 phone is derived beside it
where it can be (Mexico's `521...` JIDs become +52...), else left "".
Events that are not a client writing -- reactions, edits, pins, keeps, album
headers, poll votes, channel (newsletter) posts, bots, status stories, our
own messages -- come back with an `ignore_reason` and are not stored.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf.message import DecodeError
from neonize.proto.Neonize_pb2 import Message as MessageEv
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ProtocolMessage

from .jids import Jid, phone_or_empty
from .kinds import MessageKind

MAX_TEXT_CHARS = 65536  # WhatsApp's own limit for a text message
MAX_EVENT_BYTES = 2 * 1024 * 1024
MAX_ID_CHARS = 128
MAX_JID_CHARS = 128  # the JID columns of InboundMessage
DEFAULT_PUSH_NAME = "Client"

# Kinds that are not a new message from a client (nothing to answer).
NON_CLIENT_KINDS = {
    MessageKind.REACTION,
    MessageKind.EDIT,
    MessageKind.REVOKE,
    MessageKind.PROTOCOL,
    MessageKind.STATUS,
}


class MalformedEvent(ValueError):
    """An event we cannot turn into a message. Carries why, for the log and the row."""


@dataclass(frozen=True)
class NormalizedMessage:
    message_id: str
    chat_jid: str
    sender_jid: str
    sender_phone: str  # E.164, or "" when WhatsApp hides it (LID without SenderAlt)
    sender_lid: str
    push_name: str
    text: str
    kind: str
    timestamp: datetime
    from_me: bool = False
    is_group: bool = False
    is_status: bool = False
    extra: dict = field(default_factory=dict, compare=False)
    ignored: str = ""  # why the source is not a client at all (a channel, a bot)
    sender_phone_jid: str = ""  # the sender's phone JID (the sender's, or its SenderAlt)

    @property
    def is_person_reply(self):
        """Written on the business's own phone or another of its linked devices
        into a chat (not a status, reaction, edit...): a person's reply."""
        return (
            self.from_me
            and not self.ignored
            and not self.is_status
            and self.kind not in NON_CLIENT_KINDS
        )

    @property
    def is_client_message(self):
        """A new message from a client, i.e. something to process and maybe answer."""
        return not self.ignore_reason

    @property
    def ignore_reason(self):
        if self.ignored:
            return self.ignored
        if self.from_me:
            return "own message"
        if self.is_status:
            return "status broadcast"
        if self.kind in NON_CLIENT_KINDS:
            what = self.extra.get("protocol_type", "").lower().replace("_", " ")
            return f"{what or self.kind} is not a new client message"
        return ""


def parse_message_event(data):
    """Parse serialized MessageEv bytes (from the simulator or a queue)."""
    if not isinstance(data, (bytes, bytearray)):
        raise MalformedEvent(f"expected serialized MessageEv bytes, got {type(data).__name__}")
    if len(data) > MAX_EVENT_BYTES:
        raise MalformedEvent(f"event is {len(data)} bytes; the limit is {MAX_EVENT_BYTES}")
    try:
        return MessageEv.FromString(bytes(data))
    except DecodeError as exc:
        raise MalformedEvent(f"not a MessageEv protobuf: {exc}") from None


def normalize_message(event):
    """Normalise a neonize MessageEv into a NormalizedMessage (or raise MalformedEvent)."""
    if isinstance(event, (bytes, bytearray)):
        event = parse_message_event(event)
    if not isinstance(event, MessageEv):
        raise MalformedEvent(f"expected a neonize MessageEv, got {type(event).__name__}")

    info = event.Info
    source = info.MessageSource
    message_id = info.ID.strip()
    if not message_id:
        raise MalformedEvent("message has no ID")
    if len(message_id) > MAX_ID_CHARS:
        raise MalformedEvent(f"message ID is longer than {MAX_ID_CHARS} characters")
    if not message_id.isprintable():
        raise MalformedEvent(f"message ID {message_id!r} contains control characters")
    if not source.HasField("Chat") or not source.Chat.Server:
        raise MalformedEvent(f"message {message_id} has no chat JID")

    try:
        chat = Jid.parse(source.Chat)
        sender = Jid.parse(source.Sender) if source.Sender.Server else chat
        sender_alt = Jid.parse(source.SenderAlt) if source.SenderAlt.Server else None
    except ValueError as exc:
        raise MalformedEvent(f"message {message_id}: {exc}") from None
    for role, jid in (("chat", chat), ("sender", sender), ("SenderAlt", sender_alt)):
        _check_jid(message_id, role, jid)

    from_me = bool(source.IsFromMe)
    not_a_client = _not_a_client(chat, sender)
    if not_a_client:
        return NormalizedMessage(
            message_id=message_id,
            chat_jid=chat.bare(),
            sender_jid=sender.bare(),
            sender_phone="",
            sender_lid="",
            push_name=DEFAULT_PUSH_NAME,
            text="",
            kind=MessageKind.OTHER,
            timestamp=datetime.now(UTC),
            from_me=from_me,
            ignored=not_a_client,
        )

    is_status = chat.is_status
    extra = {}
    if chat.is_broadcast_list:
        # A broadcast list message arrives in the 1:1 chat with its sender:
        # that chat is where a reply goes, not the list.
        extra["broadcast_list"] = chat.bare()
        chat = sender
        is_group = False
    else:
        is_group = bool(source.IsGroup) or chat.is_group
    if is_group and sender == chat:
        raise MalformedEvent(f"group message {message_id} has no participant sender")

    kind, text, content_extra = _classify(event)
    extra.update(content_extra)
    if is_status:
        kind = MessageKind.STATUS
    if len(text) > MAX_TEXT_CHARS:
        raise MalformedEvent(
            f"message {message_id} text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}"
        )

    sender_phone, sender_lid, sender_phone_jid = _sender_identity(
        message_id, sender, sender_alt, strict=not from_me and not is_status
    )
    return NormalizedMessage(
        message_id=message_id,
        chat_jid=chat.bare(),
        sender_jid=sender.bare(),
        sender_phone=sender_phone,
        sender_lid=sender_lid,
        push_name=_clean(info.Pushname).strip()[:200] or DEFAULT_PUSH_NAME,
        text=_clean(text),
        kind=kind,
        timestamp=_timestamp(info.Timestamp),
        from_me=from_me,
        is_group=is_group,
        is_status=is_status,
        extra=extra,
        sender_phone_jid=sender_phone_jid,
    )


def _not_a_client(chat, sender):
    """Why messages of this chat/sender are no client writing to us, or ""."""
    if chat.is_newsletter or sender.is_newsletter:
        return "newsletter (channel) post"
    if chat.is_bot or sender.is_bot:
        return "message from a bot"
    return ""


def _check_jid(message_id, role, jid):
    """A JID we can store and reply to: a user part, printable, fits the columns."""
    if jid is None:
        return
    if not jid.user:
        raise MalformedEvent(f"message {message_id}: {role} JID {jid} has no user part")
    bare = jid.bare()
    if len(bare) > MAX_JID_CHARS:
        raise MalformedEvent(
            f"message {message_id}: {role} JID is longer than {MAX_JID_CHARS} characters"
        )
    if not bare.isprintable() or " " in bare:
        raise MalformedEvent(f"message {message_id}: {role} JID {bare!r} has invalid characters")


def _clean(text):
    """Drop NUL characters: PostgreSQL text columns cannot hold them (SQLite truncates)."""
    return (text or "").replace("\x00", "")


def _sender_identity(message_id, sender, sender_alt, strict):
    """(E.164 phone or '', LID or '', phone JID or '') of the sender.

    `strict` (a client message): the sender must be a user JID WhatsApp issues
    (phone or LID, numeric). The phone is derived where it can be; a number our
    phone library does not know is no reason to drop what WhatsApp delivered."""
    lid = ""
    phone_jid = None
    if sender.is_lid:
        lid = sender.bare()
        if sender_alt is not None and sender_alt.is_phone:
            phone_jid = sender_alt
    elif sender.is_phone:
        phone_jid = sender
        if sender_alt is not None and sender_alt.is_lid:
            lid = sender_alt.bare()
    elif strict:
        raise MalformedEvent(
            f"message {message_id}: sender {sender} is neither a phone number nor a LID"
        )
    if strict and not (sender.user.isascii() and sender.user.isdigit()):
        kind = "a phone number" if sender.is_phone else "a number"
        raise MalformedEvent(
            f"message {message_id}: the user part of sender {sender} is not {kind}"
        )
    if phone_jid is None:
        return "", lid, ""
    return phone_or_empty(phone_jid), lid, phone_jid.bare()


def _timestamp(value):
    if not value or value < 0:
        return datetime.now(UTC)
    seconds = value / 1000 if value > 10**11 else value  # tolerate milliseconds
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise MalformedEvent(f"timestamp {value} is out of range") from None


_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
    "groupMentionedMessage",
    "associatedChildMessage",  # an album's photos and videos
    "lottieStickerMessage",
    "spoilerMessage",
)
_MEDIA = (
    ("imageMessage", MessageKind.IMAGE),
    ("videoMessage", MessageKind.VIDEO),
    ("ptvMessage", MessageKind.VIDEO),
    ("documentMessage", MessageKind.DOCUMENT),
    ("audioMessage", MessageKind.AUDIO),
    ("stickerMessage", MessageKind.STICKER),
)
_POLLS = (
    "pollCreationMessage",
    "pollCreationMessageV2",
    "pollCreationMessageV3",
    "pollCreationMessageV4",
    "pollCreationMessageV5",
    "pollCreationMessageV6",
)
# Content that is no client writing: chat housekeeping and votes. Stored
# nowhere, answered never (a handler that wants poll votes would need them
# decrypted first: whatsmeow's DecryptPollVote).
_NOT_WRITING = (
    ("pinInChatMessage", "PIN_IN_CHAT"),
    ("keepInChatMessage", "KEEP_IN_CHAT"),
    ("albumMessage", "ALBUM_HEADER"),
    ("pollUpdateMessage", "POLL_VOTE"),
    ("encEventResponseMessage", "EVENT_RESPONSE"),
    ("messageHistoryBundle", "HISTORY_BUNDLE"),
    ("messageHistoryNotice", "HISTORY_NOTICE"),
)


def _unwrap(msg, depth=0):
    """Ephemeral / view-once / caption wrappers carry the real message inside."""
    for name in _WRAPPERS:
        if msg.HasField(name) and depth < 4:
            inner = getattr(msg, name)
            if inner.HasField("message"):
                return _unwrap(inner.message, depth + 1)
    return msg


def _classify(event):
    """(kind, text, extra) of the message content."""
    if event.IsEdit:
        return MessageKind.EDIT, "", {}
    msg = _unwrap(event.Message)
    if msg.HasField("protocolMessage"):
        ptype = msg.protocolMessage.type
        extra = (
            {"target_id": msg.protocolMessage.key.ID} if msg.protocolMessage.HasField("key") else {}
        )
        if ptype == ProtocolMessage.REVOKE:
            return MessageKind.REVOKE, "", extra
        if ptype == ProtocolMessage.MESSAGE_EDIT:
            return MessageKind.EDIT, "", extra
        return MessageKind.PROTOCOL, "", {"protocol_type": ProtocolMessage.Type.Name(ptype)}
    if msg.HasField("editedMessage"):
        return MessageKind.EDIT, "", {}
    for name, label in _NOT_WRITING:
        if msg.HasField(name):
            return MessageKind.PROTOCOL, "", {"protocol_type": label}
    if msg.HasField("reactionMessage") or msg.HasField("encReactionMessage"):
        return MessageKind.REACTION, msg.reactionMessage.text, {}
    if msg.HasField("conversation") or msg.conversation:
        return MessageKind.TEXT, msg.conversation, {}
    if msg.HasField("extendedTextMessage"):
        return MessageKind.TEXT, msg.extendedTextMessage.text, {}
    for name, kind in _MEDIA:
        if msg.HasField(name):
            part = getattr(msg, name)
            caption = part.caption if hasattr(part, "caption") else ""
            return kind, caption, {}
    if msg.HasField("buttonsResponseMessage"):
        reply = msg.buttonsResponseMessage
        return (
            MessageKind.BUTTON_REPLY,
            reply.selectedDisplayText or reply.selectedButtonID,
            {"button_id": reply.selectedButtonID},
        )
    if msg.HasField("templateButtonReplyMessage"):
        reply = msg.templateButtonReplyMessage
        return (
            MessageKind.BUTTON_REPLY,
            reply.selectedDisplayText or reply.selectedID,
            {"button_id": reply.selectedID},
        )
    if msg.HasField("listResponseMessage"):
        reply = msg.listResponseMessage
        row_id = reply.singleSelectReply.selectedRowID
        return MessageKind.LIST_REPLY, reply.title or row_id, {"row_id": row_id}
    if msg.HasField("interactiveResponseMessage"):
        return MessageKind.BUTTON_REPLY, msg.interactiveResponseMessage.body.text, {}
    if msg.HasField("locationMessage") or msg.HasField("liveLocationMessage"):
        return MessageKind.LOCATION, "", {}
    if msg.HasField("contactMessage") or msg.HasField("contactsArrayMessage"):
        return MessageKind.CONTACT, "", {}
    if any(msg.HasField(name) for name in _POLLS):
        return MessageKind.POLL, "", {}
    if msg.HasField("senderKeyDistributionMessage") and len(msg.ListFields()) <= 2:
        return MessageKind.PROTOCOL, "", {"protocol_type": "SENDER_KEY_DISTRIBUTION"}
    return MessageKind.OTHER, "", {}
