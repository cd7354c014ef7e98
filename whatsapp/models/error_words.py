"""Errors in plain words for people: a table of the causes seen on the
WhatsApp connection (Go's network errors from whatsmeow, WhatsApp's stream
codes, our own worker's notes), each with what it means and what to do. The raw
text is kept for a "technical details" toggle. Pure text work: the first cause
whose pattern matches wins, so the specific ones come first."""

import re
from dataclasses import dataclass

# (pattern, plain words). Patterns are searched case-insensitively in the raw text.
CAUSES = [
    # WhatsApp's own verdicts come first: they explain the network symptom that follows.
    (r"\b440\b|stream replaced|conflict: ?replaced",
     "Another device or program connected with this WhatsApp link and took over; "
     "press Start to take it back"),
    (r"\b401\b|logged out|logged_out|device_removed|unauthorized",
     "Logged out of WhatsApp (the linked device was removed on the phone or logged out "
     "here): scan a new QR code"),
    (r"temporar\w* ban|temp_banned|\bbanned\b",
     "WhatsApp blocked this number for a while"),
    (r"\b515\b|restart required",
     "WhatsApp asked for a routine reconnection (normal right after linking a phone)"),
    (r"\b405\b|client outdated|client_outdated",
     "WhatsApp refused this program's version as outdated: the software needs an update"),
    (r"\b503\b|service unavailable",
     "WhatsApp's service was briefly unavailable"),
    (r"\b500\b|internal server error",
     "WhatsApp's service had an internal error"),
    (r"pair_error|pair error|pairing failed", "Linking the phone failed: try a new QR code"),
    (r"pairing code request failed",
     "The pairing code could not be requested: check the phone number, or use the QR code"),
    # Go / operating system network errors (whatsmeow dialing web.whatsapp.com).
    (r"no such host|server misbehaving|name resolution|lookup [\w.-]+|"
     r"temporary failure in name|nodename nor servname",
     "Could not look up WhatsApp's server (DNS failure): check this machine's internet "
     "connection and DNS settings"),
    (r"network is unreachable|no route to host|host is down",
     "This machine has no network route to WhatsApp: is it offline?"),
    (r"connection refused",
     "WhatsApp's server refused the connection, or a firewall or proxy on the way blocks it"),
    (r"x509|\btls\b|certificate|handshake failure",
     "The secure (TLS) connection to WhatsApp failed: a proxy or firewall may be "
     "intercepting it, or this machine's clock is wrong"),
    (r"bad handshake|websocket: close|abnormal closure|\b1006\b",
     "The WebSocket connection to WhatsApp was refused or closed abnormally"),
    (r"connection reset|broken pipe|unexpected eof|\beof\b|use of closed network connection",
     "The connection was cut off midway (a network glitch, or WhatsApp closed it)"),
    (r"keep-?alive", "WhatsApp stopped answering the connection checks (keep-alive)"),
    (r"i/o timeout|deadline exceeded|timed? ?out|timeout",
     "WhatsApp's server did not answer in time (a slow or blocked network)"),
    # Our own worker and database.
    (r"connection dropped", "The connection dropped; it reconnects by itself"),
    (r"stream error", "WhatsApp ended the connection with an error code"),
    (r"\blease\b", "The worker lost its hold on this session; another worker takes over"),
    (r"database is locked|operationalerror|could not connect to server|connection to server",
     "The database was busy or unreachable for a moment"),
    (r"malformed message", "A message from WhatsApp could not be read"),
    (r"handling \w+ failed|handler", "Processing an event from WhatsApp failed"),
    (r"rejected command", "The worker refused a command it could not carry out"),
    (r"could not delete the device store",
     "The stored device keys could not be deleted after the logout"),
    (r"connection loop ended|connection ended|dial",
     "The connection to WhatsApp could not be opened or ended unexpectedly"),
]
_COMPILED = [(re.compile(pattern, re.IGNORECASE), words) for pattern, words in CAUSES]
RETRY = re.compile(r"retry in (\d+(?:\.\d+)?)s")
UNKNOWN = "An unexpected error (see the technical details)"


@dataclass(frozen=True)
class ErrorWords:
    text: str  # for a person
    raw: str  # the technical text, for the "technical details" toggle

    def __bool__(self):
        return bool(self.raw)

    @property
    def details(self):
        """The raw text when it says more than the plain words."""
        return self.raw if self.raw and self.raw != self.text else ""


def describe_error(raw):
    """ErrorWords of one raw error (a session's last_error, an event's reason)."""
    raw = (raw or "").strip()
    if not raw:
        return ErrorWords("", "")
    text = next((words for pattern, words in _COMPILED if pattern.search(raw)), UNKNOWN)
    retry = RETRY.search(raw)
    if retry:
        text = f"{text}; trying again in {_seconds(float(retry.group(1)))}"
    return ErrorWords(text, raw)


def _seconds(value):
    if value < 1:
        return "under a second"
    if value < 90:
        return f"{round(value)} s"
    return f"{round(value / 60)} min"
