"""The assistant's admin page: "Try it" (a test conversation to the configured
model, without WhatsApp; managers of the company only, CSRF-protected POST),
and the cost per day."""

import pytest
from django.test import Client
from django.urls import reverse

from assistant.models import AssistantRun
from tests.admin.conftest import login

from .model_server import Reply

pytestmark = pytest.mark.django_db


def try_url(config):
    return reverse("admin:assistant_assistantconfig_try", args=[config.pk])


@pytest.fixture
def owner(client, tenants):
    from django.contrib.auth.models import Permission

    tenants.owner.user_permissions.set(Permission.objects.filter(content_type__app_label="assistant"))
    return login(client, tenants.owner)


def test_try_it_sends_the_test_conversation_and_shows_answer_and_tokens(
    owner, assistant, model_server
):
    model_server.add(Reply("We open at 9 on Monday.", tokens_in=200, tokens_out=9))
    page = owner.post(try_url(assistant), {
        "conversation": "Hi!\nbusiness: Hello, how can I help?\nWhen do you open on Monday?",
    })
    assert page.status_code == 200
    body = page.content.decode()
    assert "We open at 9 on Monday." in body and "200 / 9" in body
    messages = model_server.bodies()[0]["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "Hi!"), ("assistant", "Hello, how can I help?"),
        ("user", "When do you open on Monday?"),
    ]
    run = AssistantRun.objects.get()
    assert run.is_test and run.chat_jid == "try-it"
    # A test run is not a chat's cost.
    assert AssistantRun.objects.live().count() == 0


def test_try_it_refuses_a_post_without_the_csrf_token(tenants, assistant, model_server):
    strict = Client(enforce_csrf_checks=True)
    login(strict, tenants.superuser)
    response = strict.post(try_url(assistant), {"conversation": "hi"})
    assert response.status_code == 403 and model_server.requests == []


def test_try_it_is_out_of_reach_of_other_companies_and_plain_members(
    client, tenants, assistant, model_server
):
    from django.contrib.auth.models import Permission

    for user in (tenants.other_owner, tenants.member, tenants.outsider):
        user.user_permissions.set(Permission.objects.all())
        login(client, user)
        response = client.post(try_url(assistant), {"conversation": "hi"})
        assert response.status_code in (302, 403, 404), user
    assert model_server.requests == []


def test_the_change_page_shows_the_cost_per_day_and_the_rendered_prompt(owner, assistant):
    AssistantRun.objects.create(company=assistant.company, outcome="answered", tokens_in=1000,
                                tokens_out=500, cost=assistant.cost_of(1000, 500))
    page = owner.get(reverse("admin:assistant_assistantconfig_change", args=[assistant.pk]))
    body = page.content.decode()
    assert page.status_code == 200
    assert "$0.0020" in body  # 1000 x 1 + 500 x 2 per million
    assert "Mon-Fri 9-18" in body and assistant.system_prompt()[1] in body
    assert try_url(assistant) in body
