from .messages import AutoReplyRule, InboundMessage, MessageKind, OutboundMessage, ProcessingJob
from .sessions import (
    ConnectionEvent,
    DesiredState,
    SessionLease,
    SessionState,
    WhatsAppSession,
    backoff_delay,
)
from .workers import WorkerProcess

__all__ = [
    "AutoReplyRule",
    "ConnectionEvent",
    "DesiredState",
    "InboundMessage",
    "MessageKind",
    "OutboundMessage",
    "ProcessingJob",
    "SessionLease",
    "SessionState",
    "WhatsAppSession",
    "WorkerProcess",
    "backoff_delay",
]
