"""The assistant on the turn pipeline ("assistant_turns", issue 18 + 19): a
burst of client messages is one turn, answered by one model call whose prompt
holds all of them after the chat's history; a hand-over by the model hands the
chat to a person through the pipeline. In-process on the real services and
database (both passes); the test model server is the outer boundary."""

import pytest

from assistant.models import AssistantRun, Outcome
from whatsapp.models import Chat, Incident, IncidentKind, OutboundMessage, Turn

from .chat import CLIENT_JID, answer_due_turns, turn_writes
from .model_server import Reply

# The turn handler runs in a thread of its own (its timeout): committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


def replies(company):
    return list(
        OutboundMessage.objects.filter(company=company, to_jid=CLIENT_JID)
        .order_by("id")
        .values_list("text", flat=True)
    )


def test_a_turn_of_several_messages_gets_one_model_call_and_one_reply(
    turns_assistant, model_server
):
    company = turns_assistant.company
    model_server.add(Reply("A haircut is 30 EUR."), Reply("Monday 10:00 is free, see you!"))
    turn_writes(company, "How much is a haircut?", "WA-1")
    assert answer_due_turns() == [Turn.Status.ANSWERED]

    for i, text in enumerate(("hi again", "can I come", "on Monday at 10?")):
        turn_writes(company, text, f"WA-2{i}")
    assert Turn.objects.count() == 2
    assert answer_due_turns() == [Turn.Status.ANSWERED]

    assert len(model_server.requests) == 2  # one call per turn, not per message
    body = model_server.bodies()[1]
    assert body["messages"][0]["role"] == "system"
    assert "Salon Alpha" in body["messages"][0]["content"]
    assert body["messages"][1:] == [
        {"role": "user", "content": "How much is a haircut?"},
        {"role": "assistant", "content": "A haircut is 30 EUR."},
        {"role": "user", "content": "hi again"},
        {"role": "user", "content": "can I come"},
        {"role": "user", "content": "on Monday at 10?"},
    ]
    assert replies(company) == ["A haircut is 30 EUR.", "Monday 10:00 is free, see you!"]

    run = AssistantRun.objects.order_by("pk").last()
    assert (run.handler, run.outcome, run.model) == (
        "assistant_turns", Outcome.ANSWERED, "test-large")
    assert run.message.wa_message_id == "WA-22"  # the turn's last message, as its reply
    assert OutboundMessage.objects.get(in_reply_to=run.message).text.startswith("Monday")
    turn = Turn.objects.order_by("pk").last()
    assert f"assistant run {run.pk}: answered" in turn.result


def test_the_history_sent_is_cut_to_the_assistants_length(turns_assistant, model_server):
    company = turns_assistant.company
    turns_assistant.history_messages = 1
    turns_assistant.save()
    model_server.add(Reply("First answer."), Reply("Second answer."))
    turn_writes(company, "first question", "WA-1")
    answer_due_turns()
    turn_writes(company, "second question", "WA-2")
    answer_due_turns()
    assert model_server.bodies()[1]["messages"][1:] == [
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "second question"},
    ]


def test_a_hand_over_tool_call_hands_the_chat_to_a_person(turns_assistant, model_server):
    company = turns_assistant.company
    model_server.add(Reply(text="", tool_call={
        "name": "hand_over_to_person", "arguments": {"reason": "asks for the manager"}}))
    turn_writes(company, "I want to speak", "WA-1")
    turn_writes(company, "to the manager", "WA-2")
    assert answer_due_turns() == [Turn.Status.HANDED_OVER]

    assert replies(company) == [turns_assistant.handover_message]
    chat = Chat.objects.get(company=company, chat_jid=CLIENT_JID)
    assert chat.needs_human and chat.bot_is_paused()
    run = AssistantRun.objects.get()
    assert (run.outcome, run.note) == (Outcome.HANDED_OVER, "asks for the manager")
    incident = Incident.objects.get(kind=IncidentKind.HANDED_OVER)
    assert "asks for the manager" in incident.details
    assert "asks for the manager" in Turn.objects.get().result


def test_a_company_without_an_assistant_gets_no_reply_and_no_model_call(
    turns_assistant, model_server
):
    turns_assistant.is_enabled = False
    turns_assistant.save()
    turn_writes(turns_assistant.company, "hello", "WA-1")
    assert answer_due_turns() == [Turn.Status.NO_REPLY]
    assert model_server.requests == [] and replies(turns_assistant.company) == []
    assert "no assistant" in Turn.objects.get().result
