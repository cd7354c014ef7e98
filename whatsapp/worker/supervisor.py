"""The session supervisor: every live client of one worker process.

One supervisor per process, on the process's one asyncio loop. It

* renews its leases every WHATSAPP["RECONCILE_INTERVAL"] and stops the client
  of every lease it no longer holds before anything else; if renewing is
  overdue (database unreachable) it stops its clients before the leases can
  expire (self-fencing), so another worker never overlaps with it;
* acquires free leases up to its fair share of the live workers (capped by
  WHATSAPP["MAX_SESSIONS_PER_WORKER"]) and hands surplus sessions back when
  new workers join;
* reconciles every owned session from its row (the database is the truth;
  channel messages only make this happen sooner);
* starts clients one at a time and limits concurrent connect attempts with a
  semaphore (WHATSAPP["CONNECT_CONCURRENCY"]);
* on shutdown stops every client, releases every lease at once and marks the
  worker stopped, so other workers take over without waiting for the TTL;
* watches the other workers on its machine: when one's process is gone
  (SIGKILL, a crash) it frees that worker's leases at once, so its sessions are
  taken over without waiting for the TTL either (local_processes).
"""

import asyncio
import logging
import time

from channels.db import database_sync_to_async as db
from channels.layers import get_channel_layer
from django.conf import settings

from whatsapp.services import leases, live, local_processes, sending
from whatsapp.services import sessions as svc
from whatsapp.services.control import ensure_session
from whatsapp.services.leases import WORKER_CHANNEL_PREFIX
from whatsapp.transport.base import get_transport

from .commands import describe
from .inbound import InboundBatcher
from .session import ManagedSession

logger = logging.getLogger(__name__)
LOOPS = {"lease-loop", "reconcile-loop", "fence-loop", "peer-loop"}


class SessionSupervisor:
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
        self._round = 0
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

    # --- commands (from the consumer) -------------------------------------------
    async def handle_command(self, command):
        await self.start()
        if command.type == "worker.boot":
            return
        if command.type == "worker.wake":
            self.wake()
            return
        ms = self.sessions.get(command.company_id)
        if command.type in {"chat.read", "chat.presence"}:
            if ms is not None:  # what the client sees: best effort, owner only
                ms.spawn(ms.chat_hint(command.type, command.payload), "hint")
            return
        if ms is None:
            if command.action in {"send", "stop", "logout"}:
                # Not ours: the owner (or the next reconcile) handles the row.
                self.wake()
                return
            self.spawn(self._adopt_company(command.company_id), f"adopt:{command.company_id}")
            return
        if command.action == "send":
            self.wants_drain(ms)
        else:
            self.nudge_company(command.company_id)

    async def reject(self, message, error):
        """A malformed or unknown command: logged, counted, recorded when we can."""
        self.rejected += 1
        self.last_rejected = f"{error}: {describe(message)}"
        logger.error(
            "worker %s rejected a command: %s; message: %s",
            self.worker_id,
            error,
            describe(message),
        )
        company_id = message.get("company_id") if isinstance(message, dict) else None
        ms = self.sessions.get(company_id) if isinstance(company_id, int) else None
        if ms is not None:
            await db(svc.record_error)(ms.held, f"rejected command: {error}")

    def wake(self):
        if self._wake is not None:
            self._wake.set()

    def nudge_company(self, company_id):
        """Reconcile one owned company now (coalesced; safe from call_later)."""
        ms = self.sessions.get(company_id)
        if ms is None or self.closing or ms.busy("nudge"):
            return
        ms.spawn(self._reconcile_one(ms), "nudge")

    def wants_drain(self, ms):
        if self.closing:
            return
        if ms.busy("drain"):
            ms.drain_again = True  # the running drain claims once more before it ends
        else:
            ms.spawn(ms.drain(), "drain")

    async def _reconcile_one(self, ms):
        row = await db(svc.load_session)(ms.session_id)
        await ms.reconcile(row)

    async def _adopt_company(self, company_id):
        if len(self.sessions) >= self.max_sessions or self.closing:
            return
        try:
            await db(ensure_session)(company_id)
        except Exception as exc:  # Company.DoesNotExist and friends
            logger.error("worker %s: command for company %s: %s", self.worker_id, company_id, exc)
            self.rejected += 1
            self.last_rejected = f"company {company_id}: {exc}"
            return
        won = await db(leases.acquire_leases)(self.worker_id, 1, company_id)
        for held in won:
            ms = await self._adopt(held)
            await self._reconcile_one(ms)

    # --- ownership ----------------------------------------------------------------
    async def _adopt(self, held):
        adopted = await self._adopt_many([held])
        return adopted[0]

    async def _adopt_many(self, helds):
        """ManagedSessions for leases just acquired. Rows a previous owner left
        in `sending` (it died mid-send) are dealt with first, in one database
        call for all, so no send of ours can start before that: queued again to
        be sent with their id, or failed as outcome unknown without one."""
        fresh = []
        for held in helds:
            dropping = self._dropping.get(held.company_id)
            if dropping is not None:  # close before create, across lease epochs too
                await asyncio.wait({dropping})
            ms = self.sessions.get(held.company_id)
            if ms is None or ms.held != held:
                fresh.append(held.company_id)
        recovered = {}
        if fresh:
            recovered = await db(sending.recover_interrupted_sends_of)(fresh, self.sends_with_id)
        for company_id, (resent, failed) in recovered.items():
            logger.warning(
                "company %s: message(s) interrupted by the previous owner: %s sent again "
                "with the same id, %s marked failed (outcome unknown)",
                company_id,
                resent,
                failed,
            )
        adopted = []
        for held in helds:
            ms = self.sessions.get(held.company_id)
            if ms is None or ms.held != held:
                if ms is not None:  # same company, older epoch: void
                    await ms.close("lease re-acquired with a new epoch")
                ms = ManagedSession(self, held)
                self.sessions[held.company_id] = ms
            adopted.append(ms)
        return adopted

    async def lease_lost(self, ms, reason, send_budget=None):
        """Forget `ms` now and stop its client from another task (the caller may
        hold the session's lock) once a send in flight finished (`send_budget`).
        A later adoption of the company waits for it."""
        if self.sessions.get(ms.company_id) is ms:
            del self.sessions[ms.company_id]
        if ms.company_id not in self._dropping:
            task = self.spawn(self._drop(ms, reason, send_budget), f"drop:{ms.company_id}")
            self._dropping[ms.company_id] = task
            task.add_done_callback(lambda _t, cid=ms.company_id: self._dropping.pop(cid, None))

    async def _drop(self, ms, reason, send_budget=None):
        await ms.close(f"lease lost: {reason}", send_budget=send_budget)
        await db(svc.record_event)(ms.held, svc.Kind.LEASE_LOST, reason)

    async def release(self, ms, reason):
        """Give a session up (lock held, client already stopped)."""
        ms.closed = True
        if self.sessions.get(ms.company_id) is ms:
            del self.sessions[ms.company_id]
        await db(leases.release_lease)(self.worker_id, ms.session_id, reason)

    # --- the loops ------------------------------------------------------------------
    async def _lease_loop(self):
        """Renew leases twice per reconcile interval, apart from the (longer)
        reconcile work, so a slow round can never let a lease lapse."""
        while not self.closing:
            began = time.monotonic()
            try:
                await self.renew_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %s: renewing leases failed", self.worker_id)
            await asyncio.sleep(max(0.05, self.interval / 2 - (time.monotonic() - began)))

    async def _reconcile_loop(self):
        while not self.closing:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %s: reconcile round failed", self.worker_id)
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _fence_loop(self):
        """If renewing stalls, stop our clients before the leases can expire."""
        period = min(0.25, self.interval / 4)
        while not self.closing:
            slept = time.monotonic()
            await asyncio.sleep(period)
            # How late the loop woke us: what every session's work waits for too.
            self.loop_lag = max(self.loop_lag, time.monotonic() - slept - period)
            if self.sessions and time.monotonic() > self._lease_deadline:
                logger.error(
                    "worker %s: lease renewal overdue; stopping %d client(s) before "
                    "the leases expire",
                    self.worker_id,
                    len(self.sessions),
                )
                # A send in flight may finish only while the lease surely holds.
                for ms in list(self.sessions.values()):
                    await self.lease_lost(
                        ms,
                        "lease renewal overdue (database unreachable?)",
                        send_budget=self.fence_margin / 2,
                    )

    async def _peer_loop(self):
        """Free the leases of a worker on this machine as soon as its process is
        gone: its clients died with it, so nobody needs to wait for the TTL."""
        while not self.closing:
            await asyncio.sleep(self.peer_interval)
            freed = 0
            for worker_id, identity in list(self._peers.items()):
                if not local_processes.is_gone(identity):
                    continue
                self._peers.pop(worker_id, None)
                try:
                    freed += await db(leases.free_dead_worker)(worker_id, identity, self.worker_id)
                except Exception:
                    logger.exception("worker %s: freeing dead %s failed", self.worker_id, worker_id)
            if freed and not self.closing:
                self.wake()
                await self._wake_others(await db(leases.other_worker_channels)(self.worker_id))

    def leases_fresh(self):
        """Whether our last renewal is recent enough to act on our leases."""
        return self._lease_deadline is not None and time.monotonic() < self._lease_deadline

    async def renew_once(self):
        """Extend our leases; stop at once the client of every lease we lost."""
        began = time.monotonic()
        held = await db(leases.renew_leases)(self.worker_id)
        self._lease_deadline = began + self.lease_ttl - self.fence_margin
        for ms in list(self.sessions.values()):
            if ms.adopted_at > began:  # acquired after our snapshot was taken
                continue
            current = held.get(ms.session_id)
            if current is None or current.epoch != ms.held.epoch:
                await self.lease_lost(ms, "lease expired or taken over")
        for h in held.values():
            if h.company_id in self.sessions or self.closing:
                continue
            # Acquired, but its adoption was interrupted -- or released (or dropped)
            # since the snapshot was taken: ask the database again before adopting.
            if h.company_id not in self._dropping and await db(leases.holds_lease)(h):
                await self._adopt(h)
        lag, self.loop_lag = self.loop_lag, 0.0
        await db(leases.heartbeat_worker)(self.worker_id, len(self.sessions), round(lag * 1000, 1))

    async def reconcile_once(self):
        """Share the load, acquire free leases, and make every owned session's
        client match its row."""
        self._round += 1
        if self.watch_peers:
            self._peers = await db(leases.local_peers)(self.worker_id)
        target = self.max_sessions
        if self.rebalance:
            target = min(target, await db(leases.fair_share)())
            await self._shed(len(self.sessions) - target)
        room = target - len(self.sessions)
        if room > 0 and not self.closing and self.leases_fresh():
            won = await db(leases.acquire_leases)(self.worker_id, room)
            await self._adopt_many(won)
            if len(won) < room:
                await self._wake_at_next_expiry()
        await self._reconcile_owned()

    async def _wake_at_next_expiry(self):
        """With room left, come back when another worker's lease runs out (a
        dead worker's), instead of at the next round up to an interval later."""
        delay = await db(leases.seconds_to_next_expiry)(self.worker_id)
        if delay is None or delay >= self.interval:
            return
        if self._expiry_wake is not None:
            self._expiry_wake.cancel()
        loop = asyncio.get_running_loop()
        # Never sooner than 0.25 s: a wake that finds the lease still held
        # (clocks, rounding) must not turn into a tight loop of rounds.
        self._expiry_wake = loop.call_later(max(0.25, delay + 0.05), self.wake)

    async def _shed(self, excess):
        """Hand surplus sessions to newly started workers (a few per round)."""
        if excess <= 1:  # tolerate one over the fair share: no ping-pong
            return
        ranked = sorted(self.sessions.values(), key=lambda m: (m.connected, m.company_id))
        handed = ranked[: min(excess - 1, self.rebalance_batch)]
        for ms in handed:
            del self.sessions[ms.company_id]
        # Concurrently: each may let a send in flight finish first (the budget).
        await asyncio.gather(*(ms.close("rebalancing to another worker") for ms in handed))
        for ms in handed:
            await db(svc.mark_stopped)(
                ms.held, "handed to another worker (rebalancing)", only_live=True
            )
            await db(leases.release_lease)(self.worker_id, ms.session_id, "rebalancing")

    async def _reconcile_owned(self):
        owned = list(self.sessions.values())
        if not owned:
            return
        rows = await db(svc.load_sessions)([ms.session_id for ms in owned])
        due = await db(sending.companies_with_due_outbound)([ms.company_id for ms in owned])
        for ms in owned:
            if self.sessions.get(ms.company_id) is not ms or ms.busy("nudge"):
                continue
            await ms.reconcile(rows.get(ms.session_id))
            if ms.company_id in due and ms.connected:
                self.wants_drain(ms)
