"""The boundary to WhatsApp: what a transport client does and the events it emits.

The session worker drives clients only through this interface and sees only
these events, so it cannot tell the real neonize transport from the
project's WhatsApp simulator. Inbound messages stay real neonize `MessageEv`
protobufs; `whatsapp.transport.normalize` turns them into plain values.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string


class TransportError(Exception):
    """Every failure of a transport. `permanent` failures are not retried."""

    def __init__(self, message, *, permanent=False):
        super().__init__(message)
        self.permanent = permanent


class EventRefused(Exception):
    """Raised by the worker's event sink for an inbound message it did not take
    (the client that delivered it was already let go: a stopped or replaced
    session's late event). The transport must not acknowledge it, so WhatsApp
    delivers it again to the client that owns the company now. Not an error."""


# --- events (what the worker's state machine consumes) --------------------
@dataclass(frozen=True)
class Connected:
    jid: str = ""  # our own device JID, e.g. 4915...:12@s.whatsapp.net
    push_name: str = ""


@dataclass(frozen=True)
class Disconnected:
    """A remote drop; the library reconnects by itself (whatsmeow auto-reconnect)."""

    reason: str = ""


@dataclass(frozen=True)
class StreamReplaced:
    """440 "conflict: replaced": another connection with our credentials took over."""


@dataclass(frozen=True)
class LoggedOut:
    reason: str = ""
    on_connect: bool = False


@dataclass(frozen=True)
class ConnectFailure:
    reason: str = ""
    message: str = ""
    permanent: bool = False


@dataclass(frozen=True)
class QRCode:
    codes: tuple = ()  # the codes to show, in rotation order


@dataclass(frozen=True)
class PairSuccess:
    jid: str
    push_name: str = ""


@dataclass(frozen=True)
class KeepAliveTimeout:
    error_count: int = 0


@dataclass(frozen=True)
class KeepAliveRestored:
    pass


@dataclass(frozen=True)
class TemporaryBan:
    code: str = ""
    expires_in_seconds: int = 0


@dataclass(frozen=True)
class ClientOutdated:
    pass


@dataclass(frozen=True)
class StreamError:
    code: str = ""


@dataclass(frozen=True)
class InboundMessage:
    event: object  # neonize.proto.Neonize_pb2.Message (MessageEv)


@dataclass(frozen=True)
class Receipt:
    message_ids: tuple = ()
    kind: str = "delivered"  # delivered | read | played
    chat: str = ""


@dataclass(frozen=True)
class Closed:
    """The client's connection loop ended (initial dial failed, or stopped)."""

    error: str = ""
    permanent: bool = False


@dataclass(frozen=True)
class Recipient:
    """WhatsApp's answer about one phone number (whatsmeow's IsOnWhatsAppResponse)."""

    phone: str  # E.164, as asked
    on_whatsapp: bool
    jid: str = ""  # bare JID WhatsApp says the number lives at ("" when not on WhatsApp)


def match_answers(phones, answers):
    """{asked E.164: Recipient} from answers in (query digits, on_whatsapp, jid)
    form, matched on the digits of their query (WhatsApp echoes it, with or
    without its `+`); a lone answer to a lone question is that number's."""
    by_digits = {"".join(ch for ch in p if ch.isdigit()): p for p in phones}
    found = {}
    for query, on_whatsapp, jid in answers:
        digits = "".join(ch for ch in str(query) if ch.isdigit())
        phone = by_digits.get(digits) or (phones[0] if len(phones) == 1 == len(answers) else None)
        if phone is not None:
            found[phone] = Recipient(phone, bool(on_whatsapp), jid if on_whatsapp else "")
    return found


@dataclass(frozen=True)
class ClientSpec:
    """What a transport needs to build a client for one company."""

    company_id: int
    jid: str = ""  # paired device JID, "" for a fresh pairing
    store: str = ""  # neonize store: SQLite path or postgres:// URL
    extra: dict = field(default_factory=dict)


EventSink = Callable[[object], Awaitable[None]]


class Client(Protocol):
    spec: ClientSpec

    async def start(self) -> None:
        """Begin connecting. Events flow to the sink; a failed dial ends in Closed."""

    async def stop(self) -> None:
        """Disconnect and release everything (threads, sockets). Idempotent."""

    async def logout(self) -> None:
        """Log the device out of WhatsApp (its keys become useless)."""

    async def send_text(self, jid: str, text: str, message_id: str = "") -> str:
        """Send a text; returns WhatsApp's message id. Raises TransportError.

        With `message_id` (chosen by the sender, as whatsmeow's
        SendRequestExtra.ID), a transport whose `sends_with_id` is true sends
        under that id, so sending again with it is safe: the recipient keeps one."""

    async def is_on_whatsapp(self, phones: list) -> dict:
        """Ask WhatsApp which of `phones` (E.164) are on WhatsApp and at which JID:
        {phone: Recipient} for the numbers WhatsApp answered. Raises TransportError."""

    async def send_media(self, jid: str, media, message_id: str = "") -> str:
        """Upload and send a file (transport.media.OutboundMedia); returns WhatsApp's
        message id. Raises TransportError."""

    async def send_location(self, jid: str, location, message_id: str = "") -> str:
        """Send a location pin (transport.media.Location); returns WhatsApp's id."""

    async def download_media(self, descriptor: bytes, path: str, max_bytes: int) -> int:
        """Write the file of a received message (its MediaRef.descriptor) to `path`;
        returns its size. Raises transport.media.MediaDownloadError: reason
        expired (WhatsApp no longer has it), too_large (over `max_bytes`) or
        failed (retry unless permanent)."""

    async def mark_read(self, chat: str, sender: str, message_ids: list) -> None:
        """Mark the client's messages read (blue ticks). Best effort."""

    async def send_presence(self, chat: str, state: str) -> None:
        """Chat presence: "composing" ("typing..." on the phone) or "paused"."""

    async def pair_phone(self, phone_e164: str) -> str:
        """Request an 8-character pairing code for `phone_e164`."""

    async def is_logged_in(self) -> bool:
        """Whether the client is connected and authenticated right now."""


class Transport(Protocol):
    name: str
    sends_with_id: bool  # send_text honours the caller's message id

    def new_client(self, spec: ClientSpec, on_event: EventSink) -> Client:
        ...


TRANSPORT_CLASSES = {
    "neonize": "whatsapp.transport.neonize_client.NeonizeTransport",
    "simulator": "whatsapp.transport.simulator_client.SimulatorTransport",
    "neonize-shards": "whatsapp.transport.shards.ShardedNeonizeTransport",
}


def get_transport(name=None) -> Transport:
    name = name or settings.WHATSAPP["TRANSPORT"]
    if name == "neonize" and settings.WHATSAPP.get("NEONIZE_SHARDS"):
        name = "neonize-shards"  # clients in child processes (whatsapp/transport/shards.py)
    try:
        path = TRANSPORT_CLASSES[name]
    except KeyError:
        raise TransportError(f"unknown WhatsApp transport {name!r}", permanent=True) from None
    return import_string(path)()
