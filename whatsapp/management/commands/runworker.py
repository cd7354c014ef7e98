"""`manage.py runworker whatsapp`: the session worker process.

Extends channels' runworker so that each worker process

* listens on a channel of its own, `whatsapp.worker.<worker id>` (two
  runworkers reading one channel get duplicates from channels_redis), and
  registers itself as a WorkerProcess row with that channel;
* sends itself a `worker.boot` message, because runworker creates the
  consumer (and so the supervisor's loops) only on its first message;
* drops messages without a `type` instead of dying on them;
* on SIGTERM/SIGINT stops its clients, releases its leases at once, marks
  itself stopped and exits within a few seconds (a second signal, or a hang
  past WHATSAPP["SHUTDOWN_GRACE"], exits at once);
* recycles itself when neonize's leaked store handles reach the transport's
  budget: the same graceful stop, then it re-executes itself in place.
"""

import asyncio
import functools
import logging
import os
import signal
import sys
import threading

from channels.management.commands.runworker import Command as ChannelsRunworker
from channels.worker import Worker
from django.conf import settings
from django.core.management.base import CommandError
from django.db import close_old_connections, connections

from whatsapp.services.leases import WorkerIdInUse, claim_worker_id, new_worker_id
from whatsapp.worker.commands import describe
from whatsapp.worker.runtime import install_supervisor
from whatsapp.worker.supervisor import SessionSupervisor

logger = logging.getLogger("whatsapp.worker")

WORKER_GROUP = "whatsapp"


class SessionWorker(Worker):
    """A channels Worker that owns a SessionSupervisor and stops it cleanly."""

    def __init__(self, *args, supervisor, grace, **kwargs):
        super().__init__(*args, **kwargs)
        self.supervisor = supervisor
        self.grace = grace
        self.stop_reason = None
        self.recycle = False
        self._stop = None

    def request_stop(self, signum):
        name = signal.Signals(signum).name
        if self.stop_reason is not None:
            logger.warning("second %s: exiting now", name)
            os._exit(1)
        self.stop_reason = f"{name} received"
        logger.info("worker %s: %s, stopping", self.supervisor.worker_id, name)
        _exit_if_stuck(self.grace)
        self._stop.set()

    async def handle(self):
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        await self.channel_layer.send(self.supervisor.channel_name, {"type": "worker.boot"})
        listeners = [loop.create_task(self.listener(channel)) for channel in self.channels]
        stopper = loop.create_task(self._stop.wait())
        recycler = loop.create_task(self.supervisor.recycle_requested.wait())
        await asyncio.wait([*listeners, stopper, recycler], return_when=asyncio.FIRST_COMPLETED)
        if self.stop_reason is None and recycler.done():
            self.stop_reason = (
                f"recycling the process after {self.supervisor.clients_ended} clients "
                "(neonize leaks a store handle per client)"
            )
            self.recycle = True
            _exit_if_stuck(self.grace)
        for task in [*listeners, stopper, recycler]:
            task.cancel()
        await self.supervisor.shutdown(
            self.stop_reason or "worker stopping", budget=max(1.0, self.grace * 0.6)
        )
        for details in list(self.application_instances.values()):
            details["future"].cancel()

    async def listener(self, channel):
        failures = 0
        while True:
            try:
                message = await self.channel_layer.receive(channel)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # layer down: hints pause, the reconcile loop goes on
                failures += 1
                logger.warning("receiving on %s failed (%r); retrying", channel, exc)
                await asyncio.sleep(min(30, 0.5 * 2 ** min(failures, 6)))
                continue
            if not isinstance(message, dict) or not message.get("type"):
                logger.error(
                    "dropped a message without a type on %s: %s", channel, describe(message)
                )
                continue
            scope = {"type": "channel", "channel": channel}
            queue = self.get_or_create_application_instance(channel, scope)
            await queue.put(message)


def _worker_database_connection(worker_id):
    """All database calls of the worker run on one thread (channels'
    database_sync_to_async): keep that thread's connection for
    WHATSAPP["WORKER_CONN_MAX_AGE"] seconds (default 60, health checks on)
    instead of opening one per call, which made connecting 200 sessions 2-3x
    slower (docs/benchmarks.md). The connection carries the worker id as its
    application_name, so pg_stat_activity shows which worker it is."""
    db = connections.settings["default"]
    db["CONN_MAX_AGE"] = settings.WHATSAPP.get("WORKER_CONN_MAX_AGE", 60)
    if not db["ENGINE"].endswith("postgresql"):
        # SQLite too: reopening the file (and its PRAGMAs) before every call
        # took ~15% of the database thread under load (py-spy, docs/benchmarks.md).
        return
    db["OPTIONS"] = {
        **db.get("OPTIONS", {}),
        "application_name": f"aiadmin-worker {worker_id}"[:63],
    }


def _exit_if_stuck(grace):
    def watchdog():
        threading.Event().wait(grace)
        logger.error("worker did not stop within %.0fs; exiting anyway", grace)
        os._exit(1)

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()


def _reexec(worker_id):
    """Replace this process with a fresh one (same pid, so the process manager
    sees nothing). Its leases are released already; open handles are
    close-on-exec (Go opens everything with O_CLOEXEC), so the leak is gone."""
    connections.close_all()
    logger.warning("worker %s: re-executing %s", worker_id, " ".join(sys.argv))
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.argv])


class Command(ChannelsRunworker):
    help = (
        "Run worker processes. `runworker whatsapp` runs the WhatsApp session worker on "
        "its own channel whatsapp.worker.<worker id>."
    )
    worker_class = SessionWorker

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--worker-id",
            dest="worker_id",
            default="",
            help="Worker id (default: <host>.<pid>.<random>).",
        )

    def handle(self, *args, **options):
        if WORKER_GROUP not in options["channels"]:
            self.worker_class = Worker
            return super().handle(*args, **options)
        worker_id = options.get("worker_id") or new_worker_id()
        supervisor = install_supervisor(SessionSupervisor(worker_id=worker_id))
        try:
            claim_worker_id(worker_id, supervisor.channel_name)
        except WorkerIdInUse as exc:
            raise CommandError(str(exc)) from None
        close_old_connections()
        connections.close_all()
        _worker_database_connection(worker_id)
        channels = [
            supervisor.channel_name if c == WORKER_GROUP else c for c in options["channels"]
        ]
        # channels' handle() builds the worker from three arguments only.
        self.worker_class = functools.partial(
            SessionWorker,
            supervisor=supervisor,
            grace=settings.WHATSAPP.get("SHUTDOWN_GRACE", 10.0),
        )
        logger.info("worker %s listening on %s", worker_id, ", ".join(channels))
        result = super().handle(*args, **{**options, "channels": channels})
        if supervisor.recycle_requested.is_set() and supervisor.closing:
            _reexec(worker_id)
        return result
