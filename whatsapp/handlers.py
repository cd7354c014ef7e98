"""Inbound message handlers. A handler takes an InboundMessage and returns a
HandlerResult; the processing job queues its reply (at most one per message).

A company picks its handler by name (`Company.inbound_handler`) from the
registry settings.WHATSAPP_INBOUND_HANDLERS, the default being
settings.WHATSAPP["INBOUND_HANDLER"] (see companies/inbound_handlers.py)."""

from whatsapp.models import AutoReplyRule, OutboundMessage
from whatsapp.services.processing import HandlerError, HandlerResult
from whatsapp.services.webhooks import (
    WebhookReplyError,
    message_handler_endpoint,
    request_webhook_reply,
)


def auto_reply(message):
    """The default: the company's first matching keyword rule answers."""
    if not message.has_content:
        return HandlerResult(note="empty message: nothing to answer")
    rules = AutoReplyRule.objects.filter(company_id=message.company_id, is_active=True)
    for rule in rules:
        if message.is_group and not rule.reply_in_groups:
            continue
        if rule.matches(message.text):
            return HandlerResult(reply_text=rule.render(message), note=f"rule {rule.pk}")
    return HandlerResult(note="no rule matched")


def no_reply(message):
    """Store and acknowledge only (useful when replies come from elsewhere)."""
    return HandlerResult(note="no-reply handler")


def webhook_reply(message):
    """POST the message to the company's message-handler webhook endpoint (signed,
    like every webhook) and reply with the "reply" text of its JSON answer.

    A message that already has its reply is not sent to the endpoint again, so
    a re-run of the job neither calls the endpoint twice for nothing nor can it
    queue a second, different reply."""
    if OutboundMessage.objects.filter(in_reply_to=message).exists():
        return HandlerResult(note="reply already queued")
    endpoint = message_handler_endpoint(message.company_id)
    if endpoint is None:
        raise HandlerError(
            "no active webhook endpoint of this company is marked as message handler"
        )
    try:
        reply = request_webhook_reply(endpoint, message)
    except WebhookReplyError as exc:
        raise HandlerError(str(exc)) from None
    if not reply:
        return HandlerResult(note=f"webhook {endpoint.pk}: no reply")
    return HandlerResult(reply_text=reply, note=f"webhook {endpoint.pk} replied")
