"""Admin tenancy of the custom pages: every URL a model admin adds to Django's
own (the session page's actions, pairing, polling JSON, the user password
page...), the health dashboard's URLs and the staff WebSocket refuse company
B's session to company A's owner, and change nothing.

The URLs are discovered from the admin site and whatsapp/admin_pages/urls.py:
a new custom URL without a case below fails the test."""

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.urls import reverse

from whatsapp.admin_pages import urls as page_urls
from whatsapp.models import WhatsAppSession
from whatsapp.services import control, live

from .conftest import login
from .tenancy_world import refused, snapshot

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def custom_url_names():
    names = {p.name for p in page_urls.urlpatterns}
    for model_admin in admin.site._registry.values():
        standard = {p.name for p in admin.ModelAdmin.get_urls(model_admin)}
        names |= {p.name for p in model_admin.get_urls()} - standard
    return names


@pytest.fixture
def attacker(client, tenants, sessions):
    tenants.owner.user_permissions.set(Permission.objects.all())
    return login(client, tenants.owner)


def control_actions():
    from whatsapp.admin_pages.sessions import ACTIONS

    return list(ACTIONS)


def case_status_all(client, tenants, a, b):
    answer = client.get(reverse("admin:whatsapp_session_status"))
    assert answer.status_code == 200
    companies = {row["company_id"] for row in answer.json()["sessions"]}
    assert companies == {tenants.a.pk}, companies


def case_status_one(client, tenants, a, b):
    assert client.get(reverse("admin:whatsapp_session_status_one", args=[b.pk])).status_code == 404


def case_session_action(client, tenants, a, b):
    for name in control_actions():
        target = reverse("admin:whatsapp_session_action", args=[b.pk, name])
        assert client.post(target).status_code == 404
        assert client.get(target).status_code in (404, 405)


def case_session_pair(client, tenants, a, b):
    target = reverse("admin:whatsapp_session_pair", args=[b.pk])
    assert client.post(target, {"phone": "+491701234567"}).status_code == 404


def case_user_password(client, tenants, a, b):
    target = reverse("admin:auth_user_password_change", args=[tenants.other_owner.pk])
    assert refused(client.get(target))
    assert refused(client.post(target, {"password1": "Tak3n-over!", "password2": "Tak3n-over!"}))


def case_dashboard(client, tenants, a, b):
    page = client.get(reverse("whatsapp_health"))
    assert page.status_code == 200
    assert tenants.a.name in page.content.decode()
    assert tenants.b.name not in page.content.decode()


def case_dashboard_start(client, tenants, a, b):
    WhatsAppSession.objects.filter(pk=b.pk).delete()  # "never started": the button's case
    target = reverse("whatsapp_health_start", args=[tenants.b.pk])
    assert client.post(target).status_code == 404
    assert not WhatsAppSession.objects.filter(company=tenants.b).exists()
    control.ensure_session(tenants.b.pk)


def case_assistant_try(client, tenants, a, b):
    from assistant.models import AssistantConfig, AssistantRun

    config = AssistantConfig.objects.create(company=tenants.b, base_url="http://127.0.0.1:9/v1")
    target = reverse("admin:assistant_assistantconfig_try", args=[config.pk])
    assert refused(client.post(target, {"conversation": "hi"}))
    assert refused(client.get(target))
    assert not AssistantRun.objects.exists()


def foreign_chat(tenants):
    from whatsapp.models import Chat

    return Chat.objects.create(company=tenants.b, chat_jid="491709999999@s.whatsapp.net")


def case_chat_poll(client, tenants, a, b):
    chat = foreign_chat(tenants)
    assert refused(client.get(reverse("admin:whatsapp_chat_poll", args=[chat.pk])))


def case_chat_send(client, tenants, a, b):
    from whatsapp.models import OutboundMessage

    chat = foreign_chat(tenants)
    target = reverse("admin:whatsapp_chat_send", args=[chat.pk])
    assert refused(client.post(target, {"text": "sent into B's chat"}))
    assert not OutboundMessage.objects.filter(text="sent into B's chat").exists()


def case_chat_bot(client, tenants, a, b):
    chat = foreign_chat(tenants)
    for action in ("pause", "resume"):
        target = reverse("admin:whatsapp_chat_bot", args=[chat.pk, action])
        assert refused(client.post(target))
    chat.refresh_from_db()
    assert chat.bot_paused_until is None and not chat.paused_by


CASES = {
    "whatsapp_chat_poll": case_chat_poll,
    "whatsapp_chat_send": case_chat_send,
    "whatsapp_chat_bot": case_chat_bot,
    "whatsapp_session_status": case_status_all,
    "whatsapp_session_status_one": case_status_one,
    "whatsapp_session_action": case_session_action,
    "whatsapp_session_pair": case_session_pair,
    "auth_user_password_change": case_user_password,
    "whatsapp_health": case_dashboard,
    "whatsapp_health_start": case_dashboard_start,
    "assistant_assistantconfig_try": case_assistant_try,
}


def test_every_custom_admin_url_has_a_tenancy_case():
    missing = custom_url_names() - set(CASES)
    assert not missing, f"custom admin URLs without a tenancy case: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_custom_admin_url_refuses_another_companys_session(attacker, tenants, sessions, name):
    a, b = sessions
    watched = [WhatsAppSession, WhatsAppSession.events.rel.related_model]
    before = snapshot(watched)
    CASES[name](attacker, tenants, a, b)
    if name != "whatsapp_health_start":  # that case recreates B's session (new row)
        assert snapshot(watched) == before


def test_the_websocket_never_passes_on_another_companys_session(tenants, sessions):
    from .test_live import hint, run, socket

    owner = socket(tenants.owner)
    publish = sync_to_async(live.publish_now)

    async def body():
        assert (await owner.connect())[0]
        await publish(tenants.b.pk, "connected")  # B's groups: not joined by A's owner
        assert await owner.receive_nothing(timeout=1.0)
        # Even a hint about B that reached A's group is checked once more.
        layer = get_channel_layer()
        await layer.group_send(
            live.company_group(tenants.a.pk),
            {"type": live.EVENT_TYPE, "company_id": tenants.b.pk, "state": "connected"},
        )
        assert await owner.receive_nothing(timeout=1.0)
        await publish(tenants.a.pk, "connected")
        assert await owner.receive_json_from(timeout=10) == hint(tenants.a, "connected")
        await owner.disconnect()

    run(body)
