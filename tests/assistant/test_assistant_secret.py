"""The company's model API key: encrypted at rest (MultiFernet, rotatable),
sent only to the model, write-only in the admin and the API, and never in
logs, job rows, runs, webhooks or error texts."""

import logging

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from assistant.models import AssistantConfig
from tests.admin.conftest import login
from whatsapp.models import ProcessingJob, WebhookDelivery

from .chat import client_writes
from .conftest import SECRET
from .model_server import Reply

pytestmark = pytest.mark.django_db


def stored_column(config):
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT api_key_encrypted FROM {AssistantConfig._meta.db_table} WHERE id = %s",
            [config.pk],
        )
        return cursor.fetchone()[0]


def test_the_key_is_encrypted_at_rest_and_sent_only_as_the_bearer_token(
    assistant, model_server
):
    assert SECRET not in stored_column(assistant) and stored_column(assistant).startswith("gAAAA")
    client_writes(assistant.company, "hi", "WA-1")
    request = model_server.requests[0]
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(request["body"])


def test_rotation_reencrypts_with_the_new_key_and_the_old_one_can_go(assistant, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ASSISTANT_ENCRYPTION_KEYS = [old]
    assistant.set_api_key(SECRET)
    assistant.save()
    settings.ASSISTANT_ENCRYPTION_KEYS = [new, old]
    call_command("rotate_assistant_keys")
    settings.ASSISTANT_ENCRYPTION_KEYS = [new]
    assistant.refresh_from_db()
    assert assistant.api_key() == SECRET


def test_nothing_logged_stored_or_delivered_holds_the_key(
    assistant, model_server, caplog, tenants
):
    from whatsapp.models import WebhookEndpoint

    caplog.set_level(logging.DEBUG)  # openai's and httpx's debug logs included
    WebhookEndpoint.objects.create(company=tenants.a, url="https://hooks.example.com/a")
    model_server.add(Reply(status=401), Reply("ok"))
    client_writes(assistant.company, "hi", "WA-1")
    client_writes(assistant.company, "hi again", "WA-2")
    assert caplog.records and SECRET not in caplog.text
    rows = [str(list(ProcessingJob.objects.values())), str(list(WebhookDelivery.objects.values()))]
    from assistant.models import AssistantRun

    rows.append(str(list(AssistantRun.objects.values())))
    assert all(SECRET not in row for row in rows)
    assert SECRET not in repr(assistant) and SECRET not in str(assistant)


def test_the_admin_never_shows_the_key_and_keeps_it_when_left_empty(client, assistant, tenants):
    login(client, tenants.superuser)
    url = reverse("admin:assistant_assistantconfig_change", args=[assistant.pk])
    page = client.get(url)
    assert page.status_code == 200
    body = page.content.decode()
    assert SECRET not in body and stored_column(assistant) not in body
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "api_key"}
    data.update(company=tenants.a.pk, model="other-model", api_key="")
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assistant.refresh_from_db()
    assert assistant.model == "other-model" and assistant.api_key() == SECRET
    data["api_key"] = "sk-new-key"
    client.post(url, data)
    assistant.refresh_from_db()
    assert assistant.api_key() == "sk-new-key"


def test_the_api_takes_the_key_but_never_returns_it(client, assistant, tenants):
    login(client, tenants.owner)
    url = reverse("api:assistant", args=[tenants.a.pk])
    answer = client.get(url)
    assert answer.status_code == 200 and answer.json()["has_api_key"] is True
    assert "api_key" not in answer.json() and SECRET not in answer.content.decode()
    changed = client.patch(url, {"api_key": "sk-from-api", "model": "m2"},
                           content_type="application/json")
    assert changed.status_code == 200 and "sk-from-api" not in changed.content.decode()
    assistant.refresh_from_db()
    assert assistant.api_key() == "sk-from-api" and assistant.model == "m2"
