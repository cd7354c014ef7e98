"""The "assistant" inbound handler: today's per-message handler contract
(an InboundMessage in, a HandlerResult out) around the turn-based core in
services.run_turn. Registered in settings.WHATSAPP_INBOUND_HANDLERS."""

from whatsapp.models import OutboundMessage
from whatsapp.services.processing import HandlerResult

from .chats import turn_context_for
from .services import assistant_of, run_turn


def assistant_reply(message, attempt=None):
    if OutboundMessage.objects.filter(in_reply_to=message).exists():
        # A re-run of the job (the reply is queued already): no second model call.
        return HandlerResult(note="reply already queued")
    if message.is_group:
        return HandlerResult(note="group chat: the assistant answers direct chats only")
    if not message.has_content:
        return HandlerResult(note="empty message: nothing to answer")
    config = assistant_of(message.company_id)
    if config is None:
        return HandlerResult(note="no assistant is configured (or it is disabled) for this company")
    result = run_turn(turn_context_for(message, config), config)
    note = f"assistant run {result.run_id}: {result.outcome}"
    if result.hand_over:
        note += f" (hand-over: {result.hand_over_note})"
    elif result.note:
        note += f" ({result.note})"
    first, *more = result.replies or ("",)
    return HandlerResult(reply_text=first, more_replies=tuple(more), note=note[:2000])
