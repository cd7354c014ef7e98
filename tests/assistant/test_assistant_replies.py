"""The assistant answers a client message through the processing job: the
prompt it sends (facts, history, both stages), the reply, the hand-over, the
split of a long answer, and the run it records."""

import pytest

from assistant.models import AssistantRun, Outcome
from assistant.prompting import prompt_version
from assistant.replies import split_reply
from whatsapp.models import OutboundMessage, ProcessingJob

from .chat import CLIENT_JID, client_writes
from .model_server import Reply, classification

pytestmark = pytest.mark.django_db


def test_it_answers_with_the_model_reply_and_records_the_run(assistant, model_server):
    model_server.add(Reply("We open at 9.", tokens_in=120, tokens_out=8))
    job, replies = client_writes(assistant.company, "When do you open?", "WA-1")
    assert job.status == ProcessingJob.Status.SUCCEEDED
    assert replies == ["We open at 9."]
    reply = OutboundMessage.objects.get(in_reply_to__wa_message_id="WA-1")
    assert reply.to_jid == CLIENT_JID

    run = AssistantRun.objects.get()
    system_prompt = model_server.bodies()[0]["messages"][0]["content"]
    assert (run.outcome, run.model, run.tokens_in, run.tokens_out) == (
        Outcome.ANSWERED, "test-large", 120, 8)
    assert run.prompt_version == prompt_version(system_prompt)
    assert run.answer_ms is not None and run.classify_ms is None and run.total_ms >= run.answer_ms
    assert run.message.wa_message_id == "WA-1" and run.chat_jid == CLIENT_JID
    assert float(run.cost) == pytest.approx((120 * 1 + 8 * 2) / 1e6)
    assert f"assistant run {run.pk}: answered" in job.result


def test_the_prompt_holds_the_facts_the_history_and_the_new_message(assistant, model_server):
    model_server.add(Reply("Haircut is 30 EUR."), Reply("Yes, Monday at 10 is free."))
    client_writes(assistant.company, "How much is a haircut?", "WA-1")
    client_writes(assistant.company, "Can I come Monday?", "WA-2")

    body = model_server.bodies()[1]
    assert body["model"] == "test-large"
    assert body["temperature"] == pytest.approx(assistant.temperature)
    assert body["max_tokens"] == assistant.max_tokens
    system = body["messages"][0]
    assert system["role"] == "system"
    for fact in ("Salon Alpha", "Mon-Fri 9-18", "Haircut 30 EUR", "Colouring 60 EUR",
                 "Hauptstr. 1, Berlin", "https://book.example.com/alpha", "German, English"):
        assert fact in system["content"]
    assert body["messages"][1:] == [
        {"role": "user", "content": "How much is a haircut?"},
        {"role": "assistant", "content": "Haircut is 30 EUR."},
        {"role": "user", "content": "Can I come Monday?"},
    ]
    assert body["tools"][0]["function"]["name"] == "hand_over_to_person"


def test_the_history_is_cut_to_its_configured_length(assistant, model_server):
    assistant.history_messages = 2
    assistant.save()
    for i in range(3):
        client_writes(assistant.company, f"message {i}", f"WA-{i}")
    messages = model_server.bodies()[2]["messages"]
    # The two latest earlier messages (client 1, its answer), then the new one.
    assert [m["content"] for m in messages[1:]] == [
        "message 1", "Hello from the test model.", "message 2"]


def test_a_custom_template_renders_the_facts_and_changes_the_prompt_version(
    assistant, model_server
):
    client_writes(assistant.company, "hi", "WA-1")
    assistant.prompt_template = "You answer for {{ name|upper }}. Hours: {{ opening_hours }}."
    assistant.save()
    client_writes(assistant.company, "hi again", "WA-2")
    first, second = AssistantRun.objects.order_by("pk")
    assert model_server.bodies()[1]["messages"][0]["content"] == (
        "You answer for SALON ALPHA. Hours: Mon-Fri 9-18.")
    assert first.prompt_version != second.prompt_version


def test_a_template_reaches_nothing_but_the_facts():
    from assistant.prompting import PromptTemplateError, render_prompt

    for source in ("{% load static %}", "{% include 'admin/base.html' %}", "{% debug %}",
                   "{% url 'admin:index' %}", "{% csrf_token %}"):
        with pytest.raises(PromptTemplateError):
            render_prompt(source, {"name": "x"})
    with pytest.raises(PromptTemplateError):
        render_prompt("{{ name.__class__ }}", {"name": "x"})
    text, _ = render_prompt("{{ settings.SECRET_KEY }}{{ request.user }}|{{ name }}",
                            {"name": "Alpha"})
    assert text == "|Alpha"


def test_two_stages_send_the_classifier_its_own_model_and_schema(assistant, model_server):
    assistant.classifier_enabled = True
    assistant.classifier_model = "test-small"
    assistant.save()
    model_server.add(classification("answer", language="German"), Reply("Wir öffnen um 9."))
    _, replies = client_writes(assistant.company, "Wann öffnet ihr?", "WA-1")
    assert replies == ["Wir öffnen um 9."]
    first, second = model_server.bodies()
    assert first["model"] == "test-small" and second["model"] == "test-large"
    schema = first["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["action"]["enum"] == ["answer", "needs_person", "ignore"]
    assert "Salon Alpha" in first["messages"][0]["content"]  # the facts, to judge by
    assert first["messages"][-1] == {"role": "user", "content": "Wann öffnet ihr?"}
    assert "tools" not in first
    run = AssistantRun.objects.get()
    assert (run.classifier_model, run.language, run.tokens_in, run.tokens_out) == (
        "test-small", "German", 30 + 50, 10 + 20)
    assert run.classify_ms is not None and run.answer_ms is not None


def test_the_classifier_ignores_a_message_without_asking_the_answer_model(
    assistant, model_server
):
    assistant.classifier_enabled = True
    assistant.save()
    model_server.add(classification("ignore", reason="just thanks"))
    job, replies = client_writes(assistant.company, "👍", "WA-1")
    assert replies == [] and len(model_server.requests) == 1
    assert AssistantRun.objects.get().outcome == Outcome.IGNORED
    assert job.status == ProcessingJob.Status.SUCCEEDED


def test_the_classifier_hands_over_and_the_chat_then_stays_silent(assistant, model_server):
    assistant.classifier_enabled = True
    assistant.save()
    model_server.add(classification("needs_person", reason="complaint"))
    job, replies = client_writes(assistant.company, "I want to complain!", "WA-1")
    assert replies == [assistant.handover_message]
    assert "hand-over: complaint" in job.result
    _, replies = client_writes(assistant.company, "Hello??", "WA-2")
    assert replies == [] and len(model_server.requests) == 1
    assert list(AssistantRun.objects.order_by("pk").values_list("outcome", flat=True)) == [
        Outcome.HANDED_OVER, Outcome.PAUSED]


def test_the_model_hands_the_chat_over_with_its_tool(assistant, model_server):
    model_server.add(Reply(text="", tool_call={
        "name": "hand_over_to_person", "arguments": {"reason": "asks for the manager"}}))
    job, replies = client_writes(assistant.company, "Let me talk to the manager", "WA-1")
    assert replies == [assistant.handover_message]
    run = AssistantRun.objects.get()
    assert (run.outcome, run.note) == (Outcome.HANDED_OVER, "asks for the manager")


def test_a_long_answer_is_split_on_sentence_boundaries_and_sent_in_order(
    assistant, model_server
):
    sentence = "This sentence is about our many services and what they cost. "
    model_server.add(Reply(sentence * 150))  # ~9,300 characters
    job, replies = client_writes(assistant.company, "Tell me everything", "WA-1")
    assert len(replies) == 3 and all(len(r) <= 4096 for r in replies)
    assert all(r.endswith("cost.") for r in replies)
    assert " ".join(replies) == (sentence * 150).strip()
    assert AssistantRun.objects.get().replies == 3
    assert job.status == ProcessingJob.Status.SUCCEEDED


def test_split_reply_cuts_an_overlong_sentence_at_a_space():
    parts = split_reply("word " * 2000, limit=100)
    assert all(len(p) <= 100 for p in parts) and " ".join(parts) == ("word " * 2000).strip()
    assert split_reply("Short. Answer.") == ["Short. Answer."]


def test_a_rerun_of_the_job_does_not_ask_the_model_again(assistant, model_server):
    from assistant.handler import assistant_reply
    from whatsapp.models import InboundMessage

    client_writes(assistant.company, "hi", "WA-1")
    result = assistant_reply(InboundMessage.objects.get(wa_message_id="WA-1"))
    assert result.note == "reply already queued" and len(model_server.requests) == 1


def test_group_chats_and_companies_without_an_assistant_get_no_model_call(
    tenants, assistant, model_server
):
    _, replies = client_writes(assistant.company, "hi all", "WA-G",
                               chat="120363025555555555@g.us")
    tenants.b.inbound_handler = "assistant"
    tenants.b.save()
    job, other = client_writes(tenants.b, "hi", "WA-B")
    assert replies == [] and other == [] and model_server.requests == []
    assert "no assistant is configured" in job.result
