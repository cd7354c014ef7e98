"""Media of WhatsApp messages as plain values: what a message carries, what to send.

normalize.py finds the media part of a message (`media_ref`); the store path
keeps its `descriptor` (the media part as serialized waE2E.Message bytes:
direct path, media key, hashes), and a worker later hands that descriptor back
to its client's `download_media`. Nothing here touches models or storage.
"""

from dataclasses import dataclass

from .base import TransportError
from .kinds import MessageKind

# The media parts of a waE2E.Message, by field name.
MEDIA_FIELDS = (
    ("imageMessage", MessageKind.IMAGE),
    ("videoMessage", MessageKind.VIDEO),
    ("ptvMessage", MessageKind.VIDEO),
    ("documentMessage", MessageKind.DOCUMENT),
    ("audioMessage", MessageKind.AUDIO),
    ("stickerMessage", MessageKind.STICKER),
)
MEDIA_KINDS = frozenset(kind for _name, kind in MEDIA_FIELDS)
MEDIA_KIND_CHOICES = sorted(MEDIA_KINDS)  # what a file may be sent as (the API's `kind`)

MB = 1024 * 1024
# WhatsApp's limits per kind (its Business Platform's documented sizes): what
# we send is checked against them before anything is queued; what we receive
# is downloaded up to WHATSAPP_MEDIA["MAX_BYTES"] (these by default).
WHATSAPP_LIMITS = {
    MessageKind.IMAGE: 5 * MB,
    MessageKind.VIDEO: 16 * MB,
    MessageKind.AUDIO: 16 * MB,
    MessageKind.DOCUMENT: 100 * MB,
    MessageKind.STICKER: 500 * 1024,
}
# What content (by libmagic, not by what the sender claims) each kind may carry.
ALLOWED_TYPES = {
    MessageKind.IMAGE: ("image/jpeg", "image/png"),
    MessageKind.VIDEO: ("video/mp4", "video/3gpp"),
    MessageKind.AUDIO: (
        "audio/ogg",
        "audio/mpeg",
        "audio/mp4",
        "audio/aac",
        "audio/amr",
        "video/mp4",  # libmagic calls an m4a container video/mp4
        "application/ogg",
    ),
    MessageKind.DOCUMENT: None,  # any file
    MessageKind.STICKER: ("image/webp",),
}


class MediaDownloadError(TransportError):
    """A download that did not produce the file. `reason`: expired (WhatsApp no
    longer has it: 404/410), too_large, or failed; `permanent` failures are not
    retried."""

    def __init__(self, message, *, reason="failed", permanent=False):
        super().__init__(message, permanent=permanent or reason in {"expired", "too_large"})
        self.reason = reason


@dataclass(frozen=True)
class MediaRef:
    """The media part of a received message."""

    kind: str
    mimetype: str = ""
    file_length: int = 0  # what the sender declared (0: unknown)
    file_name: str = ""
    sha256: str = ""  # hex of the plaintext's SHA-256 as the sender declared it
    voice_note: bool = False
    descriptor: bytes = b""  # a waE2E.Message holding only the media part


@dataclass(frozen=True)
class OutboundMedia:
    """A file to send: a local path the client uploads from."""

    kind: str
    path: str
    mimetype: str
    size: int
    file_name: str = ""
    caption: str = ""
    voice_note: bool = False


@dataclass(frozen=True)
class Location:
    latitude: float
    longitude: float
    name: str = ""
    address: str = ""


def media_ref(msg):
    """The MediaRef of an (unwrapped) waE2E.Message, or None without media."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    for name, kind in MEDIA_FIELDS:
        if msg.HasField(name):
            part = getattr(msg, name)
            return MediaRef(
                kind=kind,
                mimetype=str(getattr(part, "mimetype", ""))[:100],
                file_length=int(getattr(part, "fileLength", 0) or 0),
                file_name=str(getattr(part, "fileName", ""))[:255],
                sha256=bytes(getattr(part, "fileSHA256", b"")).hex(),
                voice_note=bool(getattr(part, "PTT", False)),
                descriptor=Message(**{name: part}).SerializeToString(),
            )
    return None


def parse_descriptor(descriptor):
    """(field name, media part) of a stored descriptor."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    msg = Message.FromString(bytes(descriptor))
    for name, _kind in MEDIA_FIELDS:
        if msg.HasField(name):
            return name, getattr(msg, name), msg
    raise MediaDownloadError("the stored media descriptor holds no media", permanent=True)
