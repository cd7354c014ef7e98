"""Inbound message handlers.

Turn handlers (@turn_handler) answer a turn -- the messages of one chat that
came close together -- from a TurnContext, with actions (services.turn_contract,
docs/processing.md). Per-message handlers take an InboundMessage and return a
HandlerResult; the processing job queues their reply (at most one per message).

A company picks its handler by name (`Company.inbound_handler`) from the
registry settings.WHATSAPP_INBOUND_HANDLERS, the default being
settings.WHATSAPP["INBOUND_HANDLER"] (see companies/inbound_handlers.py)."""

import uuid

from whatsapp.models import AutoReplyRule, OutboundMessage
from whatsapp.services.processing import HandlerError, HandlerResult
from whatsapp.services.turn_contract import (
    DoNothing,
    HandOver,
    ReplyLater,
    SendText,
    turn_handler,
)
from whatsapp.services.webhooks import (
    WebhookReplyError,
    message_handler_endpoint,
    request_webhook_reply,
    request_webhook_turn,
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


def _matching_rule(company_id, text, is_group):
    for rule in AutoReplyRule.objects.filter(company_id=company_id, is_active=True):
        if is_group and not rule.reply_in_groups:
            continue
        if rule.matches(text):
            return rule
    return None


@turn_handler(timeout=10)
def keyword_turn(ctx):
    """The keyword rules, once per turn: the first rule matching any of the
    turn's messages (the latest first) answers; the whole burst is one turn."""
    is_group = ctx.chat_jid.endswith("@g.us")
    texts = [m.text for m in reversed(ctx.messages) if m.text.strip()]
    if not texts and not any(m.media for m in ctx.messages):
        return DoNothing("empty messages: nothing to answer")
    for text in texts or [""]:
        rule = _matching_rule(ctx.company.pk, text, is_group)
        if rule is not None:
            reply = rule.reply_text.replace("{name}", ctx.push_name or "Client")
            return [SendText(reply), DoNothing(f"rule {rule.pk}")]
    return DoNothing("no rule matched")


TURN_NAMESPACE = uuid.UUID("0b6e7a55-52a4-4c57-9d0e-6a3f0c1e2d44")


def _thread_json(m):
    return {
        "direction": m.direction,
        "author": m.author,
        "text": m.text,
        "kind": m.kind,
        "media": m.media,
        "id": m.wa_message_id,
        "at": m.at.isoformat() if m.at else None,
    }


@turn_handler(timeout=25)
def webhook_turn(ctx):
    """POST the turn with its thread to the company's message-handler endpoint.

    It answers now ({"replies": ["..."]}, or {"reply": "..."}, optionally
    {"hand_over": "note"}), or 202 and later through POST
    /api/v1/whatsapp/sessions/{company}/turns/{turn}/reply with the turn's token
    (sent here as data.turn.token), so an AI is not bound by the HTTP timeout."""
    endpoint = message_handler_endpoint(ctx.company.pk)
    if endpoint is None:
        raise HandlerError(
            "no active webhook endpoint of this company is marked as message handler"
        )
    from whatsapp.models import Turn

    token = Turn.objects.values_list("token", flat=True).get(pk=ctx.turn_id)
    data = {
        "turn": {
            "id": ctx.turn_id,
            "chat_jid": ctx.chat_jid,
            "attempt": ctx.attempt.number,
            "previous_outcome": ctx.attempt.previous_outcome,
            "deadline": ctx.deadline.isoformat() if ctx.deadline else None,
            "token": token,
            "reply_path": (f"/api/v1/whatsapp/sessions/{ctx.company.pk}/turns/{ctx.turn_id}/reply"),
        },
        "push_name": ctx.push_name,
        "messages": [_thread_json(m) for m in ctx.messages],
        "history": [_thread_json(m) for m in ctx.history],
    }
    event_id = uuid.uuid5(TURN_NAMESPACE, f"{ctx.company.pk}:{ctx.turn_id}")
    try:
        when, answer = request_webhook_turn(endpoint, event_id, data)
    except WebhookReplyError as exc:
        raise HandlerError(str(exc)) from None
    if when == "later":
        return ReplyLater(f"webhook {endpoint.pk} will answer later")
    return actions_from_answer(answer, f"webhook {endpoint.pk}")


def actions_from_answer(answer, who):
    """Actions from a JSON answer: {"replies": [...]} / {"reply": "..."} and an
    optional {"hand_over": "note"}. HandlerError if malformed."""
    answer = answer or {}
    replies = answer.get("replies")
    if replies is None:
        single = answer.get("reply")
        replies = [] if single is None else [single]
    if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
        raise HandlerError('"replies" must be a list of strings ("reply": one string)')
    actions = [SendText(r.strip()) for r in replies if r.strip()]
    hand_over = answer.get("hand_over")
    if hand_over is not None:
        actions.append(HandOver(str(hand_over)[:2000]))
    return actions or [DoNothing(f"{who}: no reply")]
