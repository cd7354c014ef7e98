"""A message joins its chat's turn (the job stage's half of services.turns).

Called by the message's processing job when the company's handler is a turn
handler. In one transaction the job is linked to the chat's open turn (or
opens one) and set `in_turn`, fenced by its attempt: a job re-run after a
crash that already joined is not claimable (it is `in_turn`), and one that
had not joined joins now. The debounce window is counted from the messages'
arrival (received_at), not from when their jobs ran, so a job backlog does
not add to it.
"""

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from whatsapp.models import ProcessingJob, Turn


def join_turn(job_id, attempt_number, message, handler_path):
    """Link job `job_id` (of `message`) to its chat's open turn, opening one if
    there is none. Returns False when this attempt no longer holds the job."""
    company = message.company
    at = message.received_at
    for _ in range(5):
        try:
            with transaction.atomic():
                turn = _extend_open_turn(company, message.chat_jid, at)
                if turn is None:
                    with transaction.atomic():
                        turn = Turn.objects.create(
                            company=company,
                            chat_jid=message.chat_jid,
                            chat_id=message.chat_id,
                            first_message_at=at,
                            last_message_at=at,
                            due_at=Turn.window(
                                at,
                                at,
                                company.turn_debounce_seconds,
                                company.turn_max_wait_seconds,
                            ),
                            message_count=1,
                            handler=handler_path,
                        )
                return bool(
                    ProcessingJob.objects.filter(
                        pk=job_id, status=ProcessingJob.Status.RUNNING, attempts=attempt_number
                    ).update(
                        turn=turn,
                        status=ProcessingJob.Status.IN_TURN,
                        handler=handler_path,
                        result=f"in turn {turn.pk}",
                        lease_expires_at=None,
                    )
                )
        except IntegrityError:
            continue  # another job of this chat opened the turn first: join it
    raise RuntimeError(f"could not join a turn of chat {message.chat_jid!r}")


def _extend_open_turn(company, chat_jid, at):
    """The chat's open turn, its window extended to cover a message at `at`."""
    open_turn = (
        Turn.objects.select_for_update()
        .filter(company=company, chat_jid=chat_jid, status=Turn.Status.OPEN)
        .first()
    )
    if open_turn is None:
        return None
    last = max(open_turn.last_message_at, at)
    due = Turn.window(
        open_turn.first_message_at,
        last,
        company.turn_debounce_seconds,
        company.turn_max_wait_seconds,
    )
    if not Turn.objects.filter(pk=open_turn.pk, status=Turn.Status.OPEN).update(
        last_message_at=last, due_at=due, message_count=F("message_count") + 1
    ):
        return None
    open_turn.due_at = due
    return open_turn


def note_client_composing(company, chat_jid, now=None):
    """The client is typing in `chat_jid`: its open turn waits one more debounce
    window (never beyond the cap). Returns whether a turn was extended."""
    now = now or timezone.now()
    open_turn = Turn.objects.filter(
        company=company, chat_jid=chat_jid, status=Turn.Status.OPEN
    ).first()
    if open_turn is None:
        return False
    due = Turn.window(
        open_turn.first_message_at,
        now,
        company.turn_debounce_seconds,
        company.turn_max_wait_seconds,
    )
    return bool(
        Turn.objects.filter(pk=open_turn.pk, status=Turn.Status.OPEN, due_at__lt=due).update(
            due_at=due
        )
    )
