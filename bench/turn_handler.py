"""The turn handler bench/turns.py gives its companies: a fixed think time.

Runs inside the real turn runner (manage.py runturns). It answers with the
last message of the turn and how many messages the turn had, so the
benchmark can tell from each reply which burst it answers and whether the
turn held the whole burst."""

import os
import time

from whatsapp.services.turn_contract import SendText, turn_handler

THINK = float(os.environ.get("BENCH_THINK_SECONDS", "2.0"))


@turn_handler(timeout=THINK + 10)
def think(ctx):
    time.sleep(THINK)
    return SendText(f"re {ctx.messages[-1].text} n={len(ctx.messages)}")
