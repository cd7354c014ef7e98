"""The assistant's core: one turn of a chat in, plain results out.

`run_turn(TurnContext)` knows nothing of WhatsApp jobs or handler contracts:
it takes the company, the client's new message(s) and the earlier messages of
the chat, applies the guard rails, asks the model (one or two stages), and
returns a TurnResult (the reply texts, already split for WhatsApp; whether
to hand the chat to a person, with a note; the usage). Every turn that gets
as far as the guard rails is recorded as an AssistantRun row.

Guard rails, in order: a chat handed to a person stays silent for
`handover_pause_hours`; a chat over `chat_replies_per_hour` model calls gets
no answer (loops, abuse); a company over its `monthly_token_budget` gets the
fixed `budget_message` (an incident opens at the next alert check); a model
error, timeout, refusal or invalid structured output gets the
`fallback_message` (and counts toward the "assistant failing" incident).
"""

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from whatsapp.services.webhook_http import UnsafeWebhookURL, resolve_webhook_target

from . import llm
from .models import AssistantConfig, AssistantRun, Outcome
from .replies import split_reply
from .secret_box import SecretError

logger = logging.getLogger(__name__)

CLIENT = "client"
BUSINESS = "business"  # the assistant or a person of the business

CLASSIFY_INSTRUCTIONS = (
    "You route WhatsApp messages sent to {name}. Read the conversation and classify the "
    'client\'s latest message(s): action "answer" if the assistant can answer from the '
    'business facts, "needs_person" if the client asks for a person, complains, or needs '
    'a decision only staff can make, "ignore" for messages that need no answer (thanks, '
    "emoji, spam). Give the language of the client's message as an English name. "
    "Reply with JSON only.\n\nBusiness facts:\n{prompt}"
)


@dataclass(frozen=True)
class Said:
    """One message of the chat: who said it (CLIENT or BUSINESS), what, and when."""

    who: str
    text: str
    at: object = None


@dataclass(frozen=True)
class TurnContext:
    company_id: int
    chat_jid: str
    new_messages: tuple  # Said of the client, oldest first: what this turn answers
    history: tuple = ()  # Said before them, oldest first
    message_id: int | None = None  # the InboundMessage the run is linked to
    deadline: float | None = None  # time.monotonic() by which the reply must be ready
    is_test: bool = False  # "Try it": recorded, but no guard rail counts it
    handler: str = "assistant"  # the inbound handler's registry name, recorded with the run


@dataclass(frozen=True)
class TurnResult:
    replies: tuple = ()
    hand_over: bool = False
    hand_over_note: str = ""
    outcome: str = ""
    note: str = ""
    model: str = ""
    prompt_version: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost: object = 0
    run_id: int | None = None


@dataclass
class _Turn:
    """What one turn gathers while it runs (then written as its AssistantRun)."""

    outcome: str = ""
    text: str = ""
    hand_over: bool = False
    hand_over_note: str = ""
    language: str = ""
    note: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    classify_ms: int | None = None
    answer_ms: int | None = None
    models: list = field(default_factory=list)


def assistant_of(company_id):
    return (
        AssistantConfig.objects.select_related("company")
        .filter(company_id=company_id, is_enabled=True)
        .first()
    )


class EndpointRefused(Exception):
    """The model endpoint may not be called from here."""


def check_endpoint(url):
    """Refuse an endpoint on a private, loopback, link-local or reserved address
    unless ASSISTANT["ALLOW_PRIVATE_ENDPOINTS"] (the webhooks' address rule)."""
    allow = settings.ASSISTANT["ALLOW_PRIVATE_ENDPOINTS"]
    try:
        resolve_webhook_target(url, allow_private=allow)
    except UnsafeWebhookURL as exc:
        reason = str(exc).split(";")[0]
        raise EndpointRefused(
            f"model endpoint refused: {reason}; a model in your own network needs "
            "ASSISTANT_ALLOW_PRIVATE_ENDPOINTS=1"
        ) from None


def model_messages(system, context):
    """The chat-completions messages: the system prompt, the history, the new message(s)."""
    messages = [{"role": "system", "content": system}]
    for said in (*context.history, *context.new_messages):
        if said.text.strip():
            role = "user" if said.who == CLIENT else "assistant"
            messages.append({"role": role, "content": said.text})
    return messages


def run_turn(context, config=None):
    """Answer one turn (see the module docstring). Never raises for a model failure."""
    started = time.monotonic()
    config = config or assistant_of(context.company_id)
    if config is None:
        return TurnResult(note="no assistant is configured (or it is disabled) for this company")
    now = timezone.now()
    turn = _Turn()
    system, version = config.system_prompt()
    if not context.is_test:
        turn.outcome = _guard_rails(config, context, now)
    if turn.outcome == Outcome.BUDGET:
        turn.text = config.budget_message
    elif not turn.outcome:
        _ask(config, context, system, turn)
        if turn.outcome in (Outcome.MODEL_ERROR, Outcome.TIMEOUT, Outcome.REFUSED, Outcome.INVALID):
            turn.text = config.fallback_message
            logger.warning(
                "assistant of company %s: %s (%s); sent the fallback message",
                config.company_id,
                turn.outcome,
                turn.note,
            )
    return _record(config, context, turn, version, started, now)


def _guard_rails(config, context, now):
    """The outcome that stops this turn before the model, or ""."""
    runs = AssistantRun.objects
    handed = runs.last_handover(config.company_id, context.chat_jid)
    if handed and now - handed < timedelta(hours=config.handover_pause_hours):
        return Outcome.PAUSED
    if config.chat_replies_per_hour and (
        runs.calls_in_chat(config.company_id, context.chat_jid, now - timedelta(hours=1))
        >= config.chat_replies_per_hour
    ):
        return Outcome.RATE_LIMITED
    if config.monthly_token_budget and (
        runs.live().tokens_this_month(config.company_id, now) >= config.monthly_token_budget
    ):
        return Outcome.BUDGET
    return ""


def _remaining(config, context):
    """Seconds the next model call may take: the company's timeout, within the deadline."""
    timeout = config.timeout_seconds
    if context.deadline is not None:
        timeout = min(timeout, context.deadline - time.monotonic())
    return timeout


def _ask(config, context, system, turn):
    try:
        check_endpoint(config.base_url)
        api_key = config.api_key()
    except (SecretError, EndpointRefused) as exc:
        turn.outcome, turn.note = Outcome.MODEL_ERROR, str(exc)
        return
    messages = model_messages(system, context)
    if config.classifier_enabled:
        try:
            if not _classify(config, context, system, api_key, messages, turn):
                return
        except llm.ModelFailure as failure:
            _failed(turn, failure)
            return
    try:
        timeout = _remaining(config, context)
        if timeout < 0.5:
            raise llm.ModelFailure(Outcome.TIMEOUT, "the reply deadline passed before the answer")
        turn.models.append(config.model)
        reply = llm.answer(
            config.base_url,
            api_key,
            timeout,
            config.model,
            messages,
            config.temperature,
            config.max_tokens,
            tools=config.handover_tool_enabled,
        )
    except llm.ModelFailure as failure:
        turn.answer_ms = failure.ms
        _failed(turn, failure)
        return
    turn.answer_ms = reply.ms
    turn.tokens_in += reply.tokens_in
    turn.tokens_out += reply.tokens_out
    if reply.hand_over:
        turn.outcome, turn.hand_over = Outcome.HANDED_OVER, True
        turn.hand_over_note = reply.hand_over_reason or "the model handed the chat over"
        turn.text = config.handover_message
    else:
        turn.outcome, turn.text = Outcome.ANSWERED, reply.text


def _failed(turn, failure):
    turn.outcome, turn.note = failure.outcome, failure.reason
    turn.tokens_in += failure.tokens_in
    turn.tokens_out += failure.tokens_out


def _classify(config, context, system, api_key, messages, turn):
    """Stage 1. False when the turn ends here (ignore, or hand over)."""
    model = config.first_stage_model
    turn.models.append(model)
    instructions = CLASSIFY_INSTRUCTIONS.format(name=config.facts()["name"], prompt=system)
    try:
        verdict = llm.classify(
            config.base_url,
            api_key,
            _remaining(config, context),
            model,
            [{"role": "system", "content": instructions}, *messages[1:]],
        )
    except llm.ModelFailure as failure:
        turn.classify_ms = failure.ms
        raise
    turn.classify_ms = verdict.ms
    turn.tokens_in += verdict.tokens_in
    turn.tokens_out += verdict.tokens_out
    turn.language = verdict.language
    if verdict.action == "ignore":
        turn.outcome, turn.note = Outcome.IGNORED, verdict.reason
        return False
    if verdict.action == "needs_person":
        turn.outcome, turn.hand_over = Outcome.HANDED_OVER, True
        turn.hand_over_note = verdict.reason or "the classifier asked for a person"
        turn.text = config.handover_message
        return False
    return True


def _record(config, context, turn, version, started, now):
    replies = tuple(split_reply(turn.text)) if turn.text else ()
    cost = config.cost_of(turn.tokens_in, turn.tokens_out)
    note = turn.hand_over_note if turn.hand_over else turn.note
    run = AssistantRun.objects.create(
        company_id=config.company_id,
        message_id=context.message_id,
        chat_jid=context.chat_jid,
        is_test=context.is_test,
        handler=context.handler,
        model=config.model if config.model in turn.models else "",
        classifier_model=config.first_stage_model if config.classifier_enabled else "",
        prompt_version=version,
        outcome=turn.outcome,
        language=turn.language,
        tokens_in=turn.tokens_in,
        tokens_out=turn.tokens_out,
        classify_ms=turn.classify_ms,
        answer_ms=turn.answer_ms,
        total_ms=int((time.monotonic() - started) * 1000),
        cost=cost,
        replies=len(replies),
        note=note[:500],
        created_at=now,
    )
    return TurnResult(
        replies=replies,
        hand_over=turn.hand_over,
        hand_over_note=turn.hand_over_note,
        outcome=turn.outcome,
        note=note,
        model=run.model,
        prompt_version=version,
        tokens_in=turn.tokens_in,
        tokens_out=turn.tokens_out,
        cost=cost,
        run_id=run.pk,
    )
