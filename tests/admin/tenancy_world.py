"""Company B's objects of every kind, made by the services that make them in
production, for the admin tenancy tests; and how a test finds what belongs
to a company (by walking model relations, independently of the admin code)."""

import os

from django.core import serializers
from django.urls import reverse
from django.utils import timezone

from assistant.models import AssistantConfig, AssistantRun, Outcome
from companies.models import Company, CompanyAPIKey
from whatsapp.models import AutoReplyRule, Turn, WebhookEndpoint
from whatsapp.services import control
from whatsapp.services import sessions as svc
from whatsapp.services.alerts import run_alert_checks
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.leases import try_acquire
from whatsapp.services.media import new_temp_path
from whatsapp.services.media_outbound import queue_outbound_media
from whatsapp.services.outbound import queue_outbound_message
from whatsapp.simulator.protocol import sample_media
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

JID = "491701234567:7@s.whatsapp.net"


def path_to_company(model, depth=4):
    """The lookup path from `model` to Company through forward foreign keys
    (directly, through its session, or further), or None if it has none."""
    if model is Company:
        return "pk"
    frontier = [(model, "")]
    for _ in range(depth):
        reached = []
        for current, prefix in frontier:
            for field in current._meta.get_fields():
                if not (field.concrete and (field.many_to_one or field.one_to_one)):
                    continue
                path = f"{prefix}{field.name}"
                if field.related_model is Company:
                    return path
                reached.append((field.related_model, f"{path}__"))
        frontier = reached
    return None


def objects_of(model, company):
    path = path_to_company(model)
    return model._default_manager.filter(**{path: company.pk}).order_by("pk")


def build_company_world(company, worker_id):
    """Everything a company owns, through the services: a session that connected
    and was then replaced (events, lease, an incident), an inbound message with
    its job and its webhook delivery, an outbound message, an auto-reply rule,
    an API key. Memberships come from the `tenants` fixture."""
    WebhookEndpoint.objects.create(company=company, url=f"https://hooks.example.com/{company.slug}")
    AutoReplyRule.objects.create(company=company, keyword=f"kw-{company.slug}", reply_text="hi")
    CompanyAPIKey.objects.create_key(name=f"key-{company.slug}", company=company)
    session = control.start_session(company.pk, actor="test")
    held = try_acquire(worker_id, session.pk)
    svc.mark_connected(held, jid=JID)
    svc.mark_replaced(held)
    event = message_event(
        f"WA-{company.slug}", "4915112345678@s.whatsapp.net", f"hello {company.slug}",
        push_name="Anna",
    )
    inbound = record_inbound_message(company.pk, normalize_message(event))
    queue_outbound_message(company.pk, "+4915112345678", f"reply {company.slug}")
    config = AssistantConfig(company=company, model=f"model-{company.slug}")
    config.set_api_key(f"sk-{company.slug}-secret")
    config.save()
    AssistantRun.objects.create(
        company=company, message_id=inbound.message_pk, chat_jid="4915112345678@s.whatsapp.net",
        outcome=Outcome.ANSWERED, model=config.model, tokens_in=10, tokens_out=5,
    )
    # A photo to send: its stored file (MediaFile) and the message's media row.
    photo = new_temp_path()
    try:
        with open(photo, "wb") as fh:
            fh.write(sample_media("image", 2000))
        queue_outbound_media(company.pk, "+4915112345678", photo, caption=company.slug)
    finally:
        os.unlink(photo)
    run_alert_checks(notify=False)
    now = timezone.now()
    Turn.objects.create(  # a turn of the assistant pipeline (services.turns)
        company=company, chat_jid="4915112345678@s.whatsapp.net", first_message_at=now,
        last_message_at=now, due_at=now,
    )
    return inbound


def snapshot(models):
    """Every row of `models`, serialized: compare before and after an attempt."""
    return {
        model._meta.label: serializers.serialize("python", model._default_manager.order_by("pk"))
        for model in models
    }


def refused(response):
    """403, 404, or Django admin's "does not exist" redirect to the index."""
    if response.status_code in (403, 404):
        return True
    return response.status_code == 302 and response.url == reverse("admin:index")
