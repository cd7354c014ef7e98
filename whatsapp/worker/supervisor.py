"""The session supervisor: every live client of one worker process.

One supervisor per process, on the process's one asyncio loop. This module
holds its settings and its life: `start` registers the worker and starts the
loops; `shutdown` stops every client, releases every lease at once and marks
the worker stopped, so other workers take over without waiting for the TTL;
clients start one at a time, and a semaphore bounds concurrent connect
attempts (WHATSAPP["CONNECT_CONCURRENCY"]). The rest lives beside it:

* ownership.py (LeaseOwnership): leases, renewal and self-fencing, fair share
  and rebalancing, dead peers, the reconcile round;
* command_handling.py (CommandHandling): commands from the consumer and hints
  from the sessions ("look at company N now");
* session.py (ManagedSession): one owned company's client.
"""

import asyncio
import logging
import time

from channels.db import database_sync_to_async as db
from channels.layers import get_channel_layer
from django.conf import settings

from whatsapp.services import leases, live, local_processes
from whatsapp.services import sessions as svc
from whatsapp.services.leases import WORKER_CHANNEL_PREFIX
from whatsapp.transport.base import get_transport

from .command_handling import CommandHandling
from .inbound import InboundBatcher
from .media import MediaDownloader
from .ownership import LeaseOwnership

logger = logging.getLogger(__name__)
LOOPS = {"lease-loop", "reconcile-loop", "fence-loop", "peer-loop"}


class SessionSupervisor(LeaseOwnership, CommandHandling):
    def __init__(self, worker_id=None, transport=None, channel_name=None):
        conf = settings.WHATSAPP
        self.worker_id = worker_id or leases.new_worker_id()
        self.channel_name = channel_name or f"{WORKER_CHANNEL_PREFIX}{self.worker_id}"
        self.transport = transport if transport is not None else get_transport()
        self.lease_ttl = conf["LEASE_TTL"]
        self.interval = conf["RECONCILE_INTERVAL"]
        self.watchdog_silence = conf["WATCHDOG_SILENCE"]
        self.max_sessions = conf["MAX_SESSIONS_PER_WORKER"]
        cap = getattr(self.transport, "session_cap", None)  # neonize on a postgres store
        if cap is not None and cap():
            self.max_sessions = min(self.max_sessions, cap())
        self.connect_timeout = conf.get("CONNECT_TIMEOUT", 75.0)
        self.stop_timeout = conf.get("STOP_TIMEOUT", 15.0)
        # A hand-over lets a send in flight finish this long before the client stops.
        self.send_budget = conf.get("SEND_HANDOVER_BUDGET", 5.0)
        # Rows left in `sending` are sent again with their id only if our
        # transport sends with it (whatsapp.services.sending).
        self.sends_with_id = bool(getattr(self.transport, "sends_with_id", False))
        self.rebalance = conf.get("REBALANCE", True)
        self.rebalance_batch = conf.get("REBALANCE_BATCH", 5)
        self.inbound = InboundBatcher(conf.get("INBOUND_BATCH", 100))  # group commit
        self.media = MediaDownloader(self)  # media of received messages
        self.peer_interval = conf.get("PEER_CHECK_INTERVAL", 0.5)
        # Only where a dead peer can be told apart (Linux /proc); 0 turns it off.
        self.watch_peers = self.peer_interval > 0 and bool(local_processes.host_key())
        self._peers = {}  # worker id -> ProcessIdentity of workers on this machine
        # Stop clients this long before our leases could expire if renewing stalls.
        self.fence_margin = min(1.0, self.lease_ttl * 0.25)
        self.sessions = {}  # company_id -> ManagedSession
        self.connect_slots = None
        self.start_lock = None
        self.closing = False
        self.started = False
        self.rejected = 0
        self.last_rejected = ""
        self._tasks = set()
        self._wake = None
        self._lease_deadline = None
        self.rounds = 0  # reconcile rounds begun (tests wait for rounds, not seconds)
        self._dropping = {}  # company_id -> task stopping a lost session's client
        self._expiry_wake = None  # timer: wake when a dead worker's lease runs out
        self.loop_lag = 0.0  # worst event-loop lateness (s) since the last heartbeat
        # Clients that ended in this process. A transport that leaks a handle per
        # client (neonize) says how many this process may accumulate; past that,
        # `recycle_requested` is set and runworker restarts the process in place.
        budget = getattr(self.transport, "leak_budget", None)
        self.leak_budget = budget() if budget is not None else 0
        self.clients_ended = 0
        self.recycle_requested = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------
    async def start(self):
        """Idempotent: the first call registers the worker and starts the loops."""
        if self.started or self.closing:
            return
        self.started = True
        self.connect_slots = asyncio.Semaphore(settings.WHATSAPP["CONNECT_CONCURRENCY"])
        self.start_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        await db(leases.register_worker)(self.worker_id, self.channel_name)
        self._lease_deadline = time.monotonic() + self.lease_ttl - self.fence_margin
        self.spawn(self._lease_loop(), "lease-loop")
        self.spawn(self._reconcile_loop(), "reconcile-loop")
        self.spawn(self._fence_loop(), "fence-loop")
        self.spawn(self.media.run(), "media-loop")
        if self.watch_peers:
            self.spawn(self._peer_loop(), "peer-loop")
        logger.info(
            "worker %s started on %s (transport %s)",
            self.worker_id,
            self.channel_name,
            getattr(self.transport, "name", type(self.transport).__name__),
        )

    async def shutdown(self, reason="worker stopping", budget=None):
        """Stop every client, release every lease, mark the worker stopped.

        A lease is released only once its client has stopped; a client that
        does not stop within `budget` seconds keeps its lease, which then
        expires after the TTL (never two live clients for one company)."""
        if self.closing:
            return
        self.closing = True
        budget = self.stop_timeout if budget is None else budget
        if self._expiry_wake is not None:
            self._expiry_wake.cancel()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current and task.get_name() in LOOPS:
                task.cancel()
        owned = list(self.sessions.values())
        self.sessions.clear()
        # Every client stops concurrently (a send in flight first finishes, within
        # at most half the budget); then one transaction marks them all stopped
        # and releases the leases (not two round trips per session).
        send_budget = min(self.send_budget, budget / 2)
        results = await asyncio.gather(
            *(
                asyncio.wait_for(ms.close(reason, record=False, send_budget=send_budget), budget)
                for ms in owned
            ),
            return_exceptions=True,
        )
        stuck, clients = [], {}
        for ms, result in zip(owned, results, strict=True):
            if isinstance(result, BaseException):
                stuck.append(ms.session_id)
                logger.error(
                    "company %s: client did not stop cleanly (%r); its lease expires "
                    "in %.0fs instead",
                    ms.company_id,
                    result,
                    self.lease_ttl,
                )
            elif result is not None:
                clients[ms.session_id] = result
        changed = []
        try:
            released, changed = await db(svc.hand_over)(
                self.worker_id, [ms.held for ms in owned], reason, clients, stuck
            )
            await db(leases.mark_worker_stopped)(self.worker_id, reason)
            others = await db(leases.other_worker_channels)(self.worker_id)
        except Exception:
            logger.exception(
                "worker %s: could not release leases; they expire in %.0fs",
                self.worker_id,
                self.lease_ttl,
            )
            released, others = 0, []
        await self._wake_others(others)
        await db(live.publish_many)(changed)  # staff browsers, after the hand-over
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        closer = getattr(self.transport, "aclose", None)
        if closer is not None:
            try:
                await asyncio.wait_for(closer(), budget)
            except Exception as exc:
                logger.warning("transport close: %r", exc)
        logger.info(
            "worker %s stopped: %s clients stopped, %s leases released",
            self.worker_id,
            len(owned) - len(stuck),
            released,
        )

    async def _wake_others(self, channels):
        layer = get_channel_layer()
        if layer is None:
            return
        for channel in channels:
            try:
                await asyncio.wait_for(layer.send(channel, {"type": "worker.wake"}), 2)
            except Exception as exc:
                logger.info("could not wake %s: %r", channel, exc)

    def client_ended(self):
        """Count an ended client; ask for a recycle once the leak budget is spent."""
        self.clients_ended += 1
        if (
            self.leak_budget
            and self.clients_ended >= self.leak_budget
            and not self.recycle_requested.is_set()
        ):
            logger.warning(
                "worker %s: %d clients ended in this process (each leaves a store handle "
                "open in neonize); recycling the process",
                self.worker_id,
                self.clients_ended,
            )
            self.recycle_requested.set()

    # --- task bookkeeping --------------------------------------------------------
    def spawn(self, coro, name):
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.track(task)
        return task

    def track(self, task):
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task):
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("worker task %s failed", task.get_name(), exc_info=task.exception())

    async def settle(self, timeout=10.0):
        """Wait until no per-session work is running (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [t for t in self._tasks if not t.done() and t.get_name() not in LOOPS]
            if not busy:
                return True
            await asyncio.wait(busy, timeout=max(0.01, deadline - time.monotonic()))
        return False
