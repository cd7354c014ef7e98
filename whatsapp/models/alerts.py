"""Incidents: connection problems the alert check found, one row per open incident.

The partial unique constraint on (subject, kind) while unresolved is what
prevents an alert storm: however often -- and however concurrently -- the
check runs, only the run whose INSERT wins opens the incident and sends its
one alert; only the run whose conditional UPDATE resolves it sends the one
recovery notice.
"""

from django.db import models
from django.utils import timezone


class IncidentKind(models.TextChoices):
    CONNECTION_LOST = "connection_lost", "Connection lost"
    FLAPPING = "flapping", "Connection flapping"
    CONFLICT = "conflict", "Taken over by another device"
    LOGGED_OUT = "logged_out", "Logged out"
    BANNED = "banned", "Temporarily banned"
    WORKER_DEAD = "worker_dead", "Worker stopped heartbeating"
    ASSISTANT_BUDGET = "assistant_budget", "AI assistant: monthly token budget reached"
    ASSISTANT_FAILING = "assistant_failing", "AI assistant: model failing"
    # Opened by the assistant pipeline (services.turns), resolved by a person:
    # the alert check neither opens nor resolves these.
    HANDED_OVER = "handed_over", "Chat handed over to a person"
    NUMBER_PAUSED = "number_paused", "Sending paused (rate limit)"


# Kinds the alert check leaves alone (opened and resolved elsewhere).
MANUAL_KINDS = (IncidentKind.HANDED_OVER, IncidentKind.NUMBER_PAUSED)


# What services.alerts writes to notify_error when no channel is configured.
NOT_SENT_ANYWHERE = "not sent anywhere: no ADMINS and no chat webhook are configured"


class Incident(models.Model):
    company = models.ForeignKey(
        "companies.Company",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="incidents",
    )
    worker_id = models.CharField(max_length=64, blank=True)
    # "company:<pk>" or "worker:<worker_id>": what the incident is about.
    subject = models.CharField(max_length=100)
    kind = models.CharField(max_length=24, choices=IncidentKind.choices)
    summary = models.CharField(max_length=300)
    details = models.TextField(blank=True)
    opened_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_seen_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Notification bookkeeping: set when claimed for sending, cleared if sending failed
    # (the next check retries), so each notice goes out once.
    alert_sent_at = models.DateTimeField(null=True, blank=True)
    recovery_sent_at = models.DateTimeField(null=True, blank=True)
    notify_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["subject", "kind"],
                condition=models.Q(resolved_at__isnull=True),
                name="uniq_open_incident_per_subject_kind",
            ),
        ]

    def __str__(self):
        return f"{self.get_kind_display()}: {self.summary}"

    @property
    def is_open(self):
        return self.resolved_at is None

    def duration(self, now=None):
        end = self.resolved_at or now or timezone.now()
        return end - self.opened_at

    def delivery_status(self, field="alert_sent_at"):
        """Whether the alert (or with field="recovery_sent_at", the recovery notice)
        reached anyone, in words: never "sent" when nobody was told."""
        sent_at = getattr(self, field)
        if sent_at is None:
            if field == "recovery_sent_at" and self.is_open:
                return "-"
            if self.notify_error:
                return f"failed: {self.notify_error} (tried again at the next check)"
            return "not sent yet"
        if self.notify_error.startswith(NOT_SENT_ANYWHERE[:17]):
            return "not sent anywhere (no ADMINS, no chat webhook configured)"
        if self.notify_error:
            return f"delivered in part; failed: {self.notify_error}"
        return "delivered"

    def alert_text(self):
        return f"[aiadmin] OPEN {self.get_kind_display()}: {self.summary}"

    def recovery_text(self, now=None):
        minutes = int(self.duration(now).total_seconds() // 60)
        return (
            f"[aiadmin] RESOLVED {self.get_kind_display()}: {self.summary} (lasted {minutes} min)"
        )
