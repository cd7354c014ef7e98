"""Queueing media and locations to send.

A file comes as an upload or as an https URL the server fetches itself -- under
the webhooks' address rules (every address a host resolves to must be public,
the connection goes to the checked address, every redirect is checked again),
with a timeout and the kind's size limit while streaming. The file is checked
before anything is queued: its size against WhatsApp's limit for the kind, its
content type by its content (libmagic; what the sender claims does not count).
It is then stored once per company (services.media.store_file) and queued as
an OutboundMessage (the caption is its text) with its MessageMedia; the worker
sends it like a text (services.sending claims it, the session sends it).
"""

import ipaddress
import os
import shutil
import socket
import uuid
from urllib.parse import urljoin

import urllib3
from django.conf import settings
from django.db import IntegrityError, transaction

from companies.phones import default_region
from whatsapp.models import OutboundMessage
from whatsapp.models.media import MessageMedia
from whatsapp.transport.jids import recipient_jid
from whatsapp.transport.kinds import MessageKind
from whatsapp.transport.media import (
    ALLOWED_TYPES,
    MEDIA_KINDS,
    WHATSAPP_LIMITS,
    Location,
    OutboundMedia,
)

from .media import CHUNK, inspect_file, media_storage, new_temp_path, store_file
from .outbound import IdempotencyConflict, InvalidOutbound
from .webhook_http import (
    UnsafeWebhookURL,
    connection_pool,
    is_refused_address,
    resolve_webhook_target,
)
from .worker_hints import notify_owner

MAX_CAPTION = 1024  # WhatsApp's caption limit
MAX_FILE_NAME = 240


class MediaTooLarge(InvalidOutbound):
    """Over WhatsApp's limit for the kind (the API answers 413)."""


class MediaFetchFailed(InvalidOutbound):
    """The URL could not be fetched (refused, timed out, truncated, HTTP error)."""


def kind_for_type(mimetype):
    """The kind a file of this (detected) type is sent as when none is given."""
    top = mimetype.split("/")[0]
    if mimetype == "image/webp":
        return MessageKind.STICKER
    if top in {"image", "video", "audio"} and mimetype in ALLOWED_TYPES[top]:
        return top
    return MessageKind.DOCUMENT


def max_upload_bytes():
    """The largest file any kind may be (the request is refused above it at once)."""
    return max(WHATSAPP_LIMITS.values())


def check_media_file(path, kind=None, voice_note=False):
    """(kind, Inspected) of the file at `path`, or raise MediaTooLarge /
    InvalidOutbound saying what is wrong. `kind` None: from the content."""
    inspected = inspect_file(path)
    if inspected.size == 0:
        raise InvalidOutbound("the file is empty")
    kind = kind or kind_for_type(inspected.mimetype)
    if kind not in MEDIA_KINDS:
        raise InvalidOutbound(f"kind must be one of {', '.join(sorted(MEDIA_KINDS))}")
    limit = WHATSAPP_LIMITS[kind]
    if inspected.size > limit:
        raise MediaTooLarge(
            f"the file is {inspected.size} bytes; WhatsApp takes at most {limit} bytes "
            f"for {kind} messages"
        )
    allowed = ALLOWED_TYPES[kind]
    if allowed is not None and inspected.mimetype not in allowed:
        raise InvalidOutbound(
            f"the file's content is {inspected.mimetype}; a {kind} must be "
            f"{' or '.join(allowed)} (checked by content, not by its name or declared type)"
        )
    if voice_note and (kind != MessageKind.AUDIO or inspected.mimetype != "audio/ogg"):
        raise InvalidOutbound("a voice note must be an audio file in OGG (Opus)")
    return kind, inspected


def fetch_media_url(url, max_bytes=None, timeout=None, resolve=socket.getaddrinfo,
                    schemes=("https",), public=frozenset()):
    """Download `url` into a temporary file (its path; the caller deletes it),
    streamed. Raises MediaFetchFailed / MediaTooLarge with the reason.

    `public`: addresses taken as public although they are not (tests play the
    internet on loopback); every other address is judged as for webhooks."""
    conf = settings.WHATSAPP_MEDIA
    timeout = conf["FETCH_TIMEOUT"] if timeout is None else timeout
    max_bytes = max_bytes or max_upload_bytes()
    if not str(url).lower().startswith(tuple(f"{s}://" for s in schemes)):
        raise MediaFetchFailed(f"the media URL must start with {' or '.join(schemes)}://")
    for _hop in range(conf["FETCH_MAX_REDIRECTS"] + 1):
        try:
            target = _checked_target(url, resolve, public)
        except UnsafeWebhookURL as exc:
            raise MediaFetchFailed(f"media URL refused: {exc}") from None
        response, pool = _open(target, timeout)
        try:
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                if not location:
                    raise MediaFetchFailed(f"HTTP {response.status} without a Location")
                url = urljoin(url, location)
                if not url.lower().startswith(("http://", "https://")):
                    raise MediaFetchFailed("media URL redirects to a non-HTTP address")
                continue
            if response.status != 200:
                raise MediaFetchFailed(f"the media URL answered HTTP {response.status}")
            return _save(response, max_bytes, timeout)
        finally:
            response.release_conn()
            pool.close()
    raise MediaFetchFailed(f"more than {conf['FETCH_MAX_REDIRECTS']} redirects")


def _checked_target(url, resolve, public):
    """resolve_webhook_target with the webhooks' address rule (is_refused_address)."""
    target = resolve_webhook_target(url, allow_private=True, resolve=resolve)
    if settings.WHATSAPP_WEBHOOKS["ALLOW_PRIVATE"]:
        return target
    for address in target.addresses:
        if address not in public and is_refused_address(ipaddress.ip_address(address)):
            raise UnsafeWebhookURL(
                f"{target.host} resolves to {address}, a private/loopback/link-local or "
                "reserved address; media URLs must be public (as webhooks)"
            )
    return target


def _open(target, timeout):
    last = None
    for address in target.addresses:
        pool = connection_pool(target, address, timeout)
        try:
            response = pool.urlopen(
                "GET",
                target.request_uri,
                headers={"Host": target.host_header, "User-Agent": "aiadmin-media/1"},
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
            return response, pool
        except urllib3.exceptions.NewConnectionError as exc:
            pool.close()
            last = exc
            continue
        except urllib3.exceptions.TimeoutError:
            pool.close()
            raise MediaFetchFailed(f"fetching the media URL timed out after {timeout:g}s") from None
        except urllib3.exceptions.HTTPError as exc:
            pool.close()
            raise MediaFetchFailed(f"fetching the media URL failed: {exc}") from None
    raise MediaFetchFailed(f"could not connect to the media URL: {last}")


def _save(response, max_bytes, timeout):
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise MediaTooLarge(f"the file is {declared} bytes; the limit is {max_bytes}")
    path = new_temp_path("fetch-")
    size = 0
    try:
        with open(path, "wb") as fh:
            for chunk in response.stream(CHUNK, decode_content=False):
                size += len(chunk)
                if size > max_bytes:
                    raise MediaTooLarge(f"the file is larger than the limit of {max_bytes} bytes")
                fh.write(chunk)
    except urllib3.exceptions.ProtocolError as exc:
        os.unlink(path)
        raise MediaFetchFailed(
            f"the media URL's file is truncated (got {size} of {declared} bytes): {exc}"
        ) from None
    except urllib3.exceptions.TimeoutError:
        os.unlink(path)
        raise MediaFetchFailed(f"fetching the media URL timed out after {timeout:g}s") from None
    except BaseException:
        os.unlink(path)
        raise
    return path


# --- queueing ---------------------------------------------------------------------------
def queue_outbound_media(company_id, to, path, *, kind=None, caption="", file_name="",
                         voice_note=False, idempotency_key=None):
    """Check, store and queue the file at `path` (the caller owns and deletes
    `path`). Returns (message, created); raises InvalidOutbound, MediaTooLarge,
    IdempotencyConflict."""
    jid, phone = _recipient(to)
    caption = str(caption or "")
    if len(caption) > MAX_CAPTION:
        raise InvalidOutbound(
            f"the caption is {len(caption)} characters; the limit is {MAX_CAPTION}"
        )
    file_name = os.path.basename(str(file_name or ""))[:MAX_FILE_NAME]
    kind, inspected = check_media_file(path, kind, voice_note)
    if kind in (MessageKind.AUDIO, MessageKind.STICKER) and caption:
        raise InvalidOutbound(f"a {kind} message has no caption")
    stored = store_file(company_id, path, inspected)
    media = {
        "kind": kind,
        "file": stored,
        "declared_mimetype": inspected.mimetype,
        "declared_size": inspected.size,
        "file_name": file_name,
        "voice_note": bool(voice_note),
        "state": MessageMedia.State.STORED,
    }
    return _queue(company_id, jid, phone, caption, media, idempotency_key)


def queue_outbound_location(company_id, to, latitude, longitude, name="", address="",
                            idempotency_key=None):
    jid, phone = _recipient(to)
    try:
        latitude, longitude = float(latitude), float(longitude)
    except (TypeError, ValueError):
        raise InvalidOutbound("latitude and longitude must be numbers") from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise InvalidOutbound("latitude must be within ±90 and longitude within ±180")
    place = {"latitude": latitude, "longitude": longitude, "name": str(name or "")[:200],
             "address": str(address or "")[:500]}
    media = {"kind": MessageKind.LOCATION, "location": place, "state": MessageMedia.State.STORED}
    return _queue(company_id, jid, phone, "", media, idempotency_key)


def _recipient(to):
    try:
        return recipient_jid(to, default_region())
    except ValueError as exc:
        raise InvalidOutbound(f"invalid recipient: {exc}") from None


def _same(existing, jid, caption, media):
    other = getattr(existing, "media", None)
    if other is None or existing.to_jid != jid or existing.text != caption:
        return False
    if other.kind != media["kind"] or other.location != media.get("location"):
        return False
    return other.file_id == (media["file"].pk if media.get("file") else None)


def _queue(company_id, jid, phone, caption, media, idempotency_key):
    key = idempotency_key or f"auto:{uuid.uuid4().hex}"
    if len(key) > 128:
        raise InvalidOutbound("idempotency key is longer than 128 characters")
    with transaction.atomic():
        try:
            with transaction.atomic():
                message = OutboundMessage.objects.create(
                    company_id=company_id, to_jid=jid, to_phone=phone, text=caption,
                    idempotency_key=key,
                )
                MessageMedia.objects.create(company_id=company_id, outbound=message, **media)
        except IntegrityError:
            existing = (
                OutboundMessage.objects.select_related("media")
                .filter(company_id=company_id, idempotency_key=key)
                .first()
            )
            if existing is None:
                raise
            if not _same(existing, jid, caption, media):
                raise IdempotencyConflict(existing) from None
            return existing, False
        transaction.on_commit(
            lambda: notify_owner(company_id, "message.send", outbound_id=message.pk)
        )
    return message, True


# --- sending (the worker) -----------------------------------------------------------
def outbound_payload(media_id):
    """What the client sends for this media row: a Location, or (OutboundMedia
    without a path yet, the stored file's name)."""
    media = MessageMedia.objects.select_related("file", "outbound").get(pk=media_id)
    if media.kind == MessageKind.LOCATION:
        place = media.location or {}
        return Location(place.get("latitude", 0.0), place.get("longitude", 0.0),
                        place.get("name", ""), place.get("address", ""))
    if media.file is None:
        raise FileNotFoundError(f"media {media_id} has no stored file ({media.state})")
    spec = OutboundMedia(
        kind=media.kind, path="", mimetype=media.file.mimetype, size=media.file.size,
        file_name=media.file_name, caption=media.outbound.text if media.outbound else "",
        voice_note=media.voice_note,
    )
    return spec, media.file.storage_name


def local_copy(storage_name):
    """(path, is_temporary) of a stored file on this machine: the file itself on
    the filesystem storage, else a streamed temporary copy (S3)."""
    storage = media_storage()
    try:
        return storage.path(storage_name), False
    except NotImplementedError:
        pass
    path = new_temp_path("send-")
    with storage.open(storage_name, "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    return path, True
