"""Connection events in plain words for people, with the technical details
(raw reason, worker id) kept apart for a "details" toggle. Pure text work."""

import re
from dataclasses import dataclass

from whatsapp.transport.jids import phone_or_empty

from .error_words import UNKNOWN, describe_error

REQUESTED = re.compile(r"^(start|stop|restart|logout) requested ?(.*?)( \(admin\))?$")
VERBS = {"start": "Start", "stop": "Stop", "restart": "Restart", "logout": "Log out"}

PLAIN = {
    "starting": "Connecting to WhatsApp",
    "connected": "Connected",
    "disconnected": "Connection dropped; reconnecting by itself",
    "reconnected": "Connected again",
    "connect_failed": "Could not connect; trying again later",
    "replaced": "Another device or program took over this WhatsApp connection; paused",
    "logged_out": "Logged out of WhatsApp: scan a new QR code to connect again",
    "banned": "WhatsApp blocked this number for a while",
    "qr": "New QR code: scan it in WhatsApp > Linked devices",
    "pairing_code": "Pairing code issued: enter it in WhatsApp > Linked devices",
    "paired": "Phone linked",
    "keepalive_timeout": "WhatsApp stopped answering",
    "keepalive_restored": "WhatsApp answers again",
    "silent": "No activity from WhatsApp; restarting the connection",
    "stopped": "Disconnected",
    "lease_acquired": "A worker took charge of this session",
    "lease_lost": "The worker lost charge of this session; another one takes over",
    "error": "Something went wrong",
}

# Kinds whose raw reason is an error: the plain words name its cause (error_words).
CAUSED = {
    "connect_failed": "Could not connect: {cause}",
    "disconnected": "Connection dropped: {cause}; reconnecting by itself",
    "error": "Something went wrong: {cause}",
}


@dataclass
class EventWords:
    text: str
    details: str


def describe_event(kind, reason="", worker_id=""):
    """(plain text, technical details) of one ConnectionEvent."""
    reason = (reason or "").strip()
    text = PLAIN.get(kind, kind.replace("_", " ").capitalize())
    asked = REQUESTED.match(reason)
    if asked:
        who = asked.group(2)
        if who and not who.startswith(("by ", "via ")):
            who = f"by {who}"  # a bare actor name ("demo")
        text = f"{VERBS[asked.group(1)]} requested {who}".strip()
    elif kind in {"connected", "reconnected", "paired"}:
        phone = phone_or_empty(reason.removeprefix("paired as "))
        if phone:
            text = f"{text} as {phone}"
    elif kind == "pairing_code" and reason.startswith("pairing code requested for "):
        text = f"Pairing code requested for {reason.rsplit(' ', 1)[-1]}"
    elif kind == "stopped" and reason.startswith("client ") and " stopped" in reason:
        text = "Connection closed"
    elif kind == "stopped" and reason.endswith("another worker takes over"):
        text = "Handed over to another worker"
    elif kind in CAUSED and reason:
        cause = describe_error(reason).text
        if not cause.startswith((UNKNOWN, "The connection dropped")):
            if not cause.startswith("WhatsApp"):
                cause = cause[0].lower() + cause[1:]
            text = CAUSED[kind].format(cause=cause)
    details = "; ".join(
        part for part in [reason, f"worker {worker_id}" if worker_id else ""] if part
    )
    return EventWords(text, details)
