"""When the model does not behave, or the company is over its limits: the
fallback and fixed answers (never silence), the runs and the incidents."""

import logging

import pytest

from assistant.models import AssistantRun, Outcome
from whatsapp.models import Incident, IncidentKind, ProcessingJob
from whatsapp.services.alerts import run_alert_checks

from .chat import client_writes
from .model_server import Reply, classification

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "reply, outcome",
    [
        (Reply(status=500), Outcome.MODEL_ERROR),
        (Reply(status=429), Outcome.MODEL_ERROR),
        (Reply(delay=3.0), Outcome.TIMEOUT),  # the company's timeout is 2 s
        (Reply(refusal="I can't help with that."), Outcome.REFUSED),
        (Reply(text="", finish_reason="stop"), Outcome.MODEL_ERROR),  # empty answer
    ],
    ids=["http-500", "http-429", "slow", "refusal", "empty"],
)
def test_a_failing_model_gets_the_fallback_message(assistant, model_server, reply, outcome):
    model_server.add(reply)
    job, replies = client_writes(assistant.company, "When do you open?", "WA-1")
    assert replies == [assistant.fallback_message]
    assert job.status == ProcessingJob.Status.SUCCEEDED
    run = AssistantRun.objects.get()
    assert run.outcome == outcome and run.is_failure


def test_invalid_structured_output_of_the_classifier_gets_the_fallback(assistant, model_server):
    assistant.classifier_enabled = True
    assistant.save()
    model_server.add(Reply('{"action": "dance"}'))
    _, replies = client_writes(assistant.company, "hi", "WA-1")
    assert replies == [assistant.fallback_message] and len(model_server.requests) == 1
    assert AssistantRun.objects.get().outcome == Outcome.INVALID


def test_the_reply_deadline_bounds_both_stages(assistant, model_server, settings):
    settings.ASSISTANT = {**settings.ASSISTANT, "REPLY_DEADLINE": 1.0}
    assistant.classifier_enabled = True
    assistant.save()
    model_server.add(Reply(classification("answer").text, delay=0.7))
    _, replies = client_writes(assistant.company, "hi", "WA-1")
    # 0.3 s were left for the answer: too little to start it.
    assert replies == [assistant.fallback_message] and len(model_server.requests) == 1
    assert AssistantRun.objects.get().outcome == Outcome.TIMEOUT


def test_repeated_failures_open_an_incident_that_resolves_when_answers_come_back(
    assistant, model_server, settings
):
    settings.ASSISTANT = {**settings.ASSISTANT, "FAILURE_INCIDENT_THRESHOLD": 2}
    model_server.add(Reply(status=500), Reply(status=503))
    client_writes(assistant.company, "one", "WA-1")
    run_alert_checks(notify=False)
    assert not Incident.objects.filter(kind=IncidentKind.ASSISTANT_FAILING).exists()
    client_writes(assistant.company, "two", "WA-2")
    run_alert_checks(notify=False)
    incident = Incident.objects.get(kind=IncidentKind.ASSISTANT_FAILING)
    assert incident.company == assistant.company and "failed 2 times" in incident.summary
    AssistantRun.objects.filter(outcome=Outcome.MODEL_ERROR).delete()  # the window passed
    run_alert_checks(notify=False)
    incident.refresh_from_db()
    assert incident.resolved_at is not None


def test_a_spent_budget_gets_the_polite_fixed_answer_and_an_incident(assistant, model_server):
    assistant.monthly_token_budget = 100
    assistant.save()
    model_server.add(Reply("First answer.", tokens_in=80, tokens_out=30))
    _, first = client_writes(assistant.company, "hi", "WA-1")
    _, second = client_writes(assistant.company, "hello?", "WA-2")
    assert first == ["First answer."]
    assert second == [assistant.budget_message] and len(model_server.requests) == 1
    assert AssistantRun.objects.order_by("-pk").first().outcome == Outcome.BUDGET
    run_alert_checks(notify=False)
    incident = Incident.objects.get(kind=IncidentKind.ASSISTANT_BUDGET)
    assert "110 of its 100 tokens" in incident.summary


def test_test_runs_count_toward_no_budget(assistant, model_server):
    from assistant.services import CLIENT, Said, TurnContext, run_turn

    assistant.monthly_token_budget = 100
    assistant.save()
    model_server.add(Reply(tokens_in=500, tokens_out=500))
    run_turn(TurnContext(assistant.company_id, "try-it", (Said(CLIENT, "hi"),), is_test=True))
    _, replies = client_writes(assistant.company, "hi", "WA-1")
    assert replies == ["Hello from the test model."]


def test_a_chat_over_its_rate_limit_gets_no_model_call(tenants, assistant, model_server):
    assistant.chat_replies_per_hour = 2
    assistant.save()
    for i in range(3):
        client_writes(assistant.company, f"spam {i}", f"WA-{i}")
    assert len(model_server.requests) == 2
    assert AssistantRun.objects.order_by("-pk").first().outcome == Outcome.RATE_LIMITED
    # Another chat is not limited by this one.
    _, replies = client_writes(assistant.company, "hi", "WA-X", chat="4915199999999@s.whatsapp.net")
    assert replies == ["Hello from the test model."]


def test_a_key_no_configured_key_decrypts_gets_the_fallback(assistant, model_server, settings):
    from cryptography.fernet import Fernet

    settings.ASSISTANT_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    _, replies = client_writes(assistant.company, "hi", "WA-1")
    assert replies == [assistant.fallback_message] and model_server.requests == []
    run = AssistantRun.objects.get()
    assert run.outcome == Outcome.MODEL_ERROR and "enter the API key again" in run.note


def test_failures_are_logged_without_the_response_body(assistant, model_server, caplog):
    caplog.set_level(logging.DEBUG)
    model_server.add(Reply(status=401))
    client_writes(assistant.company, "hi", "WA-1")
    assert "AuthenticationError (HTTP 401)" in caplog.text
    assert "scripted failure" not in AssistantRun.objects.get().note


def test_an_endpoint_in_the_internal_network_is_refused_unless_allowed(
    assistant, model_server, settings
):
    settings.ASSISTANT = {**settings.ASSISTANT, "ALLOW_PRIVATE_ENDPOINTS": False}
    _, replies = client_writes(assistant.company, "hi", "WA-1")
    assert replies == [assistant.fallback_message] and model_server.requests == []
    run = AssistantRun.objects.get()
    assert run.outcome == Outcome.MODEL_ERROR
    assert "127.0.0.1" in run.note and "ASSISTANT_ALLOW_PRIVATE_ENDPOINTS" in run.note
