from .alerts import Incident, IncidentKind
from .conversations import PERSON_AUTHORS, Author, Chat, Contact
from .media import MediaFile, MessageMedia
from .messages import AutoReplyRule, InboundMessage, MessageKind, OutboundMessage, ProcessingJob
from .recipients import RecipientLookup
from .sessions import (
    ConnectionEvent,
    DesiredState,
    SessionLease,
    SessionState,
    WhatsAppSession,
    backoff_delay,
)
from .turns import Turn
from .webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from .workers import WorkerProcess

__all__ = [
    "PERSON_AUTHORS",
    "AutoReplyRule",
    "Author",
    "Chat",
    "ConnectionEvent",
    "Contact",
    "DesiredState",
    "Incident",
    "IncidentKind",
    "InboundMessage",
    "MediaFile",
    "MessageMedia",
    "MessageKind",
    "OutboundMessage",
    "ProcessingJob",
    "RecipientLookup",
    "SessionLease",
    "SessionState",
    "Turn",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "WhatsAppSession",
    "WorkerProcess",
    "backoff_delay",
]
