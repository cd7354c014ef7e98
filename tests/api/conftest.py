"""Fixtures for the REST API: keys, callers and a little data in both companies.

Everything of company A carries the marker "alpha" (name, texts, phone numbers
are A's own), so a response to a caller of company B can be searched for leaks.
"""

import os
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from assistant.models import AssistantConfig, AssistantRun, Outcome
from companies.models import CompanyAPIKey
from whatsapp.models import (
    Chat,
    ConnectionEvent,
    Contact,
    InboundMessage,
    MessageMedia,
    OutboundMessage,
    ProcessingJob,
    SessionState,
    Turn,
    WhatsAppSession,
)
from whatsapp.services import media as media_services

A_PHONE = "+4917011111111"
B_PHONE = "+4917022222222"
A_MARKERS = ["Salon Alpha", "alpha", "4917011111111"]


@pytest.fixture(autouse=True)
def fresh_throttle_buckets(settings):
    """Each test counts in its own namespace (the Redis store outlives test runs)."""
    settings.API_THROTTLE_NAMESPACE = uuid.uuid4().hex


@pytest.fixture
def keys(tenants):
    """Raw API keys: A's, B's, and a revoked and an expired one of A."""
    _, a = CompanyAPIKey.objects.create_key(company=tenants.a, name="a main")
    _, b = CompanyAPIKey.objects.create_key(company=tenants.b, name="b main")
    _, revoked = CompanyAPIKey.objects.create_key(company=tenants.a, name="a old", revoked=True)
    _, expired = CompanyAPIKey.objects.create_key(
        company=tenants.a, name="a expired", expiry_date=timezone.now() - timedelta(days=1)
    )
    return {"a": a, "b": b, "a_revoked": revoked, "a_expired": expired}


def key_client(raw_key):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw_key}")
    return client


def user_client(user):
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def callers(tenants, keys):
    """Every kind of caller, by name."""
    return {
        "owner_key": key_client(keys["a"]),
        "other_key": key_client(keys["b"]),
        "no_key": APIClient(),
        "revoked_key": key_client(keys["a_revoked"]),
        "expired_key": key_client(keys["a_expired"]),
        "owner": user_client(tenants.owner),
        "member": user_client(tenants.member),
        "other_owner": user_client(tenants.other_owner),
        "outsider": user_client(tenants.outsider),
        "superuser": user_client(tenants.superuser),
    }


@pytest.fixture
def api_a(callers):
    """A client with company A's key."""
    return callers["owner_key"]


def make_inbound(company, wa_id, phone, text, status=ProcessingJob.Status.SUCCEEDED, at=None):
    at = at or timezone.now()
    message = InboundMessage.objects.create(
        company=company,
        wa_message_id=wa_id,
        chat_jid=f"{phone.lstrip('+')}@s.whatsapp.net",
        sender_jid=f"{phone.lstrip('+')}@s.whatsapp.net",
        sender_phone=phone,
        push_name="Client",
        text=text,
        sent_at=at,
        received_at=at,
    )
    ProcessingJob.objects.create(message=message, status=status, attempts=1, handler="test")
    return message


def make_media(company, inbound, content):
    """A stored media file of `inbound` (through the real storage service)."""
    path = media_services.new_temp_path()
    try:
        with open(path, "wb") as fh:
            fh.write(content)
        stored = media_services.store_file(company.pk, path)
    finally:
        os.unlink(path)
    return MessageMedia.objects.create(
        company=company, inbound=inbound, kind="document", file=stored,
        state=MessageMedia.State.STORED, file_name="photo.txt",
    )


@pytest.fixture
def data(tenants):
    """A session, events and messages in each company."""
    made = {}
    for company, phone, tag in ((tenants.a, A_PHONE, "alpha"), (tenants.b, B_PHONE, "beta")):
        session = WhatsAppSession.objects.create(
            company=company,
            state=SessionState.AWAITING_PAIRING,
            desired_state="running",
            qr_code=f"2@{tag}-qr-payload,abc,def",
            qr_updated_at=timezone.now(),
        )
        ConnectionEvent.objects.create(session=session, kind="qr", reason=f"{tag} qr issued")
        inbound = make_inbound(company, f"{tag.upper()}MSG1", phone, f"{tag} inbound text")
        outbound = OutboundMessage.objects.create(
            company=company,
            to_jid=f"{phone.lstrip('+')}@s.whatsapp.net",
            to_phone=phone,
            text=f"{tag} outbound text",
            idempotency_key=f"{tag}-key",
        )
        assistant = AssistantConfig(company=company, model=f"{tag}-model",
                                    business_name=f"{tag} assistant facts")
        assistant.set_api_key(f"sk-{tag}-model-key")
        assistant.save()
        AssistantRun.objects.create(company=company, outcome=Outcome.ANSWERED, tokens_in=7,
                                    model=f"{tag}-model", chat_jid=f"{tag}-chat")
        media = make_media(company, inbound, f"{tag} photo bytes".encode())
        contact = Contact.objects.create(
            company=company,
            phone=phone,
            phone_jid=f"{phone.lstrip('+')}@s.whatsapp.net",
            push_name=f"{tag} client",
        )
        chat = Chat.objects.create(
            company=company, chat_jid=contact.phone_jid, contact=contact, title=f"{tag} chat"
        )
        InboundMessage.objects.filter(pk=inbound.pk).update(chat=chat, contact=contact)
        OutboundMessage.objects.filter(pk=outbound.pk).update(chat=chat, contact=contact)
        now = timezone.now()
        turn = Turn.objects.create(  # waiting for its asynchronous answer
            company=company,
            chat_jid=inbound.chat_jid,
            status=Turn.Status.AWAITING,
            first_message_at=now,
            last_message_at=now,
            due_at=now,
        )
        made[tag] = {
            "session": session,
            "inbound": inbound,
            "outbound": outbound,
            "chat": chat,
            "contact": contact,
            "media": media,
            "turn": turn,
        }
    return made


def leaks(response, markers=A_MARKERS):
    """The markers of company A found in a response body."""
    body = response.content.decode("utf-8", "replace").lower()
    return [m for m in markers if m.lower() in body]
