"""Webhooks: endpoints a company registers, and the delivery of each event to them.

An event (a message received, an outbound status change, a session state
change, a new QR code) becomes one WebhookDelivery row per subscribed
endpoint, in the transaction that caused it. The row carries the stable event
id receivers dedupe on; every HTTP attempt is a WebhookAttempt row. The rows
are the truth: a lost queue task is picked up again by the dispatcher.
"""

import hashlib
import hmac
import random
import secrets
import uuid
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from .sessions import backoff_delay


class WebhookEvent(models.TextChoices):
    MESSAGE_RECEIVED = "message.received", "Message received"
    MESSAGE_STATUS = "message.status", "Outbound message status changed"
    SESSION_STATE_CHANGED = "session.state_changed", "Session state changed"
    SESSION_QR_UPDATED = "session.qr_updated", "Session QR code updated"
    MESSAGE_SENT_BY_PERSON = "message.sent_by_person", "A person wrote in a chat (phone, operator)"
    CHAT_PAUSED = "chat.paused", "The bot was paused in a chat"
    CHAT_RESUMED = "chat.resumed", "The bot resumed in a chat"
    CHAT_NEEDS_HUMAN = "chat.needs_human", "A client wrote while the bot is paused"


SECRET_PREFIX = "whsec_"


def generate_webhook_secret():
    return f"{SECRET_PREFIX}{secrets.token_urlsafe(32)}"


def validate_event_list(value):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError("events must be a list of event names")
    unknown = sorted(set(value) - set(WebhookEvent.values))
    if unknown:
        raise ValidationError(
            f"unknown event(s) {', '.join(unknown)}; choose from {', '.join(WebhookEvent.values)}"
        )


def sign_payload(secret, timestamp, body):
    """`sha256=<hex>` of HMAC-SHA256(secret, f"{timestamp}.{body}") (body as bytes)."""
    if isinstance(body, str):
        body = body.encode()
    message = str(int(timestamp)).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(signing_secrets, timestamp, body):
    """The X-Aiadmin-Signature value: one `sha256=<hex>` per secret, comma-separated
    (the current secret first; two only while a rotated-out secret is still valid)."""
    return ",".join(sign_payload(secret, timestamp, body) for secret in signing_secrets)


def mask_secret(secret):
    """What the admin shows of a secret after it was shown once: its first 4
    characters after the prefix, e.g. `whsec_AbCd…`."""
    if not secret:
        return ""
    visible = len(SECRET_PREFIX) + 4 if secret.startswith(SECRET_PREFIX) else 4
    return f"{secret[:visible]}…"


class WebhookEndpoint(models.Model):
    """A URL of a company that receives events (and, optionally, handles messages)."""

    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField("URL", max_length=500)
    description = models.CharField(max_length=200, blank=True)
    # Shown once (when created or rotated), then only masked; never in a form.
    secret = models.CharField(
        max_length=100,
        default=generate_webhook_secret,
        editable=False,
        help_text="Signs every request (X-Aiadmin-Signature); share it with the receiver.",
    )
    # After a rotation the previous secret also signs, until it expires.
    previous_secret = models.CharField(max_length=100, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    events = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_event_list],
        help_text="Event names to receive; empty = all events.",
    )
    is_active = models.BooleanField(default=True)
    is_message_handler = models.BooleanField(
        default=False,
        help_text="Used by the whatsapp.handlers.webhook_reply handler: inbound messages are "
        'POSTed here and a JSON {"reply": "..."} answer is sent back to the sender.',
    )
    # Outcome of the latest request, written back by the delivery service.
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["company", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["company"],
                condition=models.Q(is_message_handler=True),
                name="uniq_message_handler_endpoint_per_company",
            ),
        ]

    def __str__(self):
        return f"{self.company}: {self.url}"

    def wants(self, event_type):
        return self.is_active and (not self.events or event_type in self.events)

    def previous_secret_valid(self, now=None):
        return bool(
            self.previous_secret
            and self.previous_secret_expires_at
            and (now or timezone.now()) < self.previous_secret_expires_at
        )

    def signing_secrets(self, now=None):
        """The secrets a request is signed with at `now`: the current one, plus the
        rotated-out one while its overlap lasts."""
        if self.previous_secret_valid(now):
            return [self.secret, self.previous_secret]
        return [self.secret]

    @property
    def secret_hint(self):
        return mask_secret(self.secret)


class WebhookDelivery(models.Model):
    """One event for one endpoint, retried until delivered or dead-lettered."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERING = "delivering", "Delivering"
        RETRYING = "retrying", "Waiting to retry"
        SUCCEEDED = "succeeded", "Delivered"
        DEAD = "dead", "Dead letter (gave up)"

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    event_id = models.UUIDField(default=uuid.uuid4, editable=False)
    event_type = models.CharField(max_length=40, choices=WebhookEvent.choices)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    # Attempts since the delivery was (re)queued; a replay starts a new budget.
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event_id"], name="uniq_webhook_event_per_endpoint"
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self):
        return f"{self.event_type} {self.event_id} -> {self.endpoint_id} [{self.status}]"

    @property
    def is_final(self):
        return self.status in {self.Status.SUCCEEDED, self.Status.DEAD}

    def envelope(self):
        """The JSON document POSTed to the endpoint."""
        return {
            "id": str(self.event_id),
            "type": self.event_type,
            "created_at": self.created_at.isoformat(),
            "company_id": self.company_id,
            "data": self.payload,
        }


def next_attempt_time(attempts, base, cap, now=None, rng=random, floor=1.0):
    """When to try again after `attempts` failed attempts: exponential backoff with
    full jitter (see backoff_delay), never sooner than `floor` seconds."""
    now = now or timezone.now()
    delay = max(backoff_delay(max(attempts - 1, 0), base, cap, rng=rng), floor)
    return now + timedelta(seconds=delay)


class WebhookAttempt(models.Model):
    """One HTTP request of a delivery, successful or not."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    duration_ms = models.PositiveIntegerField(default=0)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    response_excerpt = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self):
        outcome = self.status_code or self.error[:40] or "?"
        return f"attempt {self.number} of {self.delivery_id}: {outcome}"
