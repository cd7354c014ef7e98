"""Turn handlers the turn e2e tests register in their processes
(WHATSAPP_EXTRA_INBOUND_HANDLERS)."""

import time

from whatsapp.services.turn_contract import SendText, turn_handler


@turn_handler(timeout=30)
def slow_turn(ctx):
    """Thinks 4 s, then says which attempt answered and how the previous ended."""
    time.sleep(4)
    return SendText(f"attempt {ctx.attempt.number} after {ctx.attempt.previous_outcome or '-'}")
