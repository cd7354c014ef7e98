"""Never drop a real client; never treat housekeeping as a client (#16).

WhatsApp still issues Mexico's `521...` JIDs (whatsmeow #874), sends channel
(newsletter) posts, pins, keeps, album headers and poll votes through the
same message event. Real neonize MessageEv protobufs go through the worker
(scripted transport at the WhatsApp boundary) and the record service.
"""

import pytest
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    AlbumMessage,
    ImageMessage,
    KeepInChatMessage,
    KeepType,
    MessageContextInfo,
    PinInChatMessage,
    PollEncValue,
    PollUpdateMessage,
)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage

from whatsapp.handlers import auto_reply
from whatsapp.metrics import DatabaseCollector
from whatsapp.models import (
    AutoReplyRule,
    ConnectionEvent,
    InboundMessage,
    ProcessingJob,
    SessionState,
    WhatsAppSession,
)
from whatsapp.services.control import start_session
from whatsapp.services.inbound import InboundOutcome, record_inbound_message
from whatsapp.transport import base
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import (  # noqa: F401  (company_fixture is the `company` fixture)
    ScriptedTransport,
    company_fixture,
    fast_settings,
    run,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

MX_JID = "5215512345678@s.whatsapp.net"
MX_E164 = "+525512345678"
LID = "123456789012345@lid"
PHONE = "491701234567@s.whatsapp.net"
NEWSLETTER = "120363198765432101@newsletter"


def key():
    return MessageKey(remoteJID=PHONE, fromMe=False, ID="3EB0TARGET")


HOUSEKEEPING = {
    "pin": WAMessage(
        pinInChatMessage=PinInChatMessage(key=key(), type=PinInChatMessage.PIN_FOR_ALL)
    ),
    "keep": WAMessage(
        keepInChatMessage=KeepInChatMessage(key=key(), keepType=KeepType.KEEP_FOR_ALL)
    ),
    "album header": WAMessage(albumMessage=AlbumMessage(expectedImageCount=2)),
    "poll vote": WAMessage(
        pollUpdateMessage=PollUpdateMessage(
            pollCreationMessageKey=key(), vote=PollEncValue(encPayload=b"v" * 32, encIV=b"i" * 12)
        )
    ),
}


def row(company):
    return WhatsAppSession.objects.get(company=company)


def test_the_worker_stores_mexican_521_clients_and_ignores_channel_posts_quietly(
    company, settings, tmp_path
):
    fast_settings(settings, tmp_path)
    start_session(company.pk)
    transport = ScriptedTransport()
    sup = SessionSupervisor(worker_id="w-edge", transport=transport)
    events = [
        message_event("3EB0MX0001", MX_JID, "Hola, quiero una cita", push_name="Lupita"),
        message_event("3EB0MX0002", LID, "¿Tienen lugar?", sender=LID, sender_alt=MX_JID),
        message_event("3EB0NEWS01", NEWSLETTER, "Ofertas de hoy"),
        message_event("3EB0NEWS02", NEWSLETTER, "Más ofertas"),
        message_event("3EB0PIN001", PHONE, content=HOUSEKEEPING["pin"]),
    ]

    async def scenario():
        await sup.start()
        await wait_until(lambda: row(company).state == SessionState.CONNECTED, what="connected")
        for event in events:
            await transport.clients[0].emit(base.InboundMessage(event=event))
        await wait_until(
            lambda: row(company).messages_in == 2 and row(company).events_ignored == 3,
            what="two messages recorded and three events ignored",
        )
        await sup.shutdown("test over")

    run(scenario)
    stored = {m.wa_message_id: m for m in InboundMessage.objects.filter(company=company)}
    assert set(stored) == {"3EB0MX0001", "3EB0MX0002"}
    assert (stored["3EB0MX0001"].sender_jid, stored["3EB0MX0001"].sender_phone) == (
        MX_JID,
        MX_E164,
    )
    assert stored["3EB0MX0001"].reply_jid == MX_JID  # the JID WhatsApp gave, 521 and all
    assert (stored["3EB0MX0002"].sender_jid, stored["3EB0MX0002"].sender_phone) == (LID, MX_E164)
    assert ProcessingJob.objects.filter(message__company=company).count() == 2
    assert not ConnectionEvent.objects.filter(session__company=company, kind="error").exists()
    assert row(company).last_error == ""


@pytest.mark.parametrize("name", list(HOUSEKEEPING))
def test_housekeeping_events_store_nothing_get_no_job_and_are_counted(company, name):
    WhatsAppSession.objects.create(company=company)
    event = normalize_message(message_event("3EB0HK0001", PHONE, content=HOUSEKEEPING[name]))
    outcome = record_inbound_message(company.pk, event)
    assert outcome.status == InboundOutcome.IGNORED
    assert "is not a new client message" in outcome.reason
    assert not InboundMessage.objects.exists() and not ProcessingJob.objects.exists()
    assert row(company).events_ignored == 1 and row(company).messages_in == 0


def test_ignored_events_are_a_metric_per_company(company):
    WhatsAppSession.objects.create(company=company)
    for i in range(3):
        record_inbound_message(company.pk, normalize_message(message_event(f"N{i}", NEWSLETTER)))
    record_inbound_message(company.pk, normalize_message(message_event("C1", MX_JID, "hola")))
    samples = {
        (s.name, s.labels.get("company")): s.value
        for family in DatabaseCollector().collect()
        for s in family.samples
    }
    assert samples[("aiadmin_whatsapp_events_ignored_total", company.slug)] == 3
    assert samples[("aiadmin_whatsapp_messages_received_total", company.slug)] == 1


@pytest.mark.parametrize(
    "content, answered",
    [
        (WAMessage(conversation=""), False),
        (WAMessage(conversation="   "), False),
        # a kind we do not know, without text: stored (never dropped), not answered
        (WAMessage(messageContextInfo=MessageContextInfo(messageSecret=b"s" * 32)), False),
        (WAMessage(imageMessage=ImageMessage(mimetype="image/jpeg")), True),  # a photo says much
        (WAMessage(conversation="hola"), True),
    ],
    ids=["empty text", "blank text", "unknown kind", "photo without caption", "text"],
)
def test_an_answer_anything_rule_does_not_answer_an_empty_message(company, content, answered):
    rule = AutoReplyRule.objects.create(
        company=company, match=AutoReplyRule.Match.ANY, reply_text="Gracias, {name}!"
    )
    outcome = record_inbound_message(
        company.pk, normalize_message(message_event("3EB0EMPTY", MX_JID, content=content))
    )
    assert outcome.created  # stored either way: it is a real client's message
    result = auto_reply(InboundMessage.objects.get(pk=outcome.message_pk))
    if answered:
        assert result.reply_text == "Gracias, Client!" and result.note == f"rule {rule.pk}"
    else:
        assert result.reply_text == "" and result.note == "empty message: nothing to answer"
