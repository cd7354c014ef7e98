"""Inbound message handlers. A handler takes an InboundMessage and returns a
HandlerResult; the processing job queues its reply (at most one per message).

A company picks its handler by dotted path (`Company.inbound_handler`), the
default being settings.WHATSAPP["INBOUND_HANDLER"]."""

from whatsapp.models import AutoReplyRule
from whatsapp.services.processing import HandlerResult


def auto_reply(message):
    """The default: the company's first matching keyword rule answers."""
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
