"""One company's live client inside a worker: the I/O around its lifecycle.

A ManagedSession exists only while this worker holds the company's lease.
It owns at most one client at a time and always stops the old client before
it creates a new one (close before create). What it knows of its client is
one `Lifecycle` (lifecycle.py); every change goes through `lifecycle.step`,
which names the actions this module then carries out. Everything it learns
goes onto the session row through whatsapp.services.sessions, fenced by the
lease.
"""

import asyncio
import functools
import logging
import time

from channels.db import database_sync_to_async as db
from django.utils import timezone

from whatsapp.models import SessionState
from whatsapp.services import sending
from whatsapp.services import sessions as svc
from whatsapp.services.leases import holds_lease
from whatsapp.transport import base
from whatsapp.transport.normalize import MalformedEvent, normalize_message

from .lifecycle import Action, Event, Lifecycle, Phase, step
from .media import send_media_of
from .recipients import recipient_jid

logger = logging.getLogger(__name__)
Kind = svc.Kind
UNPARK_STATES = {
    SessionState.REPLACED,
    SessionState.LOGGED_OUT,
    SessionState.FAILED,
    SessionState.BANNED,
}


class ManagedSession:
    def __init__(self, supervisor, held):
        self.sup = supervisor
        self.held = held
        self.company_id = held.company_id
        self.session_id = held.session_id
        self.lock = asyncio.Lock()
        self.state = Lifecycle()  # changed only by self._step
        # The I/O handles of the current client (set while state.has_client).
        self.client = None
        self.token = None  # identifies the current client's events
        self.clients_created = 0  # an announced start is client number clients_created + 1
        # Set when the current connect attempt has its outcome (connected, a
        # QR code, or the client stopped); the attempt waits for it.
        self.attempt = None
        self.last_event = time.monotonic()
        self.last_touch = 0.0
        self.retry_handle = None
        self.tasks = set()  # named "connect", "pair", "drain", "receipts", "nudge"
        # A send hint that came while a drain was running: that drain claims
        # again before it ends, so a row queued during its last claim is not
        # left to the next reconcile round (seconds later).
        self.drain_again = False
        # Receipts waiting to be recorded: one DB call records all that came
        # while the previous one ran (they only move a status forward).
        self.receipts = []  # (message ids, kind), in arrival order
        self.adopted_at = time.monotonic()

    def __repr__(self):
        return (
            f"<ManagedSession company={self.company_id} epoch={self.held.epoch} "
            f"{self.state.phase}/{self.state.ending}>"
        )

    # --- the lifecycle (read by the supervisor and tests) ------------------------
    def _step(self, event):
        self.state, actions = step(self.state, event)
        return actions

    @property
    def connected(self):
        return self.state.connected

    @property
    def stopping(self):
        """Closing has begun: a send in flight may finish, no new one starts."""
        return self.state.closing

    @property
    def closed(self):
        return self.state.closed

    def mark_closed(self):
        self._step(Event.CLOSE)

    def _settle_attempt(self):
        if self.attempt is not None:
            self.attempt.set()

    # --- helpers -----------------------------------------------------------
    def spawn(self, coro, name):
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}:{self.company_id}")
        self.tasks.add(task)
        self.sup.track(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def busy(self, prefix):
        return any(t.get_name().startswith(prefix) and not t.done() for t in self.tasks)

    async def _stop_client(self, reason, record=True):
        """Stop the current client (lock held). Records the end of its life
        (unless the caller records it, as a hand-over does for all sessions at
        once). Returns the number of the client stopped, or None."""
        client = self.client
        number = self.clients_created + (self.state.phase is Phase.ANNOUNCED)
        self.client = self.token = None  # from now on its events are late ones
        actions = self._step(Event.CLIENT_STOPPED)
        if not actions:
            return None
        for action in actions:
            if action is Action.STOP_CLIENT:
                try:
                    await asyncio.wait_for(client.stop(), self.sup.stop_timeout)
                except Exception as exc:
                    logger.warning("company %s: stopping client failed: %r", self.company_id, exc)
                self.sup.client_ended()
            elif action is Action.RECORD_STOPPED and record:
                await db(svc.record_event)(
                    self.held, Kind.STOPPED, f"client {number} stopped: {reason}"
                )
            elif action is Action.RECORD_NEVER_STARTED and record:
                await db(svc.record_event)(
                    self.held,
                    Kind.STOPPED,
                    f"client {number} stopped: {reason} (before it started)",
                )
            elif action is Action.SETTLE_ATTEMPT:
                self._settle_attempt()
        return number

    async def _failed(self, error, permanent=False):
        delay = await db(svc.mark_connect_failed)(self.held, error, permanent)
        if delay is None:
            await self.sup.lease_lost(self, "lease gone while recording a failure")
            return
        logger.info(
            "company %s: connect failed (%s); retry in %.1fs", self.company_id, error, delay
        )
        self._retry_in(delay)

    def _retry_in(self, delay):
        if self.retry_handle is not None:
            self.retry_handle.cancel()
        loop = asyncio.get_running_loop()
        self.retry_handle = loop.call_later(delay + 0.05, self.sup.nudge_company, self.company_id)

    # --- reconcile: make the live client match the row ----------------------
    async def reconcile(self, row):
        async with self.lock:
            if self.state.closed:
                return
            await self._reconcile(row)

    async def _reconcile(self, row):
        now = timezone.now()
        if row is None:
            await self._stop_client("session deleted")
            await self.sup.release(self, "session deleted")
            return
        if row.logout_requested_at:
            await self._logout(row)
            return
        if row.restart_requested_at:
            await self._stop_client("restart requested")
            await db(svc.unpark)(self.held, "restarting (close before create)")
            await db(svc.clear_request)(self.held, "restart_requested_at", row.restart_requested_at)
            row = await db(svc.load_session)(self.session_id)
            if row is None:
                return
        if row.pairing_requested_at and row.state in UNPARK_STATES - {SessionState.BANNED}:
            await db(svc.unpark)(self.held, "pairing requested")
            row = await db(svc.load_session)(self.session_id)
        if (
            row.state == SessionState.REPLACED
            and row.next_connect_at
            and row.next_connect_at <= now
            and row.wants_running
        ):
            await db(svc.unpark)(self.held, "replaced backoff elapsed: one new attempt")
            row = await db(svc.load_session)(self.session_id)
        if not row.should_connect(now):
            await self._stop_client(self._why_not(row, now))
            if not row.wants_running or not row.company.is_active:
                if row.state != SessionState.STOPPED and not row.is_parked(now):
                    await db(svc.mark_stopped)(self.held, self._why_not(row, now))
                await self.sup.release(self, self._why_not(row, now))
            return
        if not self.state.has_client:
            if row.connect_due(now):
                self._start_connecting()
            return
        if (
            row.pairing_requested_at
            and self.state.phase is Phase.AWAITING_PAIRING
            and not self.busy("pair")
        ):
            self.spawn(self._pair(row.pairing_phone, row.pairing_requested_at), "pair")
        if self.state.connected:
            await self._watchdog()

    def _start_connecting(self):
        """One connect attempt at a time."""
        if not self.busy("connect"):
            self.spawn(self._connect(), "connect")

    @staticmethod
    def _why_not(row, now):
        if not row.wants_running:
            return "stop requested"
        if not row.company.is_active:
            return "company inactive"
        if row.is_parked(now):
            return f"parked ({row.state})"
        return "not wanted"

    async def _watchdog(self):
        silence = time.monotonic() - self.last_event
        if silence <= self.sup.watchdog_silence:
            return
        if await self.client.is_logged_in():
            self.last_event = time.monotonic()  # quiet account, live connection
            await db(svc.touch)(self.held)
            return
        await db(svc.record_event)(
            self.held, Kind.SILENT, f"no events for {silence:.0f}s and not logged in: restarting"
        )
        await self._stop_client("watchdog: no events, not logged in")
        self._start_connecting()

    # --- connecting ------------------------------------------------------------
    async def _connect(self):
        async with self.sup.connect_slots:  # bounded concurrent connect attempts
            attempt = await self._start_client()
            if attempt is None:
                return
            try:
                await asyncio.wait_for(attempt.wait(), self.sup.connect_timeout)
            except TimeoutError:
                async with self.lock:
                    if self.attempt is attempt and self.state.has_client:
                        await self._stop_client("connect timed out")
                        await self._failed(f"no connection after {self.sup.connect_timeout:g}s")

    async def _start_client(self):
        async with self.lock:
            if not self.state.may_start or self.sup.closing:
                return None
            if not self.sup.leases_fresh():  # renewals failing: do not start anything
                return None
            if not await db(holds_lease)(self.held):
                await self.sup.lease_lost(self, "lease gone before connecting")
                return None
            row = await db(svc.load_session)(self.session_id)
            if row is None or not row.should_connect():
                return None
            number = self.clients_created + 1
            # Announced before it is written: a start cancelled meanwhile
            # (shutdown, lease lost) records its end when closing, so every
            # announced client has one.
            self._step(Event.ANNOUNCE)
            if not await db(svc.mark_starting)(self.held, f"client {number} connecting"):
                await self._stop_client("lease gone", record=False)
                await self.sup.lease_lost(self, "lease gone before connecting")
                return None
            self.attempt = attempt = asyncio.Event()
            token = object()
            spec = base.ClientSpec(company_id=self.company_id, jid=row.jid)
            async with self.sup.start_lock:  # neonize's Go side: one start at a time
                try:
                    client = self.sup.transport.new_client(
                        spec, functools.partial(self.on_event, token)
                    )
                except Exception as exc:
                    await db(svc.record_event)(
                        self.held, Kind.STOPPED, f"client {number} not created: {exc}"
                    )
                    await self._stop_client("not created", record=False)
                    await self._failed(
                        f"could not create client: {exc}", getattr(exc, "permanent", False)
                    )
                    return None
                self.clients_created = number
                self.client, self.token = client, token
                self._step(Event.CREATED)
                self.last_event = time.monotonic()
                try:
                    await client.start()
                except Exception as exc:
                    await self._stop_client(f"start failed: {exc}")
                    await self._failed(str(exc), getattr(exc, "permanent", False))
                    return None
            return attempt

    # --- events from the client ------------------------------------------------
    async def on_event(self, token, event):
        if token is not self.token or self.state.closed:
            # A stopped client's late event. An inbound message is refused, not
            # dropped: acknowledged here it would be stored nowhere (the client
            # may not be stopping yet: _stop_client lets go of it first).
            if isinstance(event, base.InboundMessage):
                raise base.EventRefused(f"company {self.company_id}: client was let go")
            return
        self.last_event = time.monotonic()
        try:
            await self._dispatch(token, event)
        except Exception as exc:
            logger.exception(
                "company %s: handling %s failed", self.company_id, type(event).__name__
            )
            try:
                await db(svc.record_error)(
                    self.held, f"handling {type(event).__name__} failed: {exc!r}"
                )
            except Exception:
                logger.exception("company %s: could not record the error", self.company_id)
            if isinstance(event, base.InboundMessage):
                # Not stored (e.g. the database is down): the transport must not
                # acknowledge it, so WhatsApp delivers it again.
                raise

    async def _dispatch(self, token, event):
        if isinstance(event, base.InboundMessage):
            await self._inbound(event)
        elif isinstance(event, base.Receipt):
            # Not awaited here: the client's next event (an inbound message)
            # does not wait on this database call.
            self.receipts.append((list(event.message_ids), event.kind))
            if not self.busy("receipts"):
                self.spawn(self._record_receipts(), "receipts")
        elif isinstance(event, base.Connected):
            async with self.lock:
                if token is self.token:
                    await self._connected(event)
        elif isinstance(event, base.QRCode):
            async with self.lock:
                if token is self.token:
                    await self._qr(event)
        elif isinstance(event, base.PairSuccess):
            await db(svc.mark_paired)(self.held, event.jid, event.push_name)
        elif isinstance(event, base.Disconnected):
            async with self.lock:
                if token is self.token:
                    for _action in self._step(Event.DISCONNECTED):  # RECORD_RECONNECTING
                        await db(svc.mark_reconnecting)(
                            self.held, event.reason or "connection dropped; whatsmeow reconnects"
                        )
        elif isinstance(event, (base.KeepAliveTimeout, base.KeepAliveRestored, base.StreamError)):
            await self._note(event)
        else:
            async with self.lock:
                if token is self.token:
                    await self._terminal(event)

    async def _note(self, event):
        if isinstance(event, base.KeepAliveTimeout):
            await db(svc.record_event)(
                self.held, Kind.KEEPALIVE_TIMEOUT, f"{event.error_count} keep-alive(s) failed"
            )
        elif isinstance(event, base.KeepAliveRestored):
            await db(svc.record_event)(self.held, Kind.KEEPALIVE_RESTORED, "")
        else:
            await db(svc.record_error)(self.held, f"stream error {event.code}")

    async def _connected(self, event):
        for action in self._step(Event.CONNECTED):
            if action in (Action.RECORD_CONNECTED, Action.RECORD_RECONNECTED):
                reconnected = action is Action.RECORD_RECONNECTED
                await db(svc.mark_connected)(self.held, event.jid, event.push_name, reconnected)
            elif action is Action.SETTLE_ATTEMPT:
                self._settle_attempt()
            elif action is Action.DRAIN:
                self.sup.wants_drain(self)

    async def _qr(self, event):
        for action in self._step(Event.QR):
            if action in (Action.RECORD_QR, Action.REFRESH_QR):
                code = event.codes[0] if event.codes else ""
                record = action is Action.RECORD_QR
                await db(svc.mark_awaiting_pairing)(self.held, code, record=record)
            elif action is Action.SETTLE_ATTEMPT:
                self._settle_attempt()
            elif action is Action.NUDGE:
                self.sup.nudge_company(self.company_id)  # a pending phone pairing can go now

    async def _terminal(self, event):
        """Events after which this client is finished."""
        if isinstance(event, base.StreamReplaced):
            await self._stop_client("stream replaced (440)")
            if not await db(holds_lease)(self.held):
                await self.sup.lease_lost(self, "stream replaced and lease gone")
                return
            await db(svc.mark_replaced)(self.held)
        elif isinstance(event, base.LoggedOut):
            await self._stop_client(f"logged out ({event.reason})")
            row = await db(svc.load_session)(self.session_id)
            await self._forget_device(row.jid if row is not None else "")
            await db(svc.mark_logged_out)(self.held, event.reason or "logged out by WhatsApp")
        elif isinstance(event, base.TemporaryBan):
            await self._stop_client(f"temporary ban {event.code}")
            await db(svc.mark_banned)(self.held, event.code, event.expires_in_seconds)
            self._retry_in(max(event.expires_in_seconds, 60))
        elif isinstance(event, base.ClientOutdated):
            await self._stop_client("client outdated")
            await self._failed(
                "WhatsApp says this client version is outdated: upgrade neonize", permanent=True
            )
        elif isinstance(event, base.ConnectFailure):
            await self._stop_client(f"connect failure {event.reason}")
            await self._failed(
                f"connect failure {event.reason}: {event.message}".strip(": "), event.permanent
            )
        elif isinstance(event, base.Closed):
            await self._stop_client(f"connection ended: {event.error}")
            await self._failed(event.error or "connection ended", event.permanent)
        else:
            logger.warning("company %s: ignoring unknown event %r", self.company_id, event)

    async def _inbound(self, event):
        try:
            message = normalize_message(event.event)
        except MalformedEvent as exc:
            await db(svc.record_error)(self.held, f"malformed message event: {exc}")
            return
        outcome = await self.sup.inbound.record(self.company_id, message)
        if outcome.created and message.media is not None:
            self.sup.media.nudge()  # downloaded after the store and its ack

    async def _record_receipts(self):
        while self.receipts:
            batch, self.receipts = self.receipts, []
            try:
                await db(sending.record_receipts)(self.company_id, batch)
            except Exception as exc:
                logger.exception("company %s: recording receipts failed", self.company_id)
                await db(svc.record_error)(self.held, f"recording receipts failed: {exc!r}")
        await self._touch()

    async def _touch(self):
        now = time.monotonic()
        if now - self.last_touch > 10:
            self.last_touch = now
            await db(svc.touch)(self.held)

    async def _forget_device(self, jid):
        """Delete the device keys from the transport's store (before the row's
        JID is cleared): the next client pairs as a new device."""
        forget = getattr(self.sup.transport, "forget_device", None)
        if forget is None:
            return
        try:
            await asyncio.to_thread(forget, base.ClientSpec(company_id=self.company_id, jid=jid))
        except Exception as exc:
            await db(svc.record_error)(self.held, f"could not delete the device store: {exc}")

    # --- operator requests -------------------------------------------------------
    async def _logout(self, row):
        note = ""
        client = self.client
        if client is not None and await client.is_logged_in():
            try:
                await client.logout()
                note = "logged out of WhatsApp"
            except base.TransportError as exc:
                note = f"WhatsApp logout failed ({exc}); device forgotten locally"
        else:
            note = (
                "not connected: device forgotten locally; remove it on the phone "
                "under Linked devices"
            )
        await self._stop_client("logout requested")
        await self._forget_device(row.jid)
        await db(svc.mark_logged_out)(self.held, f"logout requested: {note}")
        await db(svc.clear_request)(self.held, "logout_requested_at", row.logout_requested_at)

    async def _pair(self, phone, requested_at):
        client = self.client
        if client is None or not phone:
            await db(svc.fail_pairing_request)(self.held, "no phone number or no client")
            return
        try:
            code = await client.pair_phone(phone)
        except base.TransportError as exc:
            await db(svc.fail_pairing_request)(self.held, str(exc))
            return
        await db(svc.store_pairing_code)(self.held, code)

    # --- outbound -------------------------------------------------------------
    async def drain(self):
        """Send this company's due queued messages through the current client.

        One row is claimed at a time, right before it is sent, with the message
        id it is sent with (when the transport takes ours): a worker killed
        mid-send leaves at most that one row in `sending`, which the next owner
        sends again with the same id (or, without an id of ours, marks "outcome
        unknown"). A closing session lets the send in flight finish (see close)
        and starts no other."""
        with_id = bool(getattr(self.sup.transport, "sends_with_id", False))
        done = None  # (pk, WhatsApp's id) of the last send: recorded with the next claim
        try:
            while self._may_send():
                self.drain_again = False
                if done is None:
                    batch = await db(sending.claim_outbound)(self.held, 1, with_id=with_id)
                else:
                    # One DB call: record the sent row, claim the next (lease re-checked).
                    batch = await db(sending.mark_sent_and_claim_next)(
                        done[0], done[1], self.held, with_id=with_id
                    )
                    done = None
                if not batch:
                    if self.drain_again:
                        continue
                    return
                for item in batch:
                    client = self.client
                    if client is None or not self._may_send():
                        await db(sending.release_claimed)(
                            item.pk, "client went away before sending"
                        )
                        continue
                    try:
                        to_jid = await recipient_jid(self.company_id, client, item)
                        if item.media_id is not None:  # a file or a location
                            wa_id = await send_media_of(client, item, to_jid)
                        else:
                            wa_id = await client.send_text(to_jid, item.text, item.message_id)
                    except base.TransportError as exc:
                        await db(sending.mark_outbound_failed)(item.pk, str(exc), exc.permanent)
                    except Exception as exc:
                        logger.exception("company %s: send crashed", self.company_id)
                        await db(sending.mark_outbound_failed)(item.pk, f"unexpected: {exc!r}")
                    else:
                        done = (item.pk, wa_id)
        finally:
            if done is not None:
                # Not cancellable: the send happened, its outcome is recorded.
                await asyncio.shield(db(sending.mark_outbound_sent)(*done))

    async def chat_hint(self, kind, payload):
        """Read marks and "typing..." for the assistant pipeline (services.turn_hints):
        best effort, never retried (a late read mark or presence is worthless)."""
        client = self.client
        if client is None or not self._may_send():
            return
        try:
            if kind == "chat.read":
                ids = [str(i) for i in payload.get("message_ids") or []][:100]
                if ids:
                    await client.mark_read(
                        str(payload.get("chat", "")), str(payload.get("sender", "")), ids
                    )
            else:
                state = "composing" if payload.get("state") == "composing" else "paused"
                await client.send_presence(str(payload.get("chat", "")), state)
        except Exception as exc:
            logger.info("company %s: %s not sent: %r", self.company_id, kind, exc)

    def _may_send(self):
        return self.state.may_send and self.client is not None

    # --- end of ownership ----------------------------------------------------
    async def close(self, reason, record=True, send_budget=None):
        """Stop the client for good (lease lost, released, or worker stopping).
        Returns the number of the client stopped, or None if there was none.

        A send in flight is not cut off: it gets up to `send_budget` seconds
        (WHATSAPP["SEND_HANDOVER_BUDGET"] by default) to finish and record its
        true outcome before the client stops. No new send starts meanwhile. A
        send still running after the budget is cancelled and its row stays in
        `sending` for the next owner (sent again with its id)."""
        if self.retry_handle is not None:
            self.retry_handle.cancel()
        self._step(Event.HAND_OVER)
        budget = self.sup.send_budget if send_budget is None else send_budget
        current = asyncio.current_task()
        sends = [
            t
            for t in self.tasks
            if t is not current and not t.done() and t.get_name().startswith("drain")
        ]
        if sends and budget > 0:
            _done, late = await asyncio.wait(sends, timeout=budget)
            if late:
                logger.warning(
                    "company %s: a send did not finish within the %.1fs hand-over budget; "
                    "the next owner sends it again",
                    self.company_id,
                    budget,
                )
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        async with self.lock:
            self._step(Event.CLOSE)
            return await self._stop_client(reason, record)
