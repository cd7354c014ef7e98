"""Which sessions a worker owns: leases, peers and rebalancing.

* renews its leases every WHATSAPP["RECONCILE_INTERVAL"] and stops the client
  of every lease it no longer holds before anything else; if renewing is
  overdue (database unreachable) it stops its clients before the leases can
  expire (self-fencing), so another worker never overlaps with it;
* acquires free leases up to its fair share of the live workers (capped by
  WHATSAPP["MAX_SESSIONS_PER_WORKER"]) and hands surplus sessions back when
  new workers join;
* reconciles every owned session from its row (the database is the truth;
  channel messages only make this happen sooner);
* watches the other workers on its machine: when one's process is gone
  (SIGKILL, a crash) it frees that worker's leases at once, so its sessions are
  taken over without waiting for the TTL either (local_processes).

A mixin of SessionSupervisor (supervisor.py), which holds the settings and
the process's tasks; the loops here are started by its `start`.
"""

import asyncio
import logging
import time

from channels.db import database_sync_to_async as db

from whatsapp.services import leases, local_processes, sending
from whatsapp.services import sessions as svc

from .session import ManagedSession

logger = logging.getLogger(__name__)


class LeaseOwnership:
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
        ms.mark_closed()
        if self.sessions.get(ms.company_id) is ms:
            del self.sessions[ms.company_id]
        await db(leases.release_lease)(self.worker_id, ms.session_id, reason)

    # --- the loops ------------------------------------------------------------------

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
        self.rounds += 1
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
