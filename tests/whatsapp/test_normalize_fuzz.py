"""Fuzzing the inbound edge with hypothesis: real neonize MessageEv protobufs
with arbitrary field values (JIDs of every server, odd user parts, devices,
IDs, push names, timestamps, texts, content kinds and wrappers) and arbitrary
bytes.

1. The normaliser either returns a NormalizedMessage whose values fit the
   columns, or raises its one documented error, MalformedEvent. Nothing else.
2. Whatever it returns goes through the real record service (single and the
   worker's batched path) and is stored all or nothing: a client message is
   one row with one job, an ignored event or a redelivery adds no row and no
   job, and recording never fails for a normalised message.
"""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neonize.proto.Neonize_pb2 import JID, MessageInfo, MessageSource
from neonize.proto.Neonize_pb2 import Message as MessageEv
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    AlbumMessage,
    ButtonsResponseMessage,
    DocumentMessage,
    ExtendedTextMessage,
    FutureProofMessage,
    ImageMessage,
    KeepInChatMessage,
    ListResponseMessage,
    MessageContextInfo,
    PinInChatMessage,
    PollCreationMessage,
    PollUpdateMessage,
    ProtocolMessage,
    ReactionMessage,
    VideoMessage,
)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage

from whatsapp.models import InboundMessage, MessageKind, ProcessingJob, WhatsAppSession
from whatsapp.services.inbound import (
    InboundOutcome,
    record_inbound_message,
    record_inbound_messages,
)
from whatsapp.transport.build import EMPTY_JID
from whatsapp.transport.normalize import (
    MAX_ID_CHARS,
    MAX_JID_CHARS,
    MAX_TEXT_CHARS,
    MalformedEvent,
    NormalizedMessage,
    normalize_message,
)

E164 = re.compile(r"\+[1-9]\d{1,14}")
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: a red test is reproducible
)

# Protobuf strings are UTF-8: no lone surrogates.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
long_text = st.one_of(
    text,
    st.integers(MAX_TEXT_CHARS - 1, MAX_TEXT_CHARS + 1).map(lambda n: "x" * n),
)
digits = st.integers(0, 24).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))
user = st.one_of(
    digits,
    st.sampled_from(["status", "5215512345678", "5491123456789", "4912345678901234", "0", ""]),
    st.builds(lambda d, dev: f"{d}:{dev}", digits, st.integers(0, 99)),
    st.builds(lambda d: f"{d}.0", digits),
    text,
    st.integers(120, 140).map(lambda n: "1" * n),
)
server = st.one_of(
    st.sampled_from(
        ["s.whatsapp.net", "lid", "g.us", "broadcast", "newsletter", "bot", "c.us", "msgr", ""]
    ),
    text,
)
any_jid = st.builds(
    lambda u, s, d, a: JID(User=u, Server=s, Device=d, RawAgent=a, Integrator=0, IsEmpty=not s),
    user,
    server,
    st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    st.one_of(st.just(0), st.integers(0, 255)),
)
# JIDs as WhatsApp issues them (so that many examples are real client messages)
real_jid = st.builds(
    lambda us, d: JID(User=us[0], Server=us[1], Device=d, RawAgent=0, Integrator=0,
                      IsEmpty=False),
    st.sampled_from(
        [
            ("491701234567", "s.whatsapp.net"),
            ("5215512345678", "s.whatsapp.net"),
            ("5491123456789", "s.whatsapp.net"),
            ("12025550123", "s.whatsapp.net"),
            ("4912345678901234", "s.whatsapp.net"),
            ("123456789012345", "lid"),
            ("120363025246125888", "g.us"),
            ("status", "broadcast"),
            ("1612345678", "broadcast"),
            ("120363198765432101", "newsletter"),
        ]
    ),
    st.sampled_from([0, 0, 3, 12]),
)
jid = st.one_of(real_jid, real_jid, any_jid)
key = st.builds(lambda i: MessageKey(remoteJID="491701234567@s.whatsapp.net", ID=i), text)


def wrapped(inner):
    wrappers = st.sampled_from(
        [
            "ephemeralMessage",
            "viewOnceMessage",
            "viewOnceMessageV2",
            "viewOnceMessageV2Extension",
            "documentWithCaptionMessage",
            "groupMentionedMessage",
            "associatedChildMessage",
            "editedMessage",
            "botInvokeMessage",
        ]
    )
    return st.builds(
        lambda name, msg: WAMessage(**{name: FutureProofMessage(message=msg)}), wrappers, inner
    )


content = st.recursive(
    st.one_of(
        st.builds(lambda t: WAMessage(conversation=t), long_text),
        st.builds(lambda t: WAMessage(extendedTextMessage=ExtendedTextMessage(text=t)), long_text),
        st.builds(lambda t: WAMessage(imageMessage=ImageMessage(caption=t)), long_text),
        st.builds(lambda t: WAMessage(videoMessage=VideoMessage(caption=t)), text),
        st.builds(lambda t: WAMessage(documentMessage=DocumentMessage(caption=t)), text),
        st.builds(
            lambda k, t: WAMessage(reactionMessage=ReactionMessage(key=k, text=t)), key, text
        ),
        st.builds(
            lambda k, t: WAMessage(protocolMessage=ProtocolMessage(key=k, type=t)),
            key,
            st.sampled_from(list(ProtocolMessage.Type.values())),
        ),
        st.builds(lambda k: WAMessage(pinInChatMessage=PinInChatMessage(key=k, type=1)), key),
        st.builds(lambda k: WAMessage(keepInChatMessage=KeepInChatMessage(key=k)), key),
        st.builds(lambda n: WAMessage(albumMessage=AlbumMessage(expectedImageCount=n)),
                  st.integers(0, 50)),
        st.builds(
            lambda k: WAMessage(pollUpdateMessage=PollUpdateMessage(pollCreationMessageKey=k)), key
        ),
        st.builds(lambda t: WAMessage(pollCreationMessageV3=PollCreationMessage(name=t)), text),
        st.builds(
            lambda i, t: WAMessage(
                buttonsResponseMessage=ButtonsResponseMessage(
                    selectedButtonID=i, selectedDisplayText=t
                )
            ),
            text,
            text,
        ),
        st.builds(
            lambda t: WAMessage(listResponseMessage=ListResponseMessage(title=t)), text
        ),
        st.builds(
            lambda s: WAMessage(messageContextInfo=MessageContextInfo(messageSecret=s)),
            st.binary(max_size=32),
        ),
        st.just(WAMessage()),
    ),
    wrapped,
    max_leaves=3,
)


@st.composite
def events(draw):
    chat = draw(jid)
    source = MessageSource(
        Chat=chat,
        Sender=draw(st.one_of(st.just(chat), jid)),
        IsFromMe=draw(st.booleans()),
        IsGroup=draw(st.booleans()),
        SenderAlt=draw(st.one_of(st.just(EMPTY_JID), jid)),
        RecipientAlt=EMPTY_JID,
        BroadcastListOwner=EMPTY_JID,
    )
    info = MessageInfo(
        MessageSource=source,
        ID=draw(st.one_of(st.text("0123456789ABCDEF", min_size=1, max_size=24), text)),
        Pushname=draw(text),
        Timestamp=draw(st.one_of(st.integers(1_600_000_000, 1_900_000_000),
                                 st.integers(-(2**63), 2**63 - 1))),
        ServerID=0,
        Type="",
        Category="",
        Multicast=False,
        MediaType="",
        Edit="",
    )
    event = MessageEv(
        Info=info,
        Message=draw(content),
        IsEdit=draw(st.booleans()),
        IsEphemeral=False,
        IsViewOnce=False,
        IsViewOnceV2=False,
        IsViewOnceV2Extension=False,
        IsDocumentWithCaption=False,
        IsLottieSticker=False,
        UnavailableRequestID="",
        RetryCount=0,
    )
    if not draw(st.booleans()) and event.Info.MessageSource.HasField("Chat"):
        event.Info.MessageSource.ClearField("Chat")  # sometimes no chat at all
    return event


def normalised_or_none(event):
    """The normaliser's answer; only MalformedEvent may come out of it."""
    try:
        message = normalize_message(event)
    except MalformedEvent:
        return None
    assert isinstance(message, NormalizedMessage)
    return message


def assert_fits_the_columns(message):
    assert 0 < len(message.message_id) <= MAX_ID_CHARS
    for value in (message.chat_jid, message.sender_jid):
        assert len(value) <= MAX_JID_CHARS and "\x00" not in value
    assert len(message.sender_lid) <= MAX_JID_CHARS
    assert message.sender_phone == "" or E164.fullmatch(message.sender_phone)
    assert len(message.push_name) <= 200 and "\x00" not in message.push_name
    assert len(message.text) <= MAX_TEXT_CHARS and "\x00" not in message.text
    assert message.kind in MessageKind.values
    assert message.is_client_message is (message.ignore_reason == "")


@FUZZ
@given(event=events())
def test_the_normaliser_returns_a_storable_message_or_raises_malformed_event(event):
    # the bytes a queue carries (partial when the chat was cleared: malformed)
    for form in (event, event.SerializePartialToString()):
        message = normalised_or_none(form)
        if message is not None:
            assert_fits_the_columns(message)


@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_are_an_event_or_malformed(data):
    message = normalised_or_none(bytes(data))
    if message is not None:
        assert_fits_the_columns(message)


def counts(company):
    return (
        InboundMessage.objects.filter(company=company).count(),
        ProcessingJob.objects.filter(message__company=company).count(),
    )


def assert_stored_all_or_nothing(company, message, outcome, before):
    rows, jobs = counts(company)
    if outcome.status == InboundOutcome.CREATED:
        assert (rows, jobs) == (before[0] + 1, before[1] + 1)
        row = InboundMessage.objects.get(pk=outcome.message_pk)
        stored = (row.wa_message_id, row.chat_jid, row.sender_jid, row.sender_phone,
                  row.sender_lid, row.push_name, row.kind, row.text, row.is_group)
        assert stored == (
            message.message_id, message.chat_jid, message.sender_jid, message.sender_phone,
            message.sender_lid, message.push_name, message.kind, message.text, message.is_group,
        )
        assert ProcessingJob.objects.filter(message=row).count() == 1
    else:
        assert outcome.status in {InboundOutcome.IGNORED, InboundOutcome.DUPLICATE}
        assert outcome.status != InboundOutcome.IGNORED or not message.is_client_message
        assert (rows, jobs) == before


@pytest.fixture
def session(company):
    return WhatsAppSession.objects.create(company=company)


@pytest.mark.django_db
def test_every_normalised_event_is_recorded_all_or_nothing(company, session):
    seen = set()

    @settings(FUZZ, max_examples=120)
    @given(event=events())
    def check(event):
        message = normalised_or_none(event)
        if message is None:
            seen.add("malformed")
            return
        before = counts(company)
        outcome = record_inbound_message(company.pk, message)  # never raises
        assert_stored_all_or_nothing(company, message, outcome, before)
        seen.add(outcome.status)

    check()
    # the examples reached every outcome (the test cannot pass on malformed events alone)
    assert {"malformed", InboundOutcome.CREATED, InboundOutcome.IGNORED} <= seen, seen


@pytest.mark.django_db
def test_a_batch_of_fuzzed_events_is_recorded_all_or_nothing_per_message(company, session):
    @settings(FUZZ, max_examples=25)
    @given(batch=st.lists(events(), min_size=1, max_size=6))
    def check(batch):
        messages = [m for m in map(normalised_or_none, batch) if m is not None]
        before = counts(company)
        results = record_inbound_messages([(company.pk, m) for m in messages])
        assert len(results) == len(messages)
        assert not [r for r in results if isinstance(r, BaseException)]
        created = [r for r in results if r.created]
        assert counts(company) == (before[0] + len(created), before[1] + len(created))
        for message, outcome in zip(messages, results, strict=True):
            if not message.is_client_message:
                assert outcome.status == InboundOutcome.IGNORED

    check()
