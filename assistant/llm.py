"""The boundary to the model: an OpenAI-compatible chat-completions API through
the official `openai` client. Two calls: `classify` (structured output: a JSON
schema) and `answer` (free text, with the hand-over tool offered).

Every failure becomes one `ModelFailure` carrying an Outcome and a short
reason built from the error's type and HTTP status only: never the response
body (a provider's 401 text quotes part of the key) and never the key.
"""

import functools
import json
import platform
import time
from dataclasses import dataclass

import openai

from .models import Outcome

# The client sends the platform in its headers: platform.processor() runs `uname -p`
# once per process. Done here, at import, not in the middle of the first reply.
platform.processor()

HANDOVER_TOOL = "hand_over_to_person"
ACTIONS = ("answer", "needs_person", "ignore")

CLASSIFY_SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": list(ACTIONS)},
        "language": {"type": "string"},
        "reason": {"type": "string"},
    },
    "required": ["action", "language", "reason"],
    "additionalProperties": False,
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": HANDOVER_TOOL,
            "description": "Hand the chat to a person of the business: when the client asks "
            "for a person, complains, or needs something you cannot answer from the facts.",
            "parameters": {
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "Why, in a few words."}},
                "required": ["reason"],
                "additionalProperties": False,
            },
        },
    }
]


class ModelFailure(Exception):
    def __init__(self, outcome, reason, ms=0, tokens_in=0, tokens_out=0):
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.ms = ms
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out


@dataclass(frozen=True)
class Classification:
    action: str
    language: str
    reason: str
    tokens_in: int
    tokens_out: int
    ms: int


@dataclass(frozen=True)
class Answer:
    text: str
    hand_over: bool
    hand_over_reason: str
    tokens_in: int
    tokens_out: int
    ms: int


@functools.lru_cache(maxsize=64)
def _client(base_url, api_key):
    """One client (and its connection pool) per endpoint and key in this process.
    Retries are ours to decide (none: the reply deadline matters more)."""
    return openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0)


def _usage(completion):
    usage = getattr(completion, "usage", None)
    if usage is None:
        return 0, 0
    return usage.prompt_tokens or 0, usage.completion_tokens or 0


def _reason(exc):
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")


def _call(base_url, api_key, timeout, **request):
    started = time.monotonic()
    try:
        completion = _client(base_url, api_key).chat.completions.create(timeout=timeout, **request)
    except openai.APITimeoutError as exc:
        raise ModelFailure(Outcome.TIMEOUT, _reason(exc), _ms(started)) from None
    except openai.OpenAIError as exc:
        # ContentFilterFinishReasonError and a 400 "content policy" count as refusals.
        outcome = (
            Outcome.REFUSED
            if isinstance(exc, openai.ContentFilterFinishReasonError)
            else Outcome.MODEL_ERROR
        )
        raise ModelFailure(outcome, _reason(exc), _ms(started)) from None
    ms = _ms(started)
    tokens_in, tokens_out = _usage(completion)
    if not completion.choices:
        raise ModelFailure(
            Outcome.MODEL_ERROR, "no choices in the answer", ms, tokens_in, tokens_out
        )
    choice = completion.choices[0]
    refusal = getattr(choice.message, "refusal", None)
    if refusal or choice.finish_reason == "content_filter":
        raise ModelFailure(Outcome.REFUSED, "the model refused", ms, tokens_in, tokens_out)
    return choice, tokens_in, tokens_out, ms


def _ms(started):
    return int((time.monotonic() - started) * 1000)


def classify(base_url, api_key, timeout, model, messages):
    """Stage 1: answer / needs_person / ignore, and the client's language."""
    choice, tokens_in, tokens_out, ms = _call(
        base_url,
        api_key,
        timeout,
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=120,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "turn_classification",
                "strict": True,
                "schema": CLASSIFY_SCHEMA,
            },
        },
    )
    try:
        data = json.loads(choice.message.content or "")
        action = data["action"]
        if action not in ACTIONS:
            raise ValueError(action)
        language = str(data.get("language") or "")[:32]
        reason = str(data.get("reason") or "")[:200]
    except (ValueError, KeyError, TypeError):
        raise ModelFailure(
            Outcome.INVALID,
            "the classifier's answer does not match its schema",
            ms,
            tokens_in,
            tokens_out,
        ) from None
    return Classification(action, language, reason, tokens_in, tokens_out, ms)


def answer(base_url, api_key, timeout, model, messages, temperature, max_tokens, tools=True):
    """Stage 2: the reply, or a call of the hand-over tool."""
    request = {
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    if tools:
        request["tools"] = TOOLS
    choice, tokens_in, tokens_out, ms = _call(base_url, api_key, timeout, **request)
    for call in choice.message.tool_calls or ():
        function = getattr(call, "function", None)
        if function is not None and function.name == HANDOVER_TOOL:
            try:
                reason = str(json.loads(function.arguments or "{}").get("reason") or "")
            except (ValueError, AttributeError):
                reason = ""
            return Answer(
                choice.message.content or "", True, reason[:200], tokens_in, tokens_out, ms
            )
    text = (choice.message.content or "").strip()
    if not text:
        raise ModelFailure(Outcome.MODEL_ERROR, "empty answer", ms, tokens_in, tokens_out)
    return Answer(text, False, "", tokens_in, tokens_out, ms)
