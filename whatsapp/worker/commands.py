"""Channel messages the session worker accepts, decoded and validated.

Every command is an idempotent hint ("look at company N now"): the database
holds what to do. A message that is not one of these is rejected with a
clear reason and never crashes the worker.
"""

from dataclasses import dataclass, field

from whatsapp.services.worker_hints import COMMAND_TYPES

# Worker-internal messages (not sent by the web side).
INTERNAL_TYPES = {"worker.boot", "worker.wake"}
MAX_COMPANY_ID = 2**63 - 1


class InvalidCommand(ValueError):
    """The message is not a command we understand; the text says why."""


@dataclass(frozen=True)
class Command:
    type: str
    company_id: int | None = None
    payload: dict = field(default_factory=dict)

    @property
    def action(self):
        """`session.restart` -> `restart`, `message.send` -> `send`."""
        return self.type.rsplit(".", 1)[-1]


def describe(message, limit=200):
    text = repr(message)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_command(message):
    """A channel message -> Command, or raise InvalidCommand."""
    if not isinstance(message, dict):
        raise InvalidCommand(f"a command is a dict, got {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidCommand("the message has no 'type'")
    if kind in INTERNAL_TYPES:
        return Command(kind)
    if kind not in COMMAND_TYPES:
        known = ", ".join(sorted(COMMAND_TYPES))
        raise InvalidCommand(f"unknown command type {kind!r} (known: {known})")
    company_id = message.get("company_id")
    if isinstance(company_id, bool) or not isinstance(company_id, int):
        if isinstance(company_id, str) and company_id.strip().isdigit():
            company_id = int(company_id.strip())
        else:
            raise InvalidCommand(
                f"{kind}: 'company_id' must be a positive integer, got {company_id!r}"
            )
    if not 0 < company_id <= MAX_COMPANY_ID:
        raise InvalidCommand(f"{kind}: 'company_id' must be a positive integer, got {company_id}")
    payload = {k: v for k, v in message.items() if k not in {"type", "company_id"}}
    if kind == "message.send" and "outbound_id" in payload:
        outbound_id = payload["outbound_id"]
        if isinstance(outbound_id, bool) or not isinstance(outbound_id, int):
            raise InvalidCommand(
                f"message.send: 'outbound_id' must be an integer, got {outbound_id!r}"
            )
    return Command(kind, company_id, payload)
