"""The plain model admins (events, messages, jobs, replies, rules): Django's model
permissions decide whether a staff user sees the model; tenancy decides which
rows. A staff user granted every permission still sees only their companies."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from whatsapp.models import (
    AutoReplyRule,
    ConnectionEvent,
    InboundMessage,
    OutboundMessage,
    ProcessingJob,
)

from .conftest import login

MODELS = ["connectionevent", "inboundmessage", "processingjob", "outboundmessage", "autoreplyrule"]


@pytest.fixture
def data(tenants, sessions):
    for company, session, tag in [
        (tenants.a, sessions[0], "alpha"),
        (tenants.b, sessions[1], "beta"),
    ]:
        ConnectionEvent.objects.create(session=session, kind="error", reason=f"event-{tag}")
        msg = InboundMessage.objects.create(
            company=company,
            wa_message_id=f"WA-{tag}",
            chat_jid="1@s.whatsapp.net",
            sender_jid="1@s.whatsapp.net",
            text=f"text-{tag}",
            sent_at=timezone.now(),
        )
        ProcessingJob.objects.create(message=msg)
        OutboundMessage.objects.create(
            company=company,
            to_jid="1@s.whatsapp.net",
            text=f"reply-{tag}",
            idempotency_key=f"k-{tag}",
        )
        AutoReplyRule.objects.create(company=company, keyword=f"kw-{tag}", reply_text="hi")
    perms = Permission.objects.filter(content_type__app_label="whatsapp")
    tenants.owner.user_permissions.add(*perms)
    tenants.outsider.user_permissions.add(*perms)


def changelist(model):
    return reverse(f"admin:whatsapp_{model}_changelist")


@pytest.mark.parametrize("model", MODELS)
def test_it_validates_ownership(client, tenants, data, model):
    response = login(client, tenants.owner).get(changelist(model))
    assert response.status_code == 200
    owners = {str(obj) for obj in response.context["cl"].result_list}
    assert len(response.context["cl"].result_list) == 1, owners
    everyone = login(client, tenants.superuser).get(changelist(model)).context["cl"]
    assert len(everyone.result_list) == 2
    nobody = login(client, tenants.outsider).get(changelist(model)).context["cl"]
    assert list(nobody.result_list) == []


def test_a_foreign_row_is_not_found_and_forms_offer_own_companies_only(client, tenants, data):
    foreign = AutoReplyRule.objects.get(company=tenants.b)
    login(client, tenants.owner)
    url = reverse("admin:whatsapp_autoreplyrule_change", args=[foreign.pk])
    assert client.get(url, follow=True).redirect_chain  # "does not exist" -> admin index
    form = client.get(reverse("admin:whatsapp_autoreplyrule_add")).context["adminform"].form
    assert list(form.fields["company"].queryset) == [tenants.a]
