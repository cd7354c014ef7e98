"""Conversations: the people a company talks to (Contact) and its threads (Chat).

A Contact is one person for one company, known by their phone JID, their
privacy id (LID) or both; the two unique constraints keep one row per
identity, and a LID whose phone is learned later is merged into the contact
of that phone (services.conversations). A Chat is one WhatsApp chat of the
company's session (one session per company): a 1:1 chat belongs to a contact,
a group chat to nobody. Every inbound and outbound message points at its chat,
so a thread is both tables ordered by time.

The bot is paused for a chat when a person took over (they wrote from the
phone, another linked device, the admin or the API as an operator) until
`bot_paused_until`; client messages then still get their one job, which
records "handled by a person" instead of running the handler.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone

PREVIEW_CHARS = 200


class Author(models.TextChoices):
    """Who wrote an outbound message."""

    HANDLER = "handler", "Handler (automatic reply)"
    API = "api", "API"
    OPERATOR = "operator", "Operator (admin or API, as a person)"
    PHONE = "phone", "Phone or another linked device"
    SYSTEM = "system", "System (opt-out confirmation)"


PERSON_AUTHORS = {Author.OPERATOR, Author.PHONE}


class Contact(models.Model):
    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="contacts"
    )
    phone = models.CharField(max_length=32, blank=True, db_index=True, help_text="E.164")
    phone_jid = models.CharField(max_length=128, blank=True)
    lid = models.CharField(max_length=128, blank=True, help_text="privacy id (…@lid)")
    push_name = models.CharField(max_length=200, blank=True)
    push_names = models.JSONField(
        default=list, blank=True, help_text="every name seen, oldest first"
    )
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now, db_index=True)
    opted_out_at = models.DateTimeField(null=True, blank=True)
    opted_out_how = models.CharField(max_length=200, blank=True)
    opt_outs = models.PositiveIntegerField(default=0, help_text="times this contact opted out")
    bot_paused_until = models.DateTimeField(null=True, blank=True)
    notes = models.TextField(blank=True)

    class Meta:
        ordering = ["-last_seen_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["company", "phone_jid"],
                condition=~Q(phone_jid=""),
                name="uniq_contact_phone_jid",
            ),
            models.UniqueConstraint(
                fields=["company", "lid"], condition=~Q(lid=""), name="uniq_contact_lid"
            ),
        ]

    def __str__(self):
        return self.push_name or self.phone or self.lid or self.phone_jid

    @property
    def is_opted_out(self):
        return self.opted_out_at is not None

    def with_name(self, name):
        """The push-name history with `name` added (a changed list, or None)."""
        if not name or name in self.push_names:
            return None
        return (list(self.push_names) + [name])[-20:]


class Chat(models.Model):
    company = models.ForeignKey("companies.Company", on_delete=models.CASCADE, related_name="chats")
    chat_jid = models.CharField(max_length=128)
    contact = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="chats"
    )
    is_group = models.BooleanField(default=False)
    title = models.CharField(max_length=200, blank=True)
    bot_paused_until = models.DateTimeField(null=True, blank=True)
    paused_by = models.CharField(max_length=16, choices=Author.choices, blank=True)
    needs_human = models.BooleanField(default=False)
    last_message_at = models.DateTimeField(null=True, blank=True)
    last_message_preview = models.CharField(max_length=PREVIEW_CHARS, blank=True)
    unread = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-needs_human", "-last_message_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["company", "chat_jid"], name="uniq_chat_per_company"),
        ]
        indexes = [models.Index(fields=["company", "last_message_at"])]

    def __str__(self):
        return self.title or self.chat_jid

    def bot_is_paused(self, now=None):
        now = now or timezone.now()
        until = [t for t in (self.bot_paused_until, self.contact_paused_until) if t]
        return any(t > now for t in until)

    @property
    def contact_paused_until(self):
        return self.contact.bot_paused_until if self.contact_id and self.contact else None

    def bot_state(self, now=None):
        """"paused" or "active": what the admin and the API show."""
        return "paused" if self.bot_is_paused(now) else "active"


def preview(text):
    return (text or "")[:PREVIEW_CHARS]
