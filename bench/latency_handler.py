"""The handler bench/latency.py gives its company: it notes when it started.

Runs inside the real qcluster; the start time (wall clock, same machine as the
benchmark) is stored as the job's result note, so measuring adds no writes.
"""

import time

from whatsapp.services.processing import HandlerResult


def record_start(message):
    return HandlerResult(note=f"started {time.time():.6f}")
