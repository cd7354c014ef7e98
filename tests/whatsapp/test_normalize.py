"""The normaliser, driven by a table of real neonize MessageEv protobufs.

Every event is built with whatsapp/transport/build.py (the library's own
message types) and also pushed through its serialized form, as the session
worker and the simulator hand it over.
"""

from datetime import UTC, datetime

import pytest
from neonize.proto.Neonize_pb2 import Message as MessageEv
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    AlbumMessage,
    AudioMessage,
    ButtonsResponseMessage,
    DocumentMessage,
    ExtendedTextMessage,
    FutureProofMessage,
    ImageMessage,
    KeepInChatMessage,
    KeepType,
    ListResponseMessage,
    MessageContextInfo,
    PinInChatMessage,
    PollCreationMessage,
    PollEncValue,
    PollUpdateMessage,
    ProtocolMessage,
    ReactionMessage,
    StickerMessage,
    VideoMessage,
)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage

from whatsapp.models.messages import MessageKind
from whatsapp.transport.build import jid_proto, message_event
from whatsapp.transport.normalize import (
    MAX_EVENT_BYTES,
    MAX_TEXT_CHARS,
    MalformedEvent,
    normalize_message,
    parse_message_event,
)

PHONE = "491701234567@s.whatsapp.net"
E164 = "+491701234567"
LID = "123456789012345@lid"
GROUP = "120363025246125888@g.us"
NEWSLETTER = "120363198765432101@newsletter"
T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC


def both_forms(event):
    """The event as a protobuf object and as the bytes a queue would carry."""
    return [normalize_message(event), normalize_message(event.SerializeToString())]


def key(message_id="3EB0TARGET"):
    return MessageKey(remoteJID=PHONE, fromMe=False, ID=message_id)


# (case, event, expected fields). Every client message of a phone JID expects
# its E.164 phone; other fields are listed where they matter.
CASES = [
    (
        "conversation",
        message_event("M-conv", PHONE, "hello there", push_name="Anna", timestamp=T0),
        {
            "kind": MessageKind.TEXT,
            "text": "hello there",
            "push_name": "Anna",
            "sender_phone": E164,
            "chat_jid": PHONE,
            "sender_jid": PHONE,
            "client": True,
            "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
        },
    ),
    (
        "extended text (a reply or a link preview)",
        message_event(
            "M-ext",
            PHONE,
            content=WAMessage(
                extendedTextMessage=ExtendedTextMessage(
                    text="see https://example.com", matchedText="https://example.com"
                )
            ),
        ),
        {"kind": MessageKind.TEXT, "text": "see https://example.com", "client": True},
    ),
    (
        "image with caption",
        message_event(
            "M-img",
            PHONE,
            content=WAMessage(
                imageMessage=ImageMessage(caption="my haircut", mimetype="image/jpeg")
            ),
        ),
        {"kind": MessageKind.IMAGE, "text": "my haircut", "client": True},
    ),
    (
        "video with caption",
        message_event(
            "M-vid",
            PHONE,
            content=WAMessage(videoMessage=VideoMessage(caption="look", mimetype="video/mp4")),
        ),
        {"kind": MessageKind.VIDEO, "text": "look", "client": True},
    ),
    (
        "document with caption (wrapped, as WhatsApp sends it)",
        message_event(
            "M-doc",
            PHONE,
            content=WAMessage(
                documentWithCaptionMessage=FutureProofMessage(
                    message=WAMessage(
                        documentMessage=DocumentMessage(caption="the invoice", fileName="a.pdf")
                    )
                )
            ),
        ),
        {"kind": MessageKind.DOCUMENT, "text": "the invoice", "client": True},
    ),
    (
        "document with caption (unwrapped)",
        message_event(
            "M-doc2",
            PHONE,
            content=WAMessage(
                documentMessage=DocumentMessage(caption="contract", fileName="c.pdf")
            ),
        ),
        {"kind": MessageKind.DOCUMENT, "text": "contract", "client": True},
    ),
    (
        "image without caption",
        message_event(
            "M-img0", PHONE, content=WAMessage(imageMessage=ImageMessage(mimetype="image/jpeg"))
        ),
        {"kind": MessageKind.IMAGE, "text": "", "client": True},
    ),
    (
        "document without caption",
        message_event(
            "M-doc0", PHONE, content=WAMessage(documentMessage=DocumentMessage(fileName="scan.pdf"))
        ),
        {"kind": MessageKind.DOCUMENT, "text": "", "client": True},
    ),
    (
        "button reply",
        message_event(
            "M-btn",
            PHONE,
            content=WAMessage(
                buttonsResponseMessage=ButtonsResponseMessage(
                    selectedButtonID="book-monday", selectedDisplayText="Monday 10:00"
                )
            ),
        ),
        {
            "kind": MessageKind.BUTTON_REPLY,
            "text": "Monday 10:00",
            "extra": {"button_id": "book-monday"},
            "client": True,
        },
    ),
    (
        "list reply",
        message_event(
            "M-list",
            PHONE,
            content=WAMessage(
                listResponseMessage=ListResponseMessage(
                    title="Beard trim",
                    singleSelectReply=ListResponseMessage.SingleSelectReply(selectedRowID="svc-7"),
                )
            ),
        ),
        {
            "kind": MessageKind.LIST_REPLY,
            "text": "Beard trim",
            "extra": {"row_id": "svc-7"},
            "client": True,
        },
    ),
    (
        "edit (IsEdit flag)",
        message_event("M-edit", PHONE, "corrected text", is_edit=True),
        {"kind": MessageKind.EDIT, "client": False},
    ),
    (
        "edit (protocol MESSAGE_EDIT)",
        message_event(
            "M-edit2",
            PHONE,
            content=WAMessage(
                protocolMessage=ProtocolMessage(
                    key=key(),
                    type=ProtocolMessage.MESSAGE_EDIT,
                    editedMessage=WAMessage(conversation="new text"),
                )
            ),
        ),
        {"kind": MessageKind.EDIT, "extra": {"target_id": "3EB0TARGET"}, "client": False},
    ),
    (
        "reaction",
        message_event(
            "M-react",
            PHONE,
            content=WAMessage(reactionMessage=ReactionMessage(key=key(), text="\U0001f44d")),
        ),
        {"kind": MessageKind.REACTION, "client": False},
    ),
    (
        "revoke (delete for everyone)",
        message_event(
            "M-revoke",
            PHONE,
            content=WAMessage(
                protocolMessage=ProtocolMessage(key=key("3EB0GONE"), type=ProtocolMessage.REVOKE)
            ),
        ),
        {
            "kind": MessageKind.REVOKE,
            "text": "",
            "extra": {"target_id": "3EB0GONE"},
            "client": False,
        },
    ),
    (
        "protocol message (ephemeral setting)",
        message_event(
            "M-proto",
            PHONE,
            content=WAMessage(
                protocolMessage=ProtocolMessage(
                    type=ProtocolMessage.EPHEMERAL_SETTING, ephemeralExpiration=86400
                )
            ),
        ),
        {
            "kind": MessageKind.PROTOCOL,
            "extra": {"protocol_type": "EPHEMERAL_SETTING"},
            "client": False,
        },
    ),
    (
        "status broadcast (a story)",
        message_event("M-status", "status@broadcast", "my story", sender=PHONE),
        {
            "kind": MessageKind.STATUS,
            "is_status": True,
            "chat_jid": "status@broadcast",
            "client": False,
        },
    ),
    (
        "own message (sent from the paired phone)",
        message_event(
            "M-own", PHONE, "sent by the salon", sender="491609999999@s.whatsapp.net", from_me=True
        ),
        {"kind": MessageKind.TEXT, "from_me": True, "text": "sent by the salon", "client": False},
    ),
    (
        "sender with a device suffix",
        message_event("M-dev", PHONE, "from my laptop", sender="491701234567:12@s.whatsapp.net"),
        {"sender_jid": PHONE, "sender_phone": E164, "client": True},
    ),
    (
        "LID sender with SenderAlt (the phone comes from SenderAlt)",
        message_event("M-lid", LID, "hi", sender=LID, sender_alt=PHONE),
        {
            "chat_jid": LID,
            "sender_jid": LID,
            "sender_lid": LID,
            "sender_phone": E164,
            "client": True,
        },
    ),
    (
        "LID sender without SenderAlt (phone hidden, LID kept)",
        message_event("M-lid0", LID, "hi", sender="123456789012345:3@lid"),
        {"chat_jid": LID, "sender_jid": LID, "sender_lid": LID, "sender_phone": "", "client": True},
    ),
    (
        "phone sender with its LID as SenderAlt",
        message_event("M-pnlid", PHONE, "hi", sender_alt=LID),
        {"sender_phone": E164, "sender_lid": LID, "client": True},
    ),
    (
        "group message: the sender is the participant",
        message_event(
            "M-group", GROUP, "who is in?", sender="4915112345678:4@s.whatsapp.net", push_name="Ben"
        ),
        {
            "chat_jid": GROUP,
            "sender_jid": "4915112345678@s.whatsapp.net",
            "sender_phone": "+4915112345678",
            "is_group": True,
            "push_name": "Ben",
            "client": True,
        },
    ),
    (
        "group message from a LID participant with SenderAlt",
        message_event("M-glid", GROUP, "hi all", sender=LID, sender_alt=PHONE),
        {"chat_jid": GROUP, "sender_jid": LID, "sender_phone": E164, "is_group": True},
    ),
    (
        "no push name: defaults to Client",
        message_event("M-nopush", PHONE, "hi", push_name=""),
        {"push_name": "Client"},
    ),
    (
        "blank push name: defaults to Client",
        message_event("M-blank", PHONE, "hi", push_name="   "),
        {"push_name": "Client"},
    ),
    (
        "timestamp in milliseconds",
        message_event("M-ms", PHONE, "hi", timestamp=T0 * 1000),
        {"timestamp": datetime(2026, 1, 1, tzinfo=UTC)},
    ),
    (
        "NUL characters dropped from text and push name (PostgreSQL text cannot hold them)",
        message_event("M-nul", PHONE, "a\x00b", push_name="An\x00na"),
        {"text": "ab", "push_name": "Anna"},
    ),
    (
        "disappearing-mode message (ephemeral wrapper)",
        message_event(
            "M-eph",
            PHONE,
            content=WAMessage(
                ephemeralMessage=FutureProofMessage(
                    message=WAMessage(extendedTextMessage=ExtendedTextMessage(text="vanishing"))
                )
            ),
        ),
        {"kind": MessageKind.TEXT, "text": "vanishing", "client": True},
    ),
    (
        "view-once image with caption",
        message_event(
            "M-once",
            PHONE,
            content=WAMessage(
                viewOnceMessageV2=FutureProofMessage(
                    message=WAMessage(imageMessage=ImageMessage(caption="once"))
                )
            ),
        ),
        {"kind": MessageKind.IMAGE, "text": "once", "client": True},
    ),
    *[
        (
            f"a client from {country}: {jid} is {e164}",
            message_event(f"M-cc-{jid[:12]}", jid, "hola"),
            {"sender_jid": jid, "chat_jid": jid, "sender_phone": e164, "client": True},
        )
        for country, jid, e164 in [
            # WhatsApp still issues Mexico's pre-2019 mobile form (whatsmeow #874)
            ("Mexico (521 JID)", "5215512345678@s.whatsapp.net", "+525512345678"),
            ("Mexico", "525512345678@s.whatsapp.net", "+525512345678"),
            ("Argentina (549 mobile, valid E.164)", "5491123456789@s.whatsapp.net",
             "+5491123456789"),
            ("the US", "12025550123@s.whatsapp.net", "+12025550123"),
            ("the UK", "447911123456@s.whatsapp.net", "+447911123456"),
            ("Germany", "4915112345678@s.whatsapp.net", "+4915112345678"),
            ("Brazil (9-digit mobile)", "5511912345678@s.whatsapp.net", "+5511912345678"),
            # WhatsApp also issues Brazilian JIDs without the ninth digit (#874)
            ("Brazil (JID without the 9)", "556191674800@s.whatsapp.net", "+556191674800"),
            ("India", "919876543210@s.whatsapp.net", "+919876543210"),
            ("Indonesia", "6281234567890@s.whatsapp.net", "+6281234567890"),
            ("Nigeria", "2348031234567@s.whatsapp.net", "+2348031234567"),
            ("Russia", "79161234567@s.whatsapp.net", "+79161234567"),
            ("China", "8613812345678@s.whatsapp.net", "+8613812345678"),
            ("Italy (leading zero kept)", "390612345678@s.whatsapp.net", "+390612345678"),
            ("Niue (7 digits in all)", "6837001@s.whatsapp.net", "+6837001"),
        ]
    ],
    (
        "Mexican LID sender whose SenderAlt is a 521 JID",
        message_event(
            "M-mxlid", LID, "hola", sender=LID, sender_alt="5215512345678@s.whatsapp.net"
        ),
        {"sender_jid": LID, "sender_lid": LID, "sender_phone": "+525512345678", "client": True},
    ),
    (
        "Mexican participant of a group (521 JID)",
        message_event("M-mxgrp", GROUP, "hola", sender="5215512345678:7@s.whatsapp.net"),
        {"sender_jid": "5215512345678@s.whatsapp.net", "sender_phone": "+525512345678",
         "is_group": True, "client": True},
    ),
    *[
        (
            f"{what}: kept with its JID, no phone derived",
            message_event(f"M-nophone-{i}", jid, "hi", sender_alt=alt),
            {"sender_jid": jid, "chat_jid": jid, "sender_phone": "", "client": True},
        )
        for i, (what, jid, alt) in enumerate([
            ("16-digit user part (E.164 has at most 15 digits)",
             "4912345678901234@s.whatsapp.net", None),
            ("unknown country code", "999123456789@s.whatsapp.net", None),
            ("too short for any country", "12@s.whatsapp.net", None),
            ("LID whose SenderAlt is no possible number", LID, "1@s.whatsapp.net"),
            ("LID whose SenderAlt has 16 digits", LID, "4912345678901234@s.whatsapp.net"),
        ])
    ],
    (
        "sender with an agent and a device (user.agent:device)",
        message_event("M-agent", PHONE, "hi", sender="491701234567.0:12@s.whatsapp.net"),
        {"sender_jid": PHONE, "sender_phone": E164, "client": True},
    ),
    (
        "legacy c.us phone JID",
        message_event("M-cus", "491701234567@c.us", "hi"),
        {"sender_phone": E164, "client": True},
    ),
    (
        "broadcast list message: answered in the 1:1 chat with its sender",
        message_event("M-blist", "1612345678@broadcast", "offer", sender=PHONE, is_group=True),
        {"chat_jid": PHONE, "sender_jid": PHONE, "sender_phone": E164, "is_group": False,
         "extra": {"broadcast_list": "1612345678@broadcast"}, "client": True},
    ),
    (
        "channel (newsletter) post: ignored quietly",
        message_event("M-news", NEWSLETTER, "today's offers"),
        {"chat_jid": NEWSLETTER, "sender_phone": "", "client": False,
         "ignore_reason": "newsletter (channel) post"},
    ),
    (
        "channel post delivered with a phone participant",
        message_event("M-news2", NEWSLETTER, "hi", sender=PHONE),
        {"client": False, "ignore_reason": "newsletter (channel) post"},
    ),
    (
        "a bot writing (Meta AI)",
        message_event("M-bot", "867051314767696@bot", "I am an AI"),
        {"client": False, "ignore_reason": "message from a bot"},
    ),
    *[
        (
            f"{what}: not a client writing",
            message_event(f"M-nc-{i}", PHONE, content=content),
            {"kind": MessageKind.PROTOCOL, "text": "", "client": False,
             "ignore_reason": f"{reason} is not a new client message"},
        )
        for i, (what, content, reason) in enumerate([
            ("pin in chat", WAMessage(pinInChatMessage=PinInChatMessage(
                key=key(), type=PinInChatMessage.PIN_FOR_ALL, senderTimestampMS=T0 * 1000)),
             "pin in chat"),
            ("unpin", WAMessage(pinInChatMessage=PinInChatMessage(
                key=key(), type=PinInChatMessage.UNPIN_FOR_ALL)), "pin in chat"),
            ("keep in chat", WAMessage(keepInChatMessage=KeepInChatMessage(
                key=key(), keepType=KeepType.KEEP_FOR_ALL)), "keep in chat"),
            ("album header", WAMessage(albumMessage=AlbumMessage(
                expectedImageCount=3, expectedVideoCount=1)), "album header"),
            ("poll vote (encrypted)", WAMessage(pollUpdateMessage=PollUpdateMessage(
                pollCreationMessageKey=key(),
                vote=PollEncValue(encPayload=b"\x01" * 32, encIV=b"\x02" * 12))), "poll vote"),
            ("pin inside a disappearing-mode wrapper", WAMessage(
                ephemeralMessage=FutureProofMessage(message=WAMessage(
                    pinInChatMessage=PinInChatMessage(
                        key=key(), type=PinInChatMessage.PIN_FOR_ALL)))), "pin in chat"),
        ])
    ],
    (
        "poll created by a client",
        message_event("M-poll", PHONE, content=WAMessage(
            pollCreationMessageV3=PollCreationMessage(
                name="Which day?", options=[PollCreationMessage.Option(optionName="Mon")]))),
        {"kind": MessageKind.POLL, "client": True},
    ),
    (
        "album photo (associatedChildMessage wrapper)",
        message_event("M-albumitem", PHONE, content=WAMessage(
            associatedChildMessage=FutureProofMessage(
                message=WAMessage(imageMessage=ImageMessage(caption="photo 1 of 3"))))),
        {"kind": MessageKind.IMAGE, "text": "photo 1 of 3", "client": True},
    ),
    (
        "view-once (v1) video",
        message_event("M-once1", PHONE, content=WAMessage(viewOnceMessage=FutureProofMessage(
            message=WAMessage(videoMessage=VideoMessage(caption="once v1"))))),
        {"kind": MessageKind.VIDEO, "text": "once v1", "client": True},
    ),
    (
        "view-once voice note (V2 extension)",
        message_event("M-once3", PHONE, content=WAMessage(
            viewOnceMessageV2Extension=FutureProofMessage(
                message=WAMessage(audioMessage=AudioMessage(PTT=True, seconds=4))))),
        {"kind": MessageKind.AUDIO, "text": "", "client": True},
    ),
    (
        "view-once inside a disappearing-mode wrapper",
        message_event("M-nested", PHONE, content=WAMessage(ephemeralMessage=FutureProofMessage(
            message=WAMessage(viewOnceMessageV2=FutureProofMessage(
                message=WAMessage(imageMessage=ImageMessage(caption="nested")))))),
        ),
        {"kind": MessageKind.IMAGE, "text": "nested", "client": True},
    ),
    (
        "edit (editedMessage wrapper)",
        message_event("M-edit3", PHONE, content=WAMessage(editedMessage=FutureProofMessage(
            message=WAMessage(conversation="fixed")))),
        {"kind": MessageKind.EDIT, "client": False},
    ),
    (
        "group mention wrapper",
        message_event("M-gment", GROUP, sender=PHONE, content=WAMessage(
            groupMentionedMessage=FutureProofMessage(
                message=WAMessage(extendedTextMessage=ExtendedTextMessage(text="@all hi"))))),
        {"kind": MessageKind.TEXT, "text": "@all hi", "is_group": True, "client": True},
    ),
    (
        "animated (lottie) sticker",
        message_event("M-lottie", PHONE, content=WAMessage(lottieStickerMessage=FutureProofMessage(
            message=WAMessage(stickerMessage=StickerMessage(isLottie=True))))),
        {"kind": MessageKind.STICKER, "client": True},
    ),
    (
        "a content type we do not know: stored (never dropped), kind other",
        message_event("M-unknown", PHONE, content=WAMessage(
            messageContextInfo=MessageContextInfo(messageSecret=b"s" * 32))),
        {"kind": MessageKind.OTHER, "text": "", "client": True},
    ),
    (
        "text at the limit",
        message_event("M-long", PHONE, "x" * MAX_TEXT_CHARS),
        {"text": "x" * MAX_TEXT_CHARS},
    ),
]


@pytest.mark.parametrize("event,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_it_normalises_every_kind_of_event(event, expected):
    expected = dict(expected)
    client = expected.pop("client", None)
    expected.setdefault("message_id", event.Info.ID)
    for normalised in both_forms(event):
        for name, value in expected.items():
            actual = normalised.is_client_message if name == "client" else getattr(normalised, name)
            assert actual == value, f"{name}: {actual!r} != {value!r}"
        if client is not None:
            assert normalised.is_client_message is client
            assert bool(normalised.ignore_reason) is not client


def test_it_keeps_plain_client_messages_flat_and_ungrouped():
    msg = normalize_message(message_event("M1", PHONE, "hi", push_name="Anna"))
    assert (msg.from_me, msg.is_group, msg.is_status) == (False, False, False)
    assert msg.sender_lid == ""
    assert msg.ignore_reason == ""


def test_it_says_why_a_non_client_message_is_ignored():
    own = normalize_message(message_event("M1", PHONE, "hi", from_me=True))
    story = normalize_message(message_event("M2", "status@broadcast", "s", sender=PHONE))
    react = normalize_message(
        message_event(
            "M3", PHONE, content=WAMessage(reactionMessage=ReactionMessage(key=key(), text="x"))
        )
    )
    assert own.ignore_reason == "own message"
    assert story.ignore_reason == "status broadcast"
    assert react.ignore_reason == "reaction is not a new client message"


def _mutated(**changes):
    """A real event with one part broken the way a bad producer would break it."""
    event = message_event("M-bad", PHONE, "hi")
    for path, value in changes.items():
        target = event
        *parents, leaf = path.split("__")
        for part in parents:
            target = getattr(target, part)
        if hasattr(value, "CopyFrom"):
            getattr(target, leaf).CopyFrom(value)
        else:
            setattr(target, leaf, value)
    return event


MALFORMED = [
    ("missing id", message_event("", PHONE, "hi"), "has no ID"),
    ("missing id of a channel post", message_event("", NEWSLETTER, "news"), "has no ID"),
    ("blank id", message_event("   ", PHONE, "hi"), "has no ID"),
    ("id too long", message_event("M" * 129, PHONE, "hi"), "longer than 128"),
    ("message ID with a NUL character", message_event("M\x00X", PHONE, "hi"), "control characters"),
    ("LID chat without a user part", message_event("M-x", "@lid", "hi"), "no user part"),
    (
        "group chat without a user part",
        message_event("M-x", "@g.us", "hi", sender=PHONE),
        "no user part",
    ),
    (
        "participant without a user part",
        message_event("M-x", GROUP, "hi", sender="@lid"),
        "no user part",
    ),
    (
        "JID longer than 128 characters",
        message_event("M-x", "1" * 130 + "@lid", "hi"),
        "longer than 128",
    ),
    ("no chat JID", _mutated(Info__MessageSource__Chat=jid_proto("")), "no chat JID"),
    (
        "JID with a non-numeric device",
        _mutated(Info__MessageSource__Sender__User="4917012:x"),
        "device suffix is not a number",
    ),
    (
        "sender that is neither phone nor LID",
        message_event("M-x", PHONE, "hi", sender="100012345@msgr"),
        "neither a phone",
    ),
    (
        "phone JID whose user is not digits",
        message_event("M-x", "abc@s.whatsapp.net", "hi"),
        "not a phone number",
    ),
    (
        "LID whose user part is not a number",
        message_event("M-x", "abc@lid", "hi"),
        "not a number",
    ),
    (
        "LID whose user part is digits of another script",
        message_event("M-x", "\u0661\u0662\u0663\u0664\u0665\u0666@lid", "hi"),
        "not a number",
    ),
    (
        "group message without a participant",
        message_event("M-x", GROUP, "hi"),
        "no participant sender",
    ),
    (
        "oversized text",
        message_event("M-x", PHONE, "x" * (MAX_TEXT_CHARS + 1)),
        "the limit is 65536",
    ),
    (
        "oversized caption",
        message_event(
            "M-x",
            PHONE,
            content=WAMessage(imageMessage=ImageMessage(caption="y" * (MAX_TEXT_CHARS + 1))),
        ),
        "the limit is 65536",
    ),
    ("timestamp out of range", message_event("M-x", PHONE, "hi", timestamp=2**62), "out of range"),
]


@pytest.mark.parametrize("event,reason", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_it_rejects_a_malformed_event_with_one_clear_error(event, reason):
    for form in (event, event.SerializeToString()):
        with pytest.raises(MalformedEvent, match=reason):
            normalize_message(form)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"\xff\xff\xff", "not a MessageEv protobuf"),
        (b"\x00" * (MAX_EVENT_BYTES + 1), "the limit is"),
        ("a string", "expected serialized MessageEv bytes"),
    ],
    ids=["garbage bytes", "oversized bytes", "not bytes"],
)
def test_it_rejects_bytes_that_are_not_an_event(data, reason):
    with pytest.raises(MalformedEvent, match=reason):
        parse_message_event(data)


def test_it_rejects_an_object_that_is_not_a_message_event():
    with pytest.raises(MalformedEvent, match="expected a neonize MessageEv"):
        normalize_message({"id": "M1", "text": "hi"})


def test_the_one_error_type_is_a_value_error():
    assert issubclass(MalformedEvent, ValueError)
    event = MessageEv()
    with pytest.raises(MalformedEvent):
        normalize_message(event)
