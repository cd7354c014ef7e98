"""Media files: storing them once per company, downloading what clients send,
and deleting them when the company's retention says so.

Inbound: the message and its media row are written in one transaction
(`record_pending_media`, from the store path); the worker that owns the
company later claims due rows (`claim_due_media`), has its live client write
the bytes to a temporary file, and hands the file to `finish_download` (or the
failure to `download_failed`, which retries with backoff until
WHATSAPP_MEDIA["DOWNLOAD_MAX_ATTEMPTS"]). Nothing here holds a whole file in
memory: hashing and storing read 1 MiB at a time, and the storage API streams
(the filesystem copies chunks, S3 uploads in parts).
"""

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import magic
from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from whatsapp.models import backoff_delay
from whatsapp.models.media import MediaFile, MessageMedia
from whatsapp.transport.media import WHATSAPP_LIMITS, MediaRef

logger = logging.getLogger(__name__)
State = MessageMedia.State
CHUNK = 1024 * 1024
SNIFF_BYTES = 8192
CLAIM_SECONDS = 300  # a claimed download not finished by then is taken as dead


def media_storage():
    return storages["media"]


def media_limit(kind):
    """The largest file of `kind` we download (bytes)."""
    configured = settings.WHATSAPP_MEDIA.get("MAX_BYTES") or {}
    return int(configured.get(kind) or WHATSAPP_LIMITS.get(kind, 100 * 1024 * 1024))


def temp_dir():
    path = Path(settings.WHATSAPP_MEDIA["TEMP_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def new_temp_path(prefix="media-"):
    """A fresh temporary file path (the caller deletes it)."""
    fd, path = tempfile.mkstemp(prefix=prefix, dir=temp_dir())
    os.close(fd)
    return path


@dataclass(frozen=True)
class Inspected:
    sha256: str
    size: int
    mimetype: str


def inspect_file(path):
    """SHA-256, size and content type (libmagic, by content) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            if len(head) < SNIFF_BYTES:
                head += chunk[: SNIFF_BYTES - len(head)]
            digest.update(chunk)
            size += len(chunk)
    mimetype = magic.from_buffer(head, mime=True) if head else "application/x-empty"
    return Inspected(digest.hexdigest(), size, mimetype)


def store_file(company_id, path, inspected=None):
    """The company's MediaFile of the content at `path`, stored once per content:
    a second file with the same bytes is the same row and the same stored object."""
    inspected = inspected or inspect_file(path)
    existing = existing_file(company_id, inspected.sha256)
    if existing is not None:
        return existing
    return record_file(company_id, inspected, save_to_storage(company_id, path, inspected.sha256))


def existing_file(company_id, sha256):
    """The company's MediaFile with this content (marked used now), or None."""
    existing = MediaFile.objects.filter(company_id=company_id, sha256=sha256).first()
    if existing is not None:
        MediaFile.objects.filter(pk=existing.pk).update(last_used_at=timezone.now())
    return existing


def save_to_storage(company_id, path, sha256):
    """Copy the file into the media storage (streamed; no database): its name."""
    storage = media_storage()
    name = MediaFile.name_for(company_id, sha256)
    if storage.exists(name):
        return name
    with open(path, "rb") as fh:
        return storage.save(name, File(fh, name=name))


def record_file(company_id, inspected, saved):
    """The MediaFile row of a file saved as `saved` (another process may have
    recorded the same content meanwhile: then that row, and our copy goes)."""
    try:
        with transaction.atomic():
            return MediaFile.objects.create(
                company_id=company_id,
                sha256=inspected.sha256,
                size=inspected.size,
                mimetype=inspected.mimetype,
                storage_name=saved,
                last_used_at=timezone.now(),
            )
    except IntegrityError:
        if saved != MediaFile.name_for(company_id, inspected.sha256):
            media_storage().delete(saved)
        return MediaFile.objects.get(company_id=company_id, sha256=inspected.sha256)


# --- inbound -------------------------------------------------------------------------
def record_pending_media(company_id, message_pk, ref: MediaRef):
    """The media row of a just-stored inbound message (same transaction)."""
    return MessageMedia.objects.create(
        company_id=company_id,
        inbound_id=message_pk,
        kind=ref.kind,
        declared_mimetype=ref.mimetype,
        declared_size=ref.file_length,
        file_name=ref.file_name,
        voice_note=ref.voice_note,
        descriptor=ref.descriptor,
    )


@dataclass(frozen=True)
class ClaimedDownload:
    pk: int
    company_id: int
    kind: str
    descriptor: bytes
    max_bytes: int
    attempts: int


def _due(now):
    return Q(state=State.PENDING) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))


def claim_due_media(company_ids, limit=10, now=None):
    """Claim up to `limit` due downloads of these companies (inbound media whose
    download is pending and due, or claimed by a worker that did not finish in
    CLAIM_SECONDS). A declared size above the kind's limit is decided here:
    too_large, never downloaded."""
    now = now or timezone.now()
    if not company_ids:
        return []
    stale = Q(state=State.DOWNLOADING, claimed_until__lt=now)
    rows = list(
        MessageMedia.objects.filter(company_id__in=list(company_ids), inbound__isnull=False)
        .filter(_due(now) | stale)
        .order_by("next_attempt_at", "id")
        .values_list("pk", "company_id", "kind", "descriptor", "declared_size", "attempts")[
            :limit
        ]
    )
    claimed = []
    for pk, company_id, kind, descriptor, declared, attempts in rows:
        max_bytes = media_limit(kind)
        if declared and declared > max_bytes:
            MessageMedia.objects.filter(pk=pk).update(
                state=State.TOO_LARGE,
                error=f"{declared} bytes; the limit for {kind} is {max_bytes}",
                claimed_until=None,
            )
            continue
        won = (
            MessageMedia.objects.filter(pk=pk)
            .filter(_due(now) | stale)
            .update(state=State.DOWNLOADING, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
        )
        if won:
            claimed.append(
                ClaimedDownload(pk, company_id, kind, bytes(descriptor), max_bytes, attempts)
            )
    return claimed


def companies_with_due_media(company_ids, now=None):
    now = now or timezone.now()
    return set(
        MessageMedia.objects.filter(company_id__in=list(company_ids), inbound__isnull=False)
        .filter(_due(now) | Q(state=State.DOWNLOADING, claimed_until__lt=now))
        .values_list("company_id", flat=True)
        .distinct()
    )


def finish_download(media_pk, path):
    """Store the downloaded file at `path` and mark the media stored (all in the
    calling thread; the worker splits it: mark_stored)."""
    media = MessageMedia.objects.get(pk=media_pk)
    return mark_stored(media_pk, store_file(media.company_id, path))


def mark_stored(media_pk, stored):
    MessageMedia.objects.filter(pk=media_pk).update(
        state=State.STORED,
        file=stored,
        error="",
        claimed_until=None,
        stored_at=timezone.now(),
        attempts=F("attempts") + 1,
    )
    return stored


def download_failed(media_pk, error, reason="failed", permanent=False, rng=None):
    """Record a failed download: expired and too_large are final at once; other
    failures are retried with backoff (full jitter) until the attempts run out."""
    media = MessageMedia.objects.get(pk=media_pk)
    attempts = media.attempts + 1
    conf = settings.WHATSAPP_MEDIA
    text = str(error)[:2000]
    if reason == "expired":
        state, due = State.EXPIRED, None
    elif reason == "too_large":
        state, due = State.TOO_LARGE, None
    elif permanent or attempts >= conf["DOWNLOAD_MAX_ATTEMPTS"]:
        state, due = State.FAILED, None
        if not permanent:
            text = f"{text} (gave up after {attempts} attempts)"
    else:
        delay = backoff_delay(attempts - 1, conf["BACKOFF_BASE"], conf["BACKOFF_CAP"],
                              **({"rng": rng} if rng else {}))
        state, due = State.PENDING, timezone.now() + timedelta(seconds=max(delay, 0.5))
    MessageMedia.objects.filter(pk=media_pk).update(
        state=state, error=text, attempts=attempts, next_attempt_at=due, claimed_until=None
    )
    return state


def release_claimed_media(media_pk):
    """A claimed download that did not run (the client went away): due again now."""
    MessageMedia.objects.filter(pk=media_pk, state=State.DOWNLOADING).update(
        state=State.PENDING, claimed_until=None
    )


# --- reading ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaReference:
    """What a handler sees of a message's media: kind, type (by content once
    stored), size, state, and `open()` for the bytes (a file object)."""

    id: int
    kind: str
    mimetype: str
    size: int
    state: str
    file_name: str = ""
    voice_note: bool = False
    sha256: str = ""

    @property
    def available(self):
        return self.state == State.STORED

    def open(self):
        return open_media(MessageMedia.objects.select_related("file").get(pk=self.id))


def media_reference(message):
    """The MediaReference of an inbound or outbound message, or None."""
    field = "inbound" if message._meta.model_name == "inboundmessage" else "outbound"
    media = MessageMedia.objects.select_related("file").filter(**{field: message}).first()
    if media is None:
        return None
    return MediaReference(
        id=media.pk,
        kind=media.kind,
        mimetype=media.mimetype,
        size=media.size,
        state=media.state,
        file_name=media.file_name,
        voice_note=media.voice_note,
        sha256=media.file.sha256 if media.file_id else "",
    )


def open_media(media):
    """The stored bytes of a MessageMedia (a file object; the caller closes it)."""
    if media.file_id is None:
        raise FileNotFoundError(f"media {media.pk} has no stored file ({media.state})")
    return media_storage().open(media.file.storage_name, "rb")


def download_url(media):
    """A short-lived signed URL when the storage gives one (S3), else None
    (the caller streams the file itself)."""
    storage = media_storage()
    if getattr(storage, "querystring_auth", False):
        return storage.url(media.file.storage_name)
    return None


# --- retention and usage --------------------------------------------------------------
def delete_expired_media(now=None):
    """Delete the files of media older than their company's retention
    (Company.media_retention_days; 0 keeps them). The message rows stay; their
    media rows become `deleted` and lose the link. Returns files deleted."""
    from companies.models import Company

    now = now or timezone.now()
    storage = media_storage()
    deleted = 0
    for company_id, days in Company.objects.filter(media_retention_days__gt=0).values_list(
        "pk", "media_retention_days"
    ):
        cutoff = now - timedelta(days=days)
        for media_file in MediaFile.objects.filter(company_id=company_id, last_used_at__lt=cutoff):
            with transaction.atomic():
                MessageMedia.objects.filter(file=media_file).update(
                    state=State.DELETED, file=None, error=f"deleted after {days} days (retention)"
                )
                name = media_file.storage_name
                media_file.delete()
            try:
                storage.delete(name)
            except OSError:
                logger.warning("could not delete media file %s", name, exc_info=True)
            deleted += 1
    return deleted


def storage_used():
    """{company_id: (files, bytes)} of every company with stored media."""
    rows = MediaFile.objects.values("company_id").annotate(files=Count("id"), total=Sum("size"))
    return {row["company_id"]: (row["files"], row["total"] or 0) for row in rows}
