"""Media of messages: the stored files, and each message's media with its state.

A `MediaFile` is one file in the media storage, stored once per company and
content (UniqueConstraint on company + SHA-256): the same photo sent twice is
one file. A `MessageMedia` is the media of one inbound or outbound message --
what WhatsApp said about it, where its download stands, and the file once
stored. The row of an inbound message's media is written in the same
transaction as the message, so a download is never forgotten; the download
itself happens later (never delaying the message, its job or its ack).
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from whatsapp.transport.kinds import MessageKind


class MediaFile(models.Model):
    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="media_files"
    )
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    mimetype = models.CharField(max_length=100, help_text="By content (libmagic)")
    storage_name = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)
    # The newest message that refers to the file (retention counts from it).
    last_used_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["company", "sha256"], name="uniq_media_file_per_company"
            )
        ]

    def __str__(self):
        return f"{self.sha256[:12]} ({self.mimetype}, {self.size} bytes)"

    @staticmethod
    def name_for(company_id, sha256):
        """Where the file of this content lives in the media storage."""
        return f"media/{int(company_id)}/{sha256[:2]}/{sha256}"


class MessageMedia(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "Waiting for download"
        DOWNLOADING = "downloading", "Downloading"
        STORED = "stored", "Stored"
        TOO_LARGE = "too_large", "Too large (not downloaded)"
        EXPIRED = "expired", "Expired on WhatsApp's servers"
        FAILED = "failed", "Failed"
        DELETED = "deleted", "Deleted (retention)"

    FINAL = (State.STORED, State.TOO_LARGE, State.EXPIRED, State.FAILED, State.DELETED)

    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="message_media"
    )
    inbound = models.OneToOneField(
        "whatsapp.InboundMessage",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="media",
    )
    outbound = models.OneToOneField(
        "whatsapp.OutboundMessage",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="media",
    )
    kind = models.CharField(max_length=16, choices=MessageKind.choices)
    declared_mimetype = models.CharField(max_length=100, blank=True)
    declared_size = models.BigIntegerField(default=0)
    file_name = models.CharField(max_length=255, blank=True)
    voice_note = models.BooleanField(default=False)
    # Inbound: the media part of the message (serialized waE2E.Message: direct
    # path, media key, hashes) that the worker's client downloads with.
    descriptor = models.BinaryField(blank=True, default=b"")
    # Outbound locations (kind "location"): latitude, longitude, name, address.
    location = models.JSONField(null=True, blank=True)
    state = models.CharField(
        max_length=16, choices=State.choices, default=State.PENDING, db_index=True
    )
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    file = models.ForeignKey(
        MediaFile, null=True, blank=True, on_delete=models.SET_NULL, related_name="uses"
    )
    created_at = models.DateTimeField(default=timezone.now)
    stored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "message media"
        constraints = [
            models.CheckConstraint(
                condition=Q(inbound__isnull=True) | Q(outbound__isnull=True),
                name="media_of_one_message",
            )
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self):
        return f"{self.kind} [{self.state}]"

    @property
    def final_state(self):
        """`stored`, `too_large`, `expired`, or `failed: why` (empty while pending)."""
        if self.state == self.State.FAILED:
            return f"failed: {self.error}"
        return self.state if self.state in self.FINAL else ""

    @property
    def mimetype(self):
        return self.file.mimetype if self.file_id else self.declared_mimetype

    @property
    def size(self):
        return self.file.size if self.file_id else self.declared_size
