"""The handler of the job cluster chaos test (runs inside the real cluster).

Every call appends "<message id> <attempt number> <previous outcome>" to the
file named by AIADMIN_CHAOS_CALLS (one O_APPEND write: whole lines even from
several processes), then takes a moment, so that kills land mid-run."""

import os
import time

from whatsapp.services.processing import HandlerResult


def record(message, attempt):
    line = f"{message.wa_message_id} {attempt.number} {attempt.previous_outcome or '-'}\n"
    fd = os.open(os.environ["AIADMIN_CHAOS_CALLS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    time.sleep(float(os.environ.get("AIADMIN_CHAOS_HANDLER_SECONDS", "0.3")))
    return HandlerResult(reply_text=f"re {message.wa_message_id}")
