"""Running turns: claim, handler, replies, deadlines (docs/processing.md, "Turns").

* **Claim**: one conditional UPDATE takes due turns (open past `due_at`, or
  running with an expired lease: the attempt died) whose chat has no earlier
  unfinished turn -- turns of one chat run strictly in order, one at a time;
  chats in parallel -- and no message received within the window whose job
  has not joined yet. Of two runners only one claims a turn.
* **Run**: the handler gets a TurnContext (services.turn_contract) and runs in
  a thread bounded by its own timeout. Its replies are queued one by one,
  paced like a person types, each fenced by the attempt (a superseded attempt
  queues nothing more) and keyed per turn and index (`turn:<id>:<n>`): a
  retry that produces them again finds the ones already queued.
* **Finish**: the turn's outcome and its messages' jobs commit together.
* **Deadlines**: no reply by the company's reply deadline -> the holding
  message, once; by the hand-over deadline -> the chat is handed to a person
  and an incident opened; a still-running handler then commits nothing.
"""

import logging
import random
import threading
import time
import traceback
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from whatsapp.models import (
    Author,
    Chat,
    InboundMessage,
    Incident,
    IncidentKind,
    OutboundMessage,
    ProcessingJob,
    Turn,
    WebhookEvent,
)
from whatsapp.models.messages import HANDLED_BY_PERSON

from . import local_processes
from .conversations import chat_data, pause_chat
from .outbound import IdempotencyConflict, OptedOut, queue_outbound_message
from .processing import HandlerError, claimant, claimant_identity, load_handler
from .turn_contract import (
    Attempt,
    DoNothing,
    HandOver,
    React,
    ReplyLater,
    SendMedia,
    SendText,
    ThreadMessage,
    TurnContext,
    as_actions,
)
from .webhooks import emit_event

logger = logging.getLogger(__name__)
Status = Turn.Status


def _conf():
    return settings.WHATSAPP_TURNS


class _Superseded(Exception):
    """This attempt no longer holds its turn (lease lost, handed over, answered)."""


# --- claim ---------------------------------------------------------------------
_CLAIM_SQL = None


def claim_due_turns(limit=10, now=None):
    """Take up to `limit` due turns for running. Returns [(turn id, Attempt)]."""
    global _CLAIM_SQL
    now = now or timezone.now()
    if _CLAIM_SQL is None:
        t = connection.ops.quote_name(Turn._meta.db_table)
        j = connection.ops.quote_name(ProcessingJob._meta.db_table)
        m = connection.ops.quote_name(InboundMessage._meta.db_table)
        due = "((status = %s AND due_at <= %s) OR (status = %s AND lease_expires_at < %s))"
        # SET expressions read the row as it was: last_outcome sees the old status.
        _CLAIM_SQL = (
            f"UPDATE {t} SET "
            "last_outcome = CASE WHEN status = %s AND claimed_by <> '' THEN %s "
            "ELSE last_outcome END, "
            "status = %s, started_at = %s, lease_expires_at = %s, claimed_by = %s, "
            "attempts = attempts + 1 "
            f"WHERE id IN (SELECT c.id FROM {t} c WHERE "
            + due.replace("status", "c.status")
            .replace("due_at", "c.due_at")
            .replace("lease_expires_at", "c.lease_expires_at")
            + f" AND NOT EXISTS (SELECT 1 FROM {t} p WHERE p.company_id = c.company_id "
            "AND p.chat_jid = c.chat_jid AND p.id < c.id AND p.status IN (%s, %s, %s)) "
            # Every message of the chat that came within the window has joined:
            # a job still waiting on the queue (a backlog, a cluster restart)
            # holds its turn back instead of opening a second one.
            f"AND NOT EXISTS (SELECT 1 FROM {j} j JOIN {m} m ON m.id = j.message_id "
            "WHERE j.status IN (%s, %s, %s) AND m.company_id = c.company_id "
            "AND m.chat_jid = c.chat_jid AND m.received_at <= c.due_at) "
            f"ORDER BY c.due_at LIMIT %s) AND {due} "
            "RETURNING id, attempts, last_outcome, error"
        )
    adapt = connection.ops.adapt_datetimefield_value
    lease = timedelta(seconds=_conf()["LEASE"])
    params = [
        Status.RUNNING,
        ProcessingJob.Outcome.DIED,
        Status.RUNNING,
        adapt(now),
        adapt(now + lease),
        claimant(),
        Status.OPEN,
        adapt(now),
        Status.RUNNING,
        adapt(now),
        *Turn.UNFINISHED,
        ProcessingJob.Status.PENDING,
        ProcessingJob.Status.QUEUED,
        ProcessingJob.Status.RUNNING,
        limit,
        Status.OPEN,
        adapt(now),
        Status.RUNNING,
        adapt(now),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, params)
        rows = cursor.fetchall()
    return [
        (pk, Attempt(attempts, outcome or "", (error or "")[:2000]))
        for pk, attempts, outcome, error in rows
    ]


def release_dead_turn_attempts(now=None):
    """Running turns claimed by a process on this machine that is gone: their
    lease ends now, so the next claim retries them (told `died`) at once."""
    now = now or timezone.now()
    here = local_processes.host_key()
    if not here:
        return 0
    count = 0
    for pk, claimed_by in Turn.objects.filter(
        status=Status.RUNNING, claimed_by__startswith=f"{here}|", lease_expires_at__gt=now
    ).values_list("pk", "claimed_by")[:1000]:
        if local_processes.is_gone(claimant_identity(claimed_by)):
            count += Turn.objects.filter(
                pk=pk, status=Status.RUNNING, claimed_by=claimed_by
            ).update(lease_expires_at=now)
    return count


# --- context -------------------------------------------------------------------
def turn_messages(turn):
    return list(InboundMessage.objects.filter(job__turn=turn).order_by("received_at", "id"))


def _inbound_thread_message(m):
    return ThreadMessage(
        direction="in",
        author="client",
        text=m.text,
        kind=m.kind,
        media="" if m.kind in ("text", "other") else f"inbound:{m.pk}",
        wa_message_id=m.wa_message_id,
        at=m.received_at,
    )


def thread_history(turn, limit=None):
    """The chat's last `limit` messages before this turn, both sides, oldest first."""
    limit = _conf()["HISTORY"] if limit is None else limit
    if limit <= 0:
        return ()
    inbound = (
        InboundMessage.objects.filter(
            company_id=turn.company_id,
            chat_jid=turn.chat_jid,
            received_at__lt=turn.first_message_at,
        )
        .exclude(job__turn=turn)
        .order_by("-received_at", "-id")[:limit]
    )
    outbound = OutboundMessage.objects.filter(
        company_id=turn.company_id, to_jid=turn.chat_jid, created_at__lt=turn.first_message_at
    ).order_by("-created_at", "-id")[:limit]
    items = [_inbound_thread_message(m) for m in inbound] + [
        ThreadMessage(
            direction="out",
            author=o.author,
            text=o.text,
            wa_message_id=o.wa_message_id,
            at=o.created_at,
        )
        for o in outbound
    ]
    items.sort(key=lambda m: m.at)
    return tuple(items[-limit:])


def build_context(turn, attempt, messages=None):
    messages = turn_messages(turn) if messages is None else messages
    company = turn.company
    chat = turn.chat
    contact = chat.contact if chat is not None and chat.contact_id else None
    if contact is None and messages and messages[-1].contact_id:
        contact = messages[-1].contact
    return TurnContext(
        turn_id=turn.pk,
        company=company,
        chat=chat,
        contact=contact,
        chat_jid=turn.chat_jid,
        messages=tuple(_inbound_thread_message(m) for m in messages),
        history=thread_history(turn),
        attempt=attempt,
        deadline=turn.first_message_at + timedelta(seconds=company.turn_reply_deadline_seconds),
        push_name=messages[-1].push_name if messages else "",
    )


# --- running -------------------------------------------------------------------
def call_with_timeout(func, arg, timeout):
    """func(arg) in a thread of its own, waited for at most `timeout` seconds.
    Raises TimeoutError when it did not finish (its result is then ignored: the
    attempt is fenced, so whatever it does later commits nothing of the turn)."""
    box = {}

    def target():
        try:
            box["value"] = func(arg)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=target, name="turn-handler", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"the handler did not answer within {timeout:.1f}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def typing_delay(company, text, rng=random):
    """How long a person would type `text`: per character, capped, jittered."""
    base = min(len(text) * company.typing_seconds_per_char, company.typing_max_seconds)
    return max(0.0, base * rng.uniform(0.8, 1.2))


class TurnRun:
    """One attempt at one turn."""

    def __init__(self, turn_id, attempt, hints=None, sleep=time.sleep):
        self.turn = Turn.objects.select_related("company", "chat__contact").get(pk=turn_id)
        self.attempt = attempt
        self.hints = hints  # a ClientHints (read marks, presence), or None
        self.sleep = sleep
        self.mine = Turn.objects.filter(pk=turn_id, status=Status.RUNNING, attempts=attempt.number)

    def run(self):
        turn, company = self.turn, self.turn.company
        messages = turn_messages(turn)
        if self.hints and company.turn_mark_read and self.attempt.number == 1:
            self.hints.mark_read(company.pk, turn.chat_jid, messages)
        if self.hints:
            self.hints.composing(company.pk, turn.chat_jid)
        started = time.monotonic()
        if turn.chat is not None and turn.chat.bot_is_paused():
            # A person took the chat over while the turn was collecting.
            self.handler_seconds = 0.0
            try:
                return self._finish(Status.NO_REPLY, HANDLED_BY_PERSON, 0)
            except _Superseded:
                return "superseded"
        try:
            handler = load_handler(turn.handler)
            ctx = build_context(turn, self.attempt, messages)
            actions = as_actions(
                call_with_timeout(
                    handler, ctx, getattr(handler, "turn_timeout", _conf()["HANDLER_TIMEOUT"])
                )
            )
        except Exception as exc:
            return self._failed(exc, time.monotonic() - started)
        finally:
            self.handler_seconds = time.monotonic() - started
        try:
            return self._act(actions, messages)
        except _Superseded:
            logger.warning("turn %s: attempt %d was superseded", turn.pk, self.attempt.number)
            return "superseded"
        finally:
            if self.hints:
                self.hints.paused(company.pk, turn.chat_jid)

    def _act(self, actions, messages):
        notes, sent, outcome = [], 0, Status.NO_REPLY
        for action in actions:
            if isinstance(action, SendText):
                if not action.text.strip():
                    continue
                delay = typing_delay(self.turn.company, action.text)
                if delay and self.hints:
                    self.hints.composing(self.turn.company_id, self.turn.chat_jid)
                self.sleep(delay)
                try:
                    self._queue_reply(action.text, sent, messages)
                except OptedOut:
                    notes.append("not sent: the client opted out")
                    break
                sent += 1
            elif isinstance(action, SendMedia | React):
                notes.append(f"{type(action).__name__} not supported yet: skipped")
            elif isinstance(action, HandOver):
                return self._finish(Status.HANDED_OVER, action.note or "handed over", sent)
            elif isinstance(action, ReplyLater):
                if not self.mine.update(
                    status=Status.AWAITING,
                    lease_expires_at=None,
                    claimed_by="",
                    handler_seconds=self.handler_seconds,
                    result=action.note or "waiting for the asynchronous reply",
                ):
                    raise _Superseded
                return Status.AWAITING
            elif isinstance(action, DoNothing) and action.note:
                notes.append(action.note)
        if sent:
            outcome = Status.ANSWERED
            notes.insert(0, f"{sent} repl{'y' if sent == 1 else 'ies'}")
        return self._finish(outcome, "; ".join(notes) or "no reply", sent)

    def _queue_reply(self, text, index, messages):
        with transaction.atomic():
            if not self.mine.update(replied_at=Coalesce(F("replied_at"), timezone.now())):
                raise _Superseded
            queue_turn_reply(self.turn, text, index, messages)

    def _finish(self, outcome, note, sent):
        with transaction.atomic():
            if not self.mine.update(
                status=outcome,
                result=note[:2000],
                error="",
                lease_expires_at=None,
                handler_seconds=self.handler_seconds,
                finished_at=timezone.now(),
                **({"handed_over_at": timezone.now()} if outcome == Status.HANDED_OVER else {}),
            ):
                raise _Superseded
            finish_turn_jobs(self.turn, outcome, note)
            if outcome == Status.HANDED_OVER:
                open_handover_incident(self.turn, note)
        return outcome

    def _failed(self, exc, seconds):
        permanent = isinstance(exc, HandlerError) and exc.permanent
        timed_out = isinstance(exc, TimeoutError)
        final = permanent or self.attempt.number >= _conf()["MAX_ATTEMPTS"]
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"[:8000]
        logger.warning(
            "turn %s: handler failed (attempt %d%s): %s",
            self.turn.pk,
            self.attempt.number,
            ", giving up" if final else ", will retry",
            exc,
        )
        with transaction.atomic():
            if final:
                updated = self.mine.update(
                    status=Status.FAILED,
                    error=error,
                    lease_expires_at=None,
                    handler_seconds=seconds,
                    finished_at=timezone.now(),
                    last_outcome="timed_out" if timed_out else "failed",
                )
                if updated:
                    finish_turn_jobs(self.turn, Status.FAILED, error.splitlines()[0])
            else:
                # Still running, unclaimed: claimed again (as a retry) at the end
                # of the retry delay, in order before later turns of its chat.
                updated = self.mine.update(
                    error=error,
                    claimed_by="",
                    handler_seconds=seconds,
                    last_outcome="timed_out" if timed_out else "failed",
                    lease_expires_at=timezone.now() + timedelta(seconds=_conf()["RETRY_DELAY"]),
                )
        if self.hints:
            self.hints.paused(self.turn.company_id, self.turn.chat_jid)
        if not updated:
            return "superseded"
        return Status.FAILED if final else "retry"


def queue_turn_reply(turn, text, index, messages=None):
    """Queue reply `index` of `turn` once (key `turn:<id>:<index>`). The first
    reply is linked to the turn's last message. An earlier attempt's different
    reply under the same key stands."""
    messages = turn_messages(turn) if messages is None else messages
    in_reply_to = messages[-1] if (messages and index == 0) else None
    if (
        in_reply_to is not None
        and OutboundMessage.objects.filter(in_reply_to=in_reply_to)
        .exclude(idempotency_key=f"turn:{turn.pk}:0")
        .exists()
    ):
        in_reply_to = None
    try:
        return queue_outbound_message(
            turn.company_id,
            turn.chat_jid,
            text,
            idempotency_key=f"turn:{turn.pk}:{index}",
            in_reply_to=in_reply_to,
            author=Author.HANDLER,
        )[0]
    except IdempotencyConflict as exc:
        return exc.existing


def finish_turn_jobs(turn, outcome, note):
    """The jobs of the turn's messages take the turn's outcome."""
    failed = outcome == Status.FAILED
    ProcessingJob.objects.filter(turn=turn, status=ProcessingJob.Status.IN_TURN).update(
        status=ProcessingJob.Status.FAILED if failed else ProcessingJob.Status.SUCCEEDED,
        result=f"turn {turn.pk}: {outcome}: {note}"[:2000],
        finished_at=timezone.now(),
    )


def open_handover_incident(turn, note):
    """The chat needs a person: the bot pauses there, the chat shows it (and its
    webhook event goes out), and an incident tells the operators."""
    if turn.chat_id is not None:
        chat = Chat.objects.select_related("contact").get(pk=turn.chat_id)
        pause_chat(chat, Author.HANDLER, company=turn.company)
        if not chat.needs_human:
            Chat.objects.filter(pk=chat.pk).update(needs_human=True)
            chat.needs_human = True
            emit_event(turn.company_id, WebhookEvent.CHAT_NEEDS_HUMAN, chat_data(chat))
    Incident.objects.get_or_create(
        subject=f"turn:{turn.pk}",
        kind=IncidentKind.HANDED_OVER,
        resolved_at=None,
        defaults={
            "company_id": turn.company_id,
            "summary": f"Chat {turn.chat_jid} needs a person"[:300],
            "details": note,
        },
    )


def run_turn(turn_id, attempt, hints=None, sleep=time.sleep):
    """Run one claimed attempt of turn `turn_id`; its outcome (a Turn status,
    "retry" or "superseded")."""
    return TurnRun(turn_id, attempt, hints=hints, sleep=sleep).run()


def run_due_turns(limit=10, hints=None, now=None, sleep=time.sleep):
    """Claim due turns and run them here, one after the other (tests, tools).
    The runner (manage.py runturns) runs them in parallel threads instead."""
    return {
        pk: run_turn(pk, attempt, hints=hints, sleep=sleep)
        for pk, attempt in claim_due_turns(limit, now)
    }


# --- deadlines -----------------------------------------------------------------
def enforce_turn_deadlines(now=None):
    """Holding messages and hand-overs for unanswered turns. Returns (held, handed)."""
    now = now or timezone.now()
    held = handed = 0
    late = Turn.objects.filter(
        status__in=Turn.UNFINISHED,
        replied_at__isnull=True,
        first_message_at__lte=now - timedelta(seconds=1),
    ).select_related("company")
    for turn in late[:1000]:
        company = turn.company
        age = (now - turn.first_message_at).total_seconds()
        if age >= company.turn_handover_deadline_seconds:
            handed += hand_over_turn(turn, "no answer by the hand-over deadline", now)
        elif age >= company.turn_reply_deadline_seconds and turn.holding_sent_at is None:
            with transaction.atomic():
                if Turn.objects.filter(
                    pk=turn.pk,
                    holding_sent_at__isnull=True,
                    replied_at__isnull=True,
                    status__in=Turn.UNFINISHED,
                ).update(holding_sent_at=now):
                    try:
                        queue_outbound_message(
                            company.pk,
                            turn.chat_jid,
                            company.turn_holding_text,
                            idempotency_key=f"turn:{turn.pk}:holding",
                            author=Author.HANDLER,
                        )
                    except (IdempotencyConflict, OptedOut):
                        pass
                    held += 1
    return held, handed


def hand_over_turn(turn, note, now=None):
    """Hand an unfinished turn to a person (its running handler commits nothing)."""
    now = now or timezone.now()
    with transaction.atomic():
        if not Turn.objects.filter(pk=turn.pk, status__in=Turn.UNFINISHED).update(
            status=Status.HANDED_OVER,
            handed_over_at=now,
            finished_at=now,
            lease_expires_at=None,
            result=note[:2000],
        ):
            return 0
        finish_turn_jobs(turn, Status.HANDED_OVER, note)
        open_handover_incident(turn, note)
    return 1


# --- asynchronous replies ----------------------------------------------------------
class TurnReplyRefused(Exception):
    """The turn takes no reply (wrong token, or already finished)."""

    def __init__(self, message, status=409):
        super().__init__(message)
        self.status = status


def reply_to_turn(turn, token, texts, hand_over_note=None):
    """The asynchronous answer of a turn (POST .../turns/{id}/reply): queue
    `texts` (unpaced) and finish the turn, once. A second answer, or one after
    the hand-over deadline, is refused."""
    import hmac

    if not hmac.compare_digest(turn.token, token or ""):
        raise TurnReplyRefused("wrong turn token", status=403)
    messages = turn_messages(turn)
    with transaction.atomic():
        mine = Turn.objects.filter(pk=turn.pk, status__in=[Status.RUNNING, Status.AWAITING])
        now = timezone.now()
        outcome = (
            Status.HANDED_OVER
            if hand_over_note is not None
            else (Status.ANSWERED if texts else Status.NO_REPLY)
        )
        if not mine.update(
            status=outcome,
            finished_at=now,
            lease_expires_at=None,
            replied_at=now if texts else None,
            result=f"asynchronous reply: {len(texts)} message(s)",
            **({"handed_over_at": now} if hand_over_note is not None else {}),
        ):
            raise TurnReplyRefused(f"turn {turn.pk} is {Turn.objects.get(pk=turn.pk).status}")
        for index, text in enumerate(texts):
            queue_turn_reply(turn, text, index, messages)
        finish_turn_jobs(turn, outcome, "asynchronous reply")
        if hand_over_note is not None:
            open_handover_incident(turn, hand_over_note)
    return outcome


def pending_turn_count():
    return Turn.objects.filter(Q(status=Status.OPEN) | Q(status=Status.RUNNING)).count()
