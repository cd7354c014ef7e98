from .alerts import Incident, IncidentKind
from .conversations import Author, Chat, Contact
from .messages import AutoReplyRule, InboundMessage, MessageKind, OutboundMessage, ProcessingJob
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
    "AutoReplyRule",
    "Author",
    "Chat",
    "ConnectionEvent",
    "Contact",
    "DesiredState",
    "Incident",
    "IncidentKind",
    "InboundMessage",
    "MessageKind",
    "OutboundMessage",
    "ProcessingJob",
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
