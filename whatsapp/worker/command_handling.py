"""What makes a worker look at a company now: commands and hints.

Commands come from the channel consumer (whatsapp.consumers decodes them with
commands.py); hints come from the worker's own sessions (a QR code shown, a
connection up, a retry timer). Each is idempotent and only makes the work
happen sooner: the database says what to do, and the reconcile loop would get
there anyway (ownership.py).

A mixin of SessionSupervisor (supervisor.py): it uses the supervisor's
`sessions`, `spawn`, `start` and the ownership's `_adopt`.
"""

import logging

from channels.db import database_sync_to_async as db

from whatsapp.services import leases
from whatsapp.services import sessions as svc
from whatsapp.services.control import ensure_session

from .commands import describe

logger = logging.getLogger(__name__)


class CommandHandling:
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
