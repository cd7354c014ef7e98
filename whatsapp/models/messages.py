"""Messages in and out, and the processing job of each inbound message.

The unique constraint on (company, wa_message_id) is the dedupe: whatever
delivers a message and however often, only one row -- and so one job -- exists.
"""

import secrets

from django.db import models
from django.utils import timezone

from whatsapp.transport.kinds import MessageKind

from .conversations import Author

HANDLED_BY_PERSON = "handled by a person (the bot is paused in this chat)"
OPTED_OUT = "not answered: the client opted out"
OPT_OUT_CONFIRMED = "the client opted out (stop word); confirmation queued"


class InboundMessage(models.Model):
    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="inbound_messages"
    )
    wa_message_id = models.CharField(max_length=128)
    chat_jid = models.CharField(max_length=128)
    sender_jid = models.CharField(max_length=128)
    sender_phone = models.CharField(max_length=32, blank=True, db_index=True)
    sender_lid = models.CharField(max_length=128, blank=True)
    push_name = models.CharField(max_length=200, default="Client")
    kind = models.CharField(max_length=16, choices=MessageKind.choices, default=MessageKind.TEXT)
    text = models.TextField(blank=True)
    is_group = models.BooleanField(default=False)
    sent_at = models.DateTimeField(help_text="WhatsApp's timestamp of the message")
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Further deliveries of the same message, blocked by the unique constraint.
    redeliveries = models.PositiveIntegerField(default=0)
    chat = models.ForeignKey(
        "whatsapp.Chat", null=True, blank=True, on_delete=models.SET_NULL, related_name="inbound"
    )
    contact = models.ForeignKey(
        "whatsapp.Contact",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="inbound",
    )
    # Retention cleared the text (the row, and so the counts, stay).
    body_deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["company", "wa_message_id"], name="uniq_inbound_message_per_company"
            ),
        ]
        indexes = [
            models.Index(fields=["company", "received_at"]),
            models.Index(fields=["chat", "received_at", "id"]),
        ]

    def __str__(self):
        return f"{self.wa_message_id} from {self.sender_phone or self.sender_jid}"

    @property
    def has_content(self):
        """Whether the client said or sent something: text, or media, a location,
        a contact... An empty text or an unknown message kind has none (nothing
        to answer, not even for a rule that answers anything)."""
        return bool(self.text.strip()) or self.kind not in {MessageKind.TEXT, MessageKind.OTHER}

    def job_verdict(self):
        """The note its processing job records instead of running the handler
        -- a person has the chat, or the client opted out -- or "" (run it)."""
        contact = self.contact if self.contact_id else None
        if contact is not None and contact.is_opted_out:
            if self.company.is_stop_word(self.text):
                return OPT_OUT_CONFIRMED
            return OPTED_OUT
        if self.chat_id is None:
            return ""
        if contact is not None and self.company.is_start_word(self.text):
            return ""
        if self.chat.bot_is_paused(self.received_at):
            return HANDLED_BY_PERSON
        return ""

    @property
    def reply_jid(self):
        """Where a reply goes: the group chat for groups, else the sender's chat."""
        return self.chat_jid


class ProcessingJob(models.Model):
    """The one processing job of an inbound message."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending (stored, not yet enqueued)"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        # Joined to a turn (services.turns): finished by the turn's outcome.
        IN_TURN = "in_turn", "In a turn (answered with its chat's turn)"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Outcome(models.TextChoices):
        """How the previous attempt ended (what a retry is told)."""

        NONE = "", "No previous attempt"
        FAILED = "failed", "Failed (the handler raised)"
        TIMED_OUT = "timed_out", "Timed out"
        DIED = "died", "Died (its process is gone or its lease expired)"

    message = models.OneToOneField(InboundMessage, on_delete=models.CASCADE, related_name="job")
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    enqueue_count = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=64, blank=True)
    handler = models.CharField(max_length=200, blank=True)
    result = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The running attempt's lease: past it, the attempt is taken as dead and the
    # job runs again (as a retry). It outlasts the task timeout, after which
    # django-q2 kills a worker, so a live attempt never loses it.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The process running the attempt ("<host key>|<pid>|<start ticks>", see
    # services.local_processes): on its machine, its death is seen at once.
    claimed_by = models.CharField(max_length=200, blank=True, db_default="")
    last_outcome = models.CharField(
        max_length=16, choices=Outcome.choices, blank=True, db_default=""
    )
    # The turn this message was answered in (turn handlers only).
    turn = models.ForeignKey(
        "whatsapp.Turn", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )

    def __str__(self):
        return f"Job of message {self.message_id}: {self.get_status_display().lower()}"

    @property
    def latency_seconds(self):
        if self.finished_at and self.message_id:
            return (self.finished_at - self.message.received_at).total_seconds()
        return None


class OutboundMessage(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        READ = "read", "Read"
        FAILED = "failed", "Failed"

    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="outbound_messages"
    )
    to_jid = models.CharField(max_length=128)
    to_phone = models.CharField(max_length=32, blank=True)
    # Given as a phone number and not yet looked up on WhatsApp: the worker asks
    # (RecipientLookup) and sends to the JID WhatsApp answers, before the first send.
    resolve_recipient = models.BooleanField(default=False)
    text = models.TextField()
    idempotency_key = models.CharField(max_length=128)
    # At most one automatic reply per inbound message.
    in_reply_to = models.OneToOneField(
        InboundMessage, null=True, blank=True, on_delete=models.SET_NULL, related_name="reply"
    )
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    wa_message_id = models.CharField(max_length=128, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    chat = models.ForeignKey(
        "whatsapp.Chat", null=True, blank=True, on_delete=models.SET_NULL, related_name="outbound"
    )
    contact = models.ForeignKey(
        "whatsapp.Contact",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="outbound",
    )
    author = models.CharField(
        max_length=16, choices=Author.choices, default=Author.API, db_default=Author.API
    )
    body_deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["company", "idempotency_key"], name="uniq_outbound_idempotency_key"
            ),
        ]
        indexes = [
            models.Index(fields=["company", "status", "next_attempt_at"]),
            models.Index(fields=["chat", "created_at", "id"]),
        ]

    def __str__(self):
        return f"to {self.to_phone or self.to_jid} [{self.status}]"

    @staticmethod
    def new_wa_message_id():
        """A message id as whatsmeow's GenerateMessageID makes them (3EB0 + 18 hex
        digits). Chosen by us before the first attempt and kept for every resend:
        a recipient ignores a second message with an id it already has."""
        return "3EB0" + secrets.token_hex(9).upper()

    @property
    def is_final(self):
        return self.status in {self.Status.SENT, self.Status.DELIVERED, self.Status.READ,
                               self.Status.FAILED}


class AutoReplyRule(models.Model):
    """Keyword rules of the default handler: the first active match replies."""

    class Match(models.TextChoices):
        CONTAINS = "contains", "Text contains the keyword"
        EXACT = "exact", "Text equals the keyword"
        ANY = "any", "Any message (fallback)"

    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="auto_reply_rules"
    )
    match = models.CharField(max_length=16, choices=Match.choices, default=Match.CONTAINS)
    keyword = models.CharField(max_length=200, blank=True)
    reply_text = models.TextField()
    priority = models.IntegerField(default=100, help_text="Lower runs first.")
    is_active = models.BooleanField(default=True)
    reply_in_groups = models.BooleanField(default=False)

    class Meta:
        ordering = ["company", "priority", "id"]

    def __str__(self):
        return f"{self.get_match_display()}: {self.keyword!r}"

    def matches(self, text):
        if not self.is_active:
            return False
        if self.match == self.Match.ANY:
            return True
        if not self.keyword:
            return False
        haystack = (text or "").casefold().strip()
        needle = self.keyword.casefold().strip()
        if self.match == self.Match.EXACT:
            return haystack == needle
        return needle in haystack

    def render(self, message):
        """The reply text; `{name}` becomes the sender's push name."""
        return self.reply_text.replace("{name}", message.push_name or "Client")
