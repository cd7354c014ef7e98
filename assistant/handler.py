"""The assistant's inbound handlers, both around the turn-based core
services.run_turn, registered in settings.WHATSAPP_INBOUND_HANDLERS:

* "assistant": the per-message contract (an InboundMessage in, a
  HandlerResult out), one answer per message;
* "assistant_turns": the turn contract (whatsapp.services.turn_contract), one
  answer per turn -- all the client's messages of a burst in one model call,
  with the thread the pipeline hands over as history.
"""

import time

from django.conf import settings
from django.utils import timezone

from whatsapp.models import InboundMessage, OutboundMessage
from whatsapp.services.processing import HandlerResult
from whatsapp.services.turn_contract import DoNothing, HandOver, SendText, turn_handler

from .chats import turn_context_for
from .services import BUSINESS, CLIENT, Said, TurnContext, assistant_of, run_turn

TURNS_HANDLER = "assistant_turns"


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


def _said(message):
    return Said(CLIENT if message.direction == "in" else BUSINESS, message.text, message.at)


def _deadline(ctx):
    """The turn's reply deadline (a datetime) as time.monotonic(), within
    ASSISTANT["REPLY_DEADLINE"] from now."""
    left = settings.ASSISTANT["REPLY_DEADLINE"]
    if ctx.deadline is not None:
        left = min(left, (ctx.deadline - timezone.now()).total_seconds())
    return time.monotonic() + left


def _last_message_id(ctx):
    """The stored InboundMessage of the turn's last message (the run is linked to
    it, as the turn's first reply is)."""
    wa_id = ctx.messages[-1].wa_message_id if ctx.messages else ""
    if not wa_id:
        return None
    return (
        InboundMessage.objects.filter(
            company_id=ctx.company.pk, chat_jid=ctx.chat_jid, wa_message_id=wa_id
        )
        .values_list("pk", flat=True)
        .first()
    )


# The handler's own timeout: the reply deadline and a little to record the run.
@turn_handler(timeout=settings.ASSISTANT["REPLY_DEADLINE"] + 5.0)
def assistant_turn(ctx):
    """One answer per turn: ctx (turn_contract.TurnContext) -> run_turn ->
    [SendText..., HandOver(note)]. The pipeline's HandOver pauses the chat,
    marks it as needing a person and opens the hand-over incident."""
    if ctx.chat_jid.endswith("@g.us"):
        return DoNothing("group chat: the assistant answers direct chats only")
    if not any(m.text.strip() for m in ctx.messages):
        return DoNothing("no text in the turn: nothing to answer")
    config = assistant_of(ctx.company.pk)
    if config is None:
        return DoNothing("no assistant is configured (or it is disabled) for this company")
    history = tuple(map(_said, ctx.history))[-config.history_messages :] if (
        config.history_messages > 0
    ) else ()
    result = run_turn(
        TurnContext(
            company_id=ctx.company.pk,
            chat_jid=ctx.chat_jid,
            new_messages=tuple(map(_said, ctx.messages)),
            history=history,
            message_id=_last_message_id(ctx),
            deadline=_deadline(ctx),
            handler=TURNS_HANDLER,
        ),
        config,
    )
    actions = [SendText(text) for text in result.replies]
    if result.hand_over:
        actions.append(HandOver(f"assistant run {result.run_id}: {result.hand_over_note}"))
    note = f"assistant run {result.run_id}: {result.outcome}"
    if result.note and not result.hand_over:
        note += f" ({result.note})"
    actions.append(DoNothing(note[:2000]))
    return actions
