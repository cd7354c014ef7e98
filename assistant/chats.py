"""A chat's messages as the assistant sees them, read from the stored rows.

Today a turn is one inbound message; its history is the chat's earlier
inbound and outbound rows (by chat JID), newest `history_messages` of them,
oldest first. When turns (several client messages answered at once) land,
only `turn_context_for` changes: `new_messages` then holds the turn's
messages."""

import time

from django.conf import settings

from whatsapp.models import InboundMessage, OutboundMessage

from .services import BUSINESS, CLIENT, Said, TurnContext


def chat_history(company_id, chat_jid, before, limit, exclude_message_id=None):
    """The last `limit` messages of the chat before `before` (both ways), oldest first."""
    if limit <= 0:
        return ()
    inbound = (
        InboundMessage.objects.filter(
            company_id=company_id, chat_jid=chat_jid, received_at__lt=before
        )
        .exclude(pk=exclude_message_id)
        .order_by("-received_at", "-pk")
        .values_list("text", "received_at")[:limit]
    )
    outbound = (
        OutboundMessage.objects.filter(
            company_id=company_id, to_jid=chat_jid, created_at__lt=before
        )
        .order_by("-created_at", "-pk")
        .values_list("text", "created_at")[:limit]
    )
    said = [Said(CLIENT, text, at) for text, at in inbound]
    said += [Said(BUSINESS, text, at) for text, at in outbound]
    said.sort(key=lambda s: s.at)
    return tuple(said[-limit:])


def turn_context_for(message, config, deadline=None):
    """The TurnContext of one stored InboundMessage."""
    return TurnContext(
        company_id=message.company_id,
        chat_jid=message.chat_jid,
        new_messages=(Said(CLIENT, message.text, message.received_at),),
        history=chat_history(
            message.company_id,
            message.chat_jid,
            message.received_at,
            config.history_messages,
            exclude_message_id=message.pk,
        ),
        message_id=message.pk,
        deadline=(
            deadline
            if deadline is not None
            else time.monotonic() + settings.ASSISTANT["REPLY_DEADLINE"]
        ),
    )
