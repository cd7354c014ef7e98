"""The "why" panel of the admin's chat page: a reply the assistant produced
shows its handler, model, prompt version, tokens, latency and outcome from its
AssistantRun (plugged in through WHATSAPP_CHAT_REPLY_EXPLAINERS: whatsapp does
not import the assistant); other replies and other companies show none."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from assistant.models import AssistantRun
from whatsapp.models import Author, Chat, OutboundMessage
from whatsapp.services.conversations import send_as_operator

from .chat import CLIENT_JID, answer_due_turns, turn_writes
from .model_server import Reply

pytestmark = pytest.mark.django_db(transaction=True)


def chat_page(client, user, chat):
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="whatsapp", codename="view_chat")
    )
    client.force_login(user)
    return client.get(reverse("admin:whatsapp_chat_change", args=[chat.pk]))


def test_an_assistant_reply_shows_what_produced_it(client, tenants, turns_assistant, model_server):
    company = turns_assistant.company
    model_server.add(Reply("We open at 9.", tokens_in=321, tokens_out=12))
    turn_writes(company, "When do you open?", "WA-1")
    answer_due_turns()
    chat = Chat.objects.get(company=company, chat_jid=CLIENT_JID)
    send_as_operator(chat, "Anna here: see you tomorrow!")
    run = AssistantRun.objects.get()

    page = chat_page(client, tenants.owner, chat)
    assert page.status_code == 200
    bubbles = {b["text"]: b for b in page.context["bubbles"]}
    why = dict(bubbles["We open at 9."]["why"])
    assert why["Handler"] == "assistant_turns"
    assert why["Model"] == "test-large"
    assert why["Prompt version"] == run.prompt_version and len(run.prompt_version) == 12
    assert why["Tokens in / out"] == "321 / 12"
    assert why["Latency"].startswith(f"{run.total_ms} ms") and "answer" in why["Latency"]
    assert why["Outcome"] == "Answered"
    assert bubbles["Anna here: see you tomorrow!"]["why"] is None  # a person's reply
    assert bubbles["When do you open?"]["why"] is None
    html = page.content.decode()
    assert html.count("data-why") == 1 and run.prompt_version in html and "321 / 12" in html


def test_another_companys_runs_explain_nothing(client, tenants, turns_assistant, model_server):
    company = turns_assistant.company
    model_server.add(Reply("We open at 9."))
    turn_writes(company, "When do you open?", "WA-1")
    answer_due_turns()
    reply = OutboundMessage.objects.get(author=Author.HANDLER)
    AssistantRun.objects.update(company=tenants.b)  # a run that is not this company's
    chat = Chat.objects.get(company=company)
    page = chat_page(client, tenants.owner, chat)
    assert [b["why"] for b in page.context["bubbles"] if b["id"] == f"out-{reply.pk}"] == [None]
    assert "data-why" not in page.content.decode()
