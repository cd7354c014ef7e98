"""Connection events in plain words for people, with the technical details
(raw reason, worker id) kept apart for a "details" toggle. Pure text work."""

import re
from dataclasses import dataclass

from whatsapp.transport.jids import phone_or_empty

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
        text = f"{VERBS[asked.group(1)]} requested {asked.group(2)}".strip()
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
    details = "; ".join(
        part for part in [reason, f"worker {worker_id}" if worker_id else ""] if part
    )
    return EventWords(text, details)
