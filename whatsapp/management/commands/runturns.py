"""Run the turn runner: the assistant pipeline's handlers (docs/processing.md, "Turns").

    manage.py runturns            # Procfile `turns`

One loop claims due turns (services.turns.claim_due_turns: a conditional
UPDATE with a lease, in order per chat) and runs each in a thread of a pool
of WHATSAPP_TURNS["WORKERS"] (handlers wait on I/O: an AI, a webhook). The same
loop enforces the reply deadlines, refreshes "typing..." for turns in flight,
and frees at once the turns of runner processes on this machine that died.
Any number of runners may run: each turn is claimed by one.

SIGTERM/SIGINT: stop claiming, let the turns in flight finish (up to --grace
seconds), exit. A runner killed mid-turn leaves its turns to the next claim
once their lease ends (or at once when a runner on the same machine sees its
process gone), and the handler is told it is a retry.
"""

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection

from whatsapp.services.turn_hints import WorkerHints
from whatsapp.services.turns import (
    claim_due_turns,
    enforce_turn_deadlines,
    release_dead_turn_attempts,
    run_turn,
)

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the turn runner (turn handlers, reply deadlines)."

    def add_arguments(self, parser):
        parser.add_argument("--grace", type=float, default=30.0)

    def handle(self, *args, grace, **options):
        conf = settings.WHATSAPP_TURNS
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        hints = WorkerHints() if conf["HINTS"] else None
        in_flight = {}  # turn id -> (company id, chat jid, last composing sent)
        lock = threading.Lock()
        workers = conf["WORKERS"]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="turn")

        def work(pk, attempt):
            try:
                run_turn(pk, attempt, hints=hints)
            except Exception:
                logger.exception("turn %s: the runner failed", pk)
            finally:
                with lock:
                    in_flight.pop(pk, None)
                connection.close()

        last_deadlines = last_dead = 0.0
        self.stdout.write(f"turn runner: {workers} threads")
        while not stop.is_set():
            close_old_connections()
            now = time.monotonic()
            try:
                if now - last_dead >= 5:
                    release_dead_turn_attempts()
                    last_dead = now
                if now - last_deadlines >= 1:
                    enforce_turn_deadlines()
                    last_deadlines = now
                with lock:
                    free = workers - len(in_flight)
                claimed = claim_due_turns(limit=free) if free > 0 else []
            except Exception:
                logger.exception("turn runner: a round failed")
                connection.close()
                stop.wait(1.0)
                continue
            for pk, attempt in claimed:
                with lock:
                    in_flight[pk] = now
                pool.submit(work, pk, attempt)
            self._refresh_presence(in_flight, lock, hints, now, conf["PRESENCE_REFRESH"])
            if not claimed:
                stop.wait(conf["POLL"])
        self.stdout.write(f"turn runner stopping: {len(in_flight)} turn(s) in flight")
        deadline = time.monotonic() + grace
        while in_flight and time.monotonic() < deadline:
            time.sleep(0.1)
        pool.shutdown(wait=False, cancel_futures=True)
        connection.close()

    @staticmethod
    def _refresh_presence(in_flight, lock, hints, now, every):
        """Composing presence fades after a while on the phone: send it again
        for turns still being handled."""
        from whatsapp.models import Turn

        if hints is None:
            return
        with lock:
            due = [pk for pk, sent in in_flight.items() if now - sent >= every]
            for pk in due:
                in_flight[pk] = now
        if not due:
            return
        for company_id, chat in Turn.objects.filter(
            pk__in=due, status=Turn.Status.RUNNING
        ).values_list("company_id", "chat_jid"):
            hints.composing(company_id, chat)
