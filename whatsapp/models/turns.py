"""Turns: the messages of one chat that arrived close together, answered once.

A client who writes "hi" / "I need" / "a haircut tomorrow" within a few
seconds gets one answer to the three. Each message still has its one
ProcessingJob (promise 2); the job joins its message to the chat's open turn
(services.turns.join_turn) and is finished by the turn's outcome.

A turn is open while it collects messages (until `due_at`: the debounce
window after the last message, capped from the first), then claimed by one
runner with a conditional UPDATE and a lease, like a job. Turns of one chat
run strictly in order, one at a time: a turn is claimable only when no
earlier turn of its chat is unfinished. Chats run in parallel.
"""

import secrets
from datetime import timedelta

from django.db import models
from django.utils import timezone


def new_turn_token():
    return secrets.token_urlsafe(24)


class Turn(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Collecting messages"
        RUNNING = "running", "Handler running"
        AWAITING = "awaiting", "Waiting for an asynchronous reply"
        ANSWERED = "answered", "Answered"
        NO_REPLY = "no_reply", "Done without a reply"
        HANDED_OVER = "handed_over", "Handed over to a person"
        FAILED = "failed", "Failed"

    UNFINISHED = (Status.OPEN, Status.RUNNING, Status.AWAITING)

    company = models.ForeignKey("companies.Company", on_delete=models.CASCADE, related_name="turns")
    chat_jid = models.CharField(max_length=128)
    # The conversation's Chat (null only for messages stored before chats existed).
    chat = models.ForeignKey(
        "whatsapp.Chat", null=True, blank=True, on_delete=models.SET_NULL, related_name="turns"
    )
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.OPEN, db_index=True
    )
    first_message_at = models.DateTimeField()
    last_message_at = models.DateTimeField()
    # When the debounce window closes: min(last + debounce, first + cap).
    due_at = models.DateTimeField()
    message_count = models.PositiveIntegerField(default=0)
    # The running attempt, as for ProcessingJob (services.turns).
    attempts = models.PositiveIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=200, blank=True, default="")
    last_outcome = models.CharField(max_length=16, blank=True, default="")
    error = models.TextField(blank=True)
    handler = models.CharField(max_length=200, blank=True)
    result = models.TextField(blank=True)
    # An asynchronous reply (POST .../turns/{id}/reply) must carry it.
    token = models.CharField(max_length=64, default=new_turn_token)
    started_at = models.DateTimeField(null=True, blank=True)
    handler_seconds = models.FloatField(null=True, blank=True)
    replied_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    holding_sent_at = models.DateTimeField(null=True, blank=True)
    handed_over_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # One collecting turn per chat: two jobs of one burst racing to open
            # it find the other's row instead of opening a second one.
            models.UniqueConstraint(
                fields=["company", "chat_jid"],
                condition=models.Q(status="open"),
                name="uniq_open_turn_per_chat",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "due_at"]),
            models.Index(fields=["company", "chat_jid", "id"]),
        ]

    def __str__(self):
        return f"Turn {self.pk} of {self.chat_jid}: {self.get_status_display().lower()}"

    @staticmethod
    def window(first_at, last_at, debounce, cap):
        """When a turn whose messages span first_at..last_at stops collecting."""
        return min(last_at + timedelta(seconds=debounce), first_at + timedelta(seconds=cap))

    @property
    def is_finished(self):
        return self.status not in self.UNFINISHED

    @property
    def latency_seconds(self):
        """First message -> first reply queued (None without a reply)."""
        if self.replied_at is None:
            return None
        return (self.replied_at - self.first_message_at).total_seconds()

    @property
    def was_late(self):
        return self.holding_sent_at is not None or self.handed_over_at is not None
