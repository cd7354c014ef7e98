"""Turns: the messages of one chat that came close together are answered once,
in order, with their thread as context (issue 18). In-process, on the real
services and database (both passes); the runner process and the simulator are
in tests/whatsapp/test_turns_e2e.py."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from whatsapp.models import (
    InboundMessage,
    Incident,
    IncidentKind,
    OutboundMessage,
    ProcessingJob,
    Turn,
    WebhookEndpoint,
)
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.outbound import queue_outbound_message
from whatsapp.services.processing import HandlerError, run_message_job
from whatsapp.services.turn_contract import (
    DoNothing,
    HandOver,
    SendText,
    turn_handler,
)
from whatsapp.services.turn_join import note_client_composing
from whatsapp.services.turns import (
    TurnReplyRefused,
    claim_due_turns,
    enforce_turn_deadlines,
    reply_to_turn,
    run_due_turns,
    run_turn,
)
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

from .http_receiver import running_receiver

pytestmark = pytest.mark.django_db(transaction=True)

ANNA = "491701234567@s.whatsapp.net"
BEN = "491709876543@s.whatsapp.net"
seen = []  # the contexts the test handlers were called with
behaviour = {}


@turn_handler(timeout=1.0)
def echo_turn(ctx):
    seen.append(ctx)
    mode = behaviour.get("mode")
    if mode == "fail":
        raise RuntimeError("the AI backend answered 503")
    if mode == "refuse":
        raise HandlerError("cannot answer this")
    if mode == "slow":
        import time

        time.sleep(3)
    if mode == "hand_over":
        return HandOver("wants a refund")
    if mode == "two":
        return [SendText("first"), SendText("second")]
    if mode == "nothing":
        return DoNothing("nothing to say")
    return SendText(f"got: {ctx.text.replace(chr(10), ' | ')}")


@pytest.fixture(autouse=True)
def turn_setup(settings, company):
    seen.clear()
    behaviour.clear()
    settings.WHATSAPP_INBOUND_HANDLERS = {
        **settings.WHATSAPP_INBOUND_HANDLERS,
        "echo_turn": {"path": "tests.whatsapp.test_turns.echo_turn", "label": "echo"},
    }
    settings.WHATSAPP_TURNS = {**settings.WHATSAPP_TURNS, "RETRY_DELAY": 0.0}
    company.inbound_handler = "echo_turn"
    company.typing_seconds_per_char = 0.0
    company.save()


def write(company, text, chat=ANNA, message_id=None, run_job=True):
    """A client message, stored as the inbound path stores it, and its job run."""
    message_id = message_id or f"3EB0{abs(hash((text, chat, timezone.now()))):X}"[:20]
    event = message_event(message_id, chat, text, push_name="Anna")
    outcome = record_inbound_message(company.pk, normalize_message(event))
    if run_job:
        assert run_message_job(outcome.message_pk) == ProcessingJob.Status.IN_TURN
    return outcome.message_pk


def later(seconds=60):
    return timezone.now() + timedelta(seconds=seconds)


def replies(company, chat=ANNA):
    return list(
        OutboundMessage.objects.filter(company=company, to_jid=chat)
        .order_by("id")
        .values_list("text", flat=True)
    )


class TestOneTurnPerBurst:
    def test_a_burst_of_three_messages_gets_one_answer_to_all_three(self, company):
        for text in ("hi", "I need", "a haircut tomorrow"):
            write(company, text)
        assert Turn.objects.count() == 1
        assert run_due_turns(now=later()) == {Turn.objects.get().pk: Turn.Status.ANSWERED}
        assert replies(company) == ["got: hi | I need | a haircut tomorrow"]
        assert len(seen) == 1 and [m.text for m in seen[0].messages] == [
            "hi",
            "I need",
            "a haircut tomorrow",
        ]
        # Promise 2: one job per message, each finished by the turn's outcome.
        jobs = ProcessingJob.objects.all()
        assert jobs.count() == 3
        assert {j.status for j in jobs} == {ProcessingJob.Status.SUCCEEDED}
        assert all("answered" in j.result for j in jobs)

    def test_a_turn_waits_for_its_debounce_window_and_is_handled_once(self, company):
        write(company, "hello")
        turn = Turn.objects.get()
        assert claim_due_turns(now=timezone.now()) == []  # still collecting (2 s)
        claimed = claim_due_turns(now=turn.due_at)
        assert [pk for pk, _ in claimed] == [turn.pk]
        assert claimed[0][1].number == 1
        assert claim_due_turns(now=later()) == []  # a second runner finds nothing

    def test_a_turn_waits_for_a_message_of_its_window_whose_job_is_late(self, company):
        write(company, "hi")
        late = write(company, "I need a haircut", run_job=False)  # its job is on the queue
        assert claim_due_turns(now=later()) == []
        run_message_job(late)
        assert len(claim_due_turns(now=later())) == 1
        assert Turn.objects.get().message_count == 2

    def test_a_chatty_client_is_answered_at_the_cap(self, company):
        company.turn_debounce_seconds = 2.0
        company.turn_max_wait_seconds = 5.0
        company.save()
        write(company, "one")
        turn = Turn.objects.get()
        # Messages keep coming every second: each extends the window, up to the cap.
        for n in range(1, 9):
            msg_at = turn.first_message_at + timedelta(seconds=n)
            pk = write(company, f"more {n}", run_job=False)
            InboundMessage.objects.filter(pk=pk).update(received_at=msg_at)
            run_message_job(pk)
        turn.refresh_from_db()
        assert turn.due_at == turn.first_message_at + timedelta(seconds=5)
        assert Turn.objects.count() == 1

    def test_a_composing_client_extends_the_window_within_the_cap(self, company):
        write(company, "so")
        turn = Turn.objects.get()
        assert note_client_composing(
            company, ANNA, now=turn.first_message_at + timedelta(seconds=1.5)
        )
        turn.refresh_from_db()
        assert turn.due_at == turn.first_message_at + timedelta(seconds=3.5)

    def test_a_message_after_the_turn_started_opens_the_next_turn(self, company):
        write(company, "first question")
        [(first, attempt)] = claim_due_turns(now=later())
        write(company, "second question")
        second = Turn.objects.exclude(pk=first).get()
        # In order, one at a time: not before the first turn has finished.
        assert claim_due_turns(now=later()) == []
        assert run_turn(first, attempt) == Turn.Status.ANSWERED
        assert [pk for pk, _ in claim_due_turns(now=later())] == [second.pk]

    def test_chats_run_in_parallel(self, company):
        write(company, "from anna")
        write(company, "from ben", chat=BEN)
        assert len(claim_due_turns(now=later())) == 2

    def test_a_job_run_again_after_joining_does_not_join_twice(self, company):
        pk = write(company, "hello")
        assert run_message_job(pk) == "skipped"
        assert Turn.objects.get().message_count == 1


class TestCrashesAndRetries:
    def test_a_turn_whose_attempt_died_runs_again_knowing_it_and_replies_once(self, company):
        write(company, "hello")
        [(pk, attempt)] = claim_due_turns(now=later())
        # The first attempt queued its reply, then its process died before finishing.
        queue_outbound_message(company.pk, ANNA, "got: hello", idempotency_key=f"turn:{pk}:0")
        lease = Turn.objects.get(pk=pk).lease_expires_at
        [(again, retry)] = claim_due_turns(now=lease + timedelta(seconds=1))
        assert again == pk and retry.number == 2 and retry.previous_outcome == "died"
        assert run_turn(pk, retry) == Turn.Status.ANSWERED
        assert seen[-1].attempt.is_retry
        assert replies(company) == ["got: hello"]

    def test_a_superseded_attempt_commits_nothing(self, company):
        write(company, "hello")
        [(pk, attempt)] = claim_due_turns(now=later())
        lease = Turn.objects.get(pk=pk).lease_expires_at
        claim_due_turns(now=lease + timedelta(seconds=1))  # another runner took it over
        assert run_turn(pk, attempt) == "superseded"
        assert replies(company) == []

    def test_a_failing_handler_is_retried_then_fails_with_its_jobs(self, company, settings):
        settings.WHATSAPP_TURNS = {**settings.WHATSAPP_TURNS, "MAX_ATTEMPTS": 2}
        behaviour["mode"] = "fail"
        write(company, "hello")
        assert list(run_due_turns(now=later()).values()) == ["retry"]
        assert list(run_due_turns(now=later()).values()) == [Turn.Status.FAILED]
        assert [c.attempt.number for c in seen] == [1, 2]
        assert seen[1].attempt.previous_outcome == "failed"
        assert ProcessingJob.objects.get().status == ProcessingJob.Status.FAILED

    def test_a_permanent_handler_error_fails_at_once(self, company):
        behaviour["mode"] = "refuse"
        write(company, "hello")
        assert list(run_due_turns(now=later()).values()) == [Turn.Status.FAILED]
        assert "cannot answer this" in Turn.objects.get().error

    def test_a_handler_past_its_timeout_is_retried(self, company):
        behaviour["mode"] = "slow"
        write(company, "hello")
        assert list(run_due_turns(now=later()).values()) == ["retry"]
        assert Turn.objects.get().last_outcome == "timed_out"

    def test_concurrent_runners_claim_each_turn_once(self, company, tenants):
        for n in range(6):
            write(company, f"hello {n}", chat=f"49170111222{n:02d}@s.whatsapp.net")
        claimed, errors = [], []

        def runner():
            try:
                claimed.extend(pk for pk, _ in claim_due_turns(limit=6, now=later()))
            except Exception as exc:  # a lock timeout would show here
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=runner) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(claimed) == sorted(Turn.objects.values_list("pk", flat=True))


class TestConversations:
    def test_the_turn_hangs_on_the_chat_and_the_handler_sees_the_contact(self, company):
        write(company, "hello")
        run_due_turns(now=later())
        turn = Turn.objects.get()
        assert turn.chat is not None and turn.chat.chat_jid == ANNA
        assert seen[0].chat == turn.chat
        assert seen[0].contact is not None and seen[0].contact.phone == "+491701234567"

    def test_a_chat_a_person_took_over_while_collecting_gets_no_answer(self, company):
        from whatsapp.models import Chat

        write(company, "hello")
        Chat.objects.filter(chat_jid=ANNA).update(bot_paused_until=later(600))
        assert list(run_due_turns(now=later()).values()) == [Turn.Status.NO_REPLY]
        assert seen == [] and replies(company) == []
        assert "person" in ProcessingJob.objects.get().result

    def test_handing_over_pauses_the_bot_and_marks_the_chat(self, company):
        from whatsapp.models import Chat

        behaviour["mode"] = "hand_over"
        write(company, "I want a refund")
        run_due_turns(now=later())
        chat = Chat.objects.get(chat_jid=ANNA)
        assert chat.needs_human and chat.bot_is_paused()
        later_pk = write(company, "hello?", run_job=False)
        # A person has the chat now: the job records it, no new turn.
        assert run_message_job(later_pk) == ProcessingJob.Status.SUCCEEDED
        assert Turn.objects.count() == 1


class TestContextAndActions:
    def test_the_handler_sees_the_thread_on_both_sides(self, company):
        write(company, "earlier question")
        run_due_turns(now=later())
        queue_outbound_message(company.pk, ANNA, "a note from the API")
        write(company, "follow-up")
        run_due_turns(now=later())
        ctx = seen[-1]
        assert [(m.direction, m.author, m.text) for m in ctx.history] == [
            ("in", "client", "earlier question"),
            ("out", "handler", "got: earlier question"),
            ("out", "api", "a note from the API"),
        ]
        assert ctx.company == company and ctx.push_name == "Anna"
        assert ctx.deadline == Turn.objects.get(pk=ctx.turn_id).first_message_at + timedelta(
            seconds=30
        )

    def test_several_replies_go_out_in_order(self, company):
        behaviour["mode"] = "two"
        write(company, "hello")
        run_due_turns(now=later())
        assert replies(company) == ["first", "second"]

    def test_replies_are_paced_like_a_person_types(self, company):
        company.typing_seconds_per_char = 0.1
        company.typing_max_seconds = 2.0
        company.save()
        waits = []
        write(company, "hello")
        run_due_turns(now=later(), sleep=waits.append)
        # "got: hello" is 10 characters: 1 s, jittered +-20 %.
        assert len(waits) == 1 and 0.8 <= waits[0] <= 1.2

    def test_a_handed_over_turn_opens_an_incident(self, company):
        behaviour["mode"] = "hand_over"
        write(company, "I want a refund")
        assert list(run_due_turns(now=later()).values()) == [Turn.Status.HANDED_OVER]
        incident = Incident.objects.get(kind=IncidentKind.HANDED_OVER)
        assert incident.company == company and incident.details == "wants a refund"
        assert ProcessingJob.objects.get().status == ProcessingJob.Status.SUCCEEDED

    def test_do_nothing_finishes_the_jobs_without_a_reply(self, company):
        behaviour["mode"] = "nothing"
        write(company, "ok thanks")
        assert list(run_due_turns(now=later()).values()) == [Turn.Status.NO_REPLY]
        assert replies(company) == []
        assert ProcessingJob.objects.get().status == ProcessingJob.Status.SUCCEEDED


class TestDeadlines:
    def test_a_late_turn_gets_the_holding_message_once_then_a_person(self, company):
        write(company, "hello")
        [(pk, attempt)] = claim_due_turns(now=later())
        first = Turn.objects.get(pk=pk).first_message_at
        assert enforce_turn_deadlines(now=first + timedelta(seconds=31)) == (1, 0)
        assert enforce_turn_deadlines(now=first + timedelta(seconds=40)) == (0, 0)
        assert replies(company) == ["One moment, please..."]
        assert enforce_turn_deadlines(now=first + timedelta(seconds=91)) == (0, 1)
        turn = Turn.objects.get(pk=pk)
        assert turn.status == Turn.Status.HANDED_OVER and turn.was_late
        assert Incident.objects.filter(subject=f"turn:{pk}", resolved_at=None).exists()
        # The handler answering after the hand-over commits nothing.
        assert run_turn(pk, attempt) == "superseded"
        assert replies(company) == ["One moment, please..."]

    def test_an_answered_turn_gets_no_holding_message(self, company):
        write(company, "hello")
        run_due_turns(now=later())
        first = Turn.objects.get().first_message_at
        assert enforce_turn_deadlines(now=first + timedelta(seconds=100)) == (0, 0)


@pytest.fixture
def turn_endpoint(company, settings):
    settings.WHATSAPP_WEBHOOKS = {
        **settings.WHATSAPP_WEBHOOKS,
        "ALLOW_PRIVATE": True,
        "HANDLER_TIMEOUT": 2.0,
    }
    company.inbound_handler = "webhook_turns"
    company.save(update_fields=["inbound_handler"])
    with running_receiver() as receiver:
        WebhookEndpoint.objects.create(
            company=company, url=receiver.url, is_message_handler=True, events=["message.status"]
        )
        yield receiver


class TestWebhookTurns:
    def test_the_endpoint_gets_the_turn_with_its_thread_and_answers_now(
        self, company, turn_endpoint
    ):
        turn_endpoint.answer((200, {"replies": ["Hello Anna", "Friday at 10?"]}))
        write(company, "hi")
        write(company, "a haircut tomorrow")
        assert list(run_due_turns(now=later()).values()) == [Turn.Status.ANSWERED]
        [request] = turn_endpoint.requests
        document = request.json()
        assert document["type"] == "turn.handle"
        assert [m["text"] for m in document["data"]["messages"]] == ["hi", "a haircut tomorrow"]
        assert document["data"]["turn"]["attempt"] == 1
        assert replies(company) == ["Hello Anna", "Friday at 10?"]

    def test_the_endpoint_may_answer_later_with_the_turns_token(self, company, turn_endpoint):
        turn_endpoint.answer(202)
        write(company, "hi")
        assert list(run_due_turns(now=later()).values()) == [Turn.Status.AWAITING]
        turn = Turn.objects.get()
        token = turn_endpoint.requests[0].json()["data"]["turn"]["token"]
        with pytest.raises(TurnReplyRefused):
            reply_to_turn(turn, "not-the-token", ["no"])
        assert reply_to_turn(turn, token, ["Hello later"]) == Turn.Status.ANSWERED
        with pytest.raises(TurnReplyRefused):  # answered once
            reply_to_turn(turn, token, ["twice"])
        assert replies(company) == ["Hello later"]
        assert ProcessingJob.objects.get().status == ProcessingJob.Status.SUCCEEDED


class TestReplyEndpoint:
    def test_the_webhook_answers_later_through_the_api_with_the_company_key(
        self, company, turn_endpoint
    ):
        from rest_framework.test import APIClient

        from companies.models import CompanyAPIKey

        turn_endpoint.answer(202)
        write(company, "hi")
        run_due_turns(now=later())
        data = turn_endpoint.requests[0].json()["data"]["turn"]
        _key, secret = CompanyAPIKey.objects.create_key(company=company, name="ai")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
        body = {"token": data["token"], "replies": ["Hello from the AI"]}
        first = client.post(data["reply_path"], body, format="json")
        again = client.post(data["reply_path"], body, format="json")
        assert (first.status_code, first.json()["status"]) == (202, "answered")
        assert again.status_code == 409
        assert replies(company) == ["Hello from the AI"]


class TestMetrics:
    def test_latency_handler_time_and_outcomes_per_company(self, company, client, settings):
        from prometheus_client.parser import text_string_to_metric_families

        settings.METRICS_TOKEN, settings.METRICS_PUBLIC = "", True
        write(company, "hello")
        write(company, "late one", chat=BEN)
        run_due_turns(now=later())
        answered, late = Turn.objects.get(chat_jid=ANNA), Turn.objects.get(chat_jid=BEN)
        Turn.objects.filter(pk=answered.pk).update(
            replied_at=answered.first_message_at + timedelta(seconds=3), handler_seconds=1.5
        )
        Turn.objects.filter(pk=late.pk).update(
            replied_at=late.first_message_at + timedelta(seconds=45),
            holding_sent_at=late.first_message_at + timedelta(seconds=30),
            handler_seconds=44.0,
        )
        body = client.get("/metrics", secure=True).content.decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        c = str(company.pk)
        latency = "aiadmin_turn_latency_seconds"
        assert samples[(f"{latency}_bucket", (("company", c), ("le", "5.0")))] == 1
        assert samples[(f"{latency}_bucket", (("company", c), ("le", "60.0")))] == 2
        assert samples[(f"{latency}_sum", (("company", c),))] == pytest.approx(48.0)
        assert samples[("aiadmin_turn_handler_seconds_sum", (("company", c),))] == 45.5
        outcomes = "aiadmin_turn_outcomes_total"
        assert samples[(outcomes, (("company", c), ("outcome", "in_time")))] == 1
        assert samples[(outcomes, (("company", c), ("outcome", "late")))] == 1
        assert samples[("aiadmin_turns", (("company", c), ("status", "answered")))] == 2


class TestKeywordTurns:
    def test_the_keyword_rules_answer_a_burst_once(self, company):
        from whatsapp.models import AutoReplyRule

        company.inbound_handler = "keyword_turns"
        company.save(update_fields=["inbound_handler"])
        AutoReplyRule.objects.create(company=company, keyword="hours", reply_text="9 to 5, {name}")
        write(company, "hello")
        write(company, "what are your hours?")
        write(company, "thanks")
        run_due_turns(now=later())
        assert replies(company) == ["9 to 5, Anna"]
