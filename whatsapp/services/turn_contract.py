"""What a turn handler receives and returns (docs/processing.md, "Writing a handler").

A turn handler answers a *turn*: the messages of one chat that arrived close
together. It is a function marked with @turn_handler, registered by name in
settings.WHATSAPP_INBOUND_HANDLERS like every handler:

    @turn_handler(timeout=20)
    def greeter(ctx: TurnContext):
        if ctx.attempt.is_retry and ctx.attempt.previous_outcome == "died":
            ...  # the dead attempt may have done its side effects
        return [SendText(f"Hello {ctx.push_name}!"), React("👍")]

It returns one action, a list of them, or None (do nothing). It may raise
services.processing.HandlerError (permanent: the turn fails at once); any other
exception is transient and the turn is retried, knowingly (ctx.attempt).
Functions without the mark are per-message handlers (handler(message) ->
HandlerResult) and keep working as before.
"""

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Attempt:
    """What a handler is told about the run it is in: its number (1 for the
    first) and how the previous one ended (ProcessingJob.Outcome: failed,
    timed_out, died), with its error. A retry after `died` may repeat side
    effects the dead attempt already had: the handler decides."""

    number: int = 1
    previous_outcome: str = ""
    previous_error: str = ""

    @property
    def is_retry(self):
        return self.number > 1


@dataclass(frozen=True)
class ThreadMessage:
    """One message of the chat's thread, either side."""

    direction: str  # "in" (the client wrote it) | "out" (we sent it)
    author: str  # "client" | "handler" | "api"
    text: str
    kind: str = "text"
    media: str = ""  # a reference to the media, when there is one
    wa_message_id: str = ""
    at: datetime | None = None


@dataclass(frozen=True)
class TurnContext:
    turn_id: int
    company: object  # companies.Company
    chat_jid: str
    messages: tuple  # ThreadMessage: this turn's client messages, oldest first
    history: tuple = ()  # ThreadMessage: the chat's last N before this turn, oldest first
    attempt: Attempt = field(default_factory=Attempt)
    deadline: datetime | None = None  # the reply deadline (the holding message goes out then)
    push_name: str = ""
    contact: object = None  # the conversations issue's Contact, once it exists
    chat: object = None  # ... and its Chat

    @property
    def text(self):
        """The turn's texts, one line each."""
        return "\n".join(m.text for m in self.messages if m.text)


# --- actions ---------------------------------------------------------------
@dataclass(frozen=True)
class SendText:
    text: str


@dataclass(frozen=True)
class SendMedia:
    """Declared for handlers to use; sending media is not implemented yet (the
    turn records it as skipped)."""

    url: str
    caption: str = ""
    mime: str = ""


@dataclass(frozen=True)
class React:
    emoji: str
    message_id: str = ""  # default: the turn's last message


@dataclass(frozen=True)
class HandOver:
    """Hand the chat to a person (an incident tells the operators)."""

    note: str = ""


@dataclass(frozen=True)
class DoNothing:
    note: str = ""


@dataclass(frozen=True)
class ReplyLater:
    """The answer comes later through POST .../turns/{id}/reply with the turn's
    token (an asynchronous webhook). The reply deadline still runs."""

    note: str = ""


ACTION_TYPES = (SendText, SendMedia, React, HandOver, DoNothing, ReplyLater)


def turn_handler(func=None, *, timeout=20.0):
    """Mark `func` as a turn handler with its own timeout (seconds)."""

    def mark(f):
        f.turn_handler = True
        f.turn_timeout = float(timeout)
        return f

    return mark(func) if func is not None else mark


def is_turn_handler(handler):
    return bool(getattr(handler, "turn_handler", False))


def as_actions(returned):
    """A handler's return value as a tuple of actions (TypeError if it is not one)."""
    if returned is None:
        return ()
    items = returned if isinstance(returned, list | tuple) else [returned]
    for item in items:
        if not isinstance(item, ACTION_TYPES):
            raise TypeError(f"{type(item).__name__} is not a turn action")
    return tuple(items)
