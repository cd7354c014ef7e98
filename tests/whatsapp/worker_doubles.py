"""A scripted transport for session-worker tests: the double sits exactly at the
boundary to WhatsApp (base.Transport / base.Client) and nowhere else.

Every client call is logged in order, and the transport checks the promise
the worker makes to WhatsApp: never two live clients for one company.
"""

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync

from whatsapp.transport import base


class ScriptedTransport:
    name = "scripted"

    def __init__(
        self, behaviour="connect", jid="491700000001:7@s.whatsapp.net", sends_with_id=True
    ):
        self.sends_with_id = sends_with_id
        self.default = behaviour
        self.behaviour = {}  # company_id -> behaviour for its next clients
        self.jid = jid
        self.log = []  # (action, company_id, client number)
        self.clients = []
        self.violations = []
        self.forgotten = []
        self.forgotten_jids = []  # the device each forget_device call named
        self.start_overlaps = 0
        self._starting = 0
        self.max_concurrent_attempts = 0

    def new_client(self, spec, on_event):
        live = [c for c in self.clients if c.spec.company_id == spec.company_id and c.live]
        if live:
            self.violations.append(f"company {spec.company_id}: new client while {live} live")
        client = ScriptedClient(self, spec, on_event, len(self.clients) + 1)
        self.clients.append(client)
        self.log.append(("new", spec.company_id, client.number))
        return client

    def forget_device(self, spec):
        self.forgotten.append(spec.company_id)
        self.forgotten_jids.append(spec.jid)

    def clients_of(self, company_id):
        return [c for c in self.clients if c.spec.company_id == company_id]

    def live_of(self, company_id):
        return [c for c in self.clients_of(company_id) if c.live]

    def attempts_in_flight(self):
        return sum(1 for c in self.clients if c.live and c.behaviour == "hang")


class ScriptedClient:
    """Behaviours: connect (Connected soon), qr (a QR code), fail (dial error ->
    Closed), raise (start raises), hang (nothing ever happens)."""

    def __init__(self, transport, spec, sink, number):
        self.transport = transport
        self.spec = spec
        self.sink = sink
        self.number = number
        self.behaviour = transport.behaviour.get(spec.company_id, transport.default)
        self.started = self.stopped = False
        self.logged_in = False
        self.logged_out = False
        self.sent = []
        self.send_errors = []  # TransportErrors to raise on the next sends
        self.errors_for = {}  # text -> TransportErrors to raise on its next sends
        self.sent_ids = []  # the message id of each send, in order
        self.in_flight = asyncio.Event()  # set when a send has started
        self.hold = None  # an asyncio.Event: sends wait for it (a send in flight)
        self.pair_requests = []
        self.lookups = []  # numbers asked about (is_on_whatsapp)

    def __repr__(self):
        return f"<client {self.number} of company {self.spec.company_id}>"

    @property
    def live(self):
        return self.started and not self.stopped

    async def start(self):
        t = self.transport
        t._starting += 1
        if t._starting > 1:
            t.start_overlaps += 1
        try:
            await asyncio.sleep(0.01)  # give a concurrent start the chance to overlap
            t.log.append(("start", self.spec.company_id, self.number))
            if self.behaviour == "raise":
                raise base.TransportError("scripted start failure")
            self.started = True
            in_flight = t.attempts_in_flight()
            t.max_concurrent_attempts = max(t.max_concurrent_attempts, in_flight)
        finally:
            t._starting -= 1
        loop = asyncio.get_running_loop()
        if self.behaviour == "connect":
            loop.call_soon(lambda: asyncio.ensure_future(self._connect()))
        elif self.behaviour == "qr":
            loop.call_soon(
                lambda: asyncio.ensure_future(self.emit(base.QRCode(codes=("2@scripted-qr-code",))))
            )
        elif self.behaviour == "fail":
            loop.call_soon(
                lambda: asyncio.ensure_future(self.emit(base.Closed(error="scripted dial failure")))
            )

    async def _connect(self):
        self.logged_in = True
        await self.emit(base.Connected(jid=self.spec.jid or self.transport.jid, push_name="Salon"))

    async def emit(self, event):
        if self.live:
            await self.sink(event)

    async def stop(self):
        if not self.stopped:
            self.stopped = True
            self.logged_in = False
            self.transport.log.append(("stop", self.spec.company_id, self.number))

    async def logout(self):
        self.logged_out = True
        self.transport.log.append(("logout", self.spec.company_id, self.number))

    async def send_text(self, jid, text, message_id=""):
        if not self.live:
            raise base.TransportError("client stopped")
        if self.errors_for.get(text):
            raise self.errors_for[text].pop(0)
        if self.send_errors:
            raise self.send_errors.pop(0)
        self.in_flight.set()
        if self.hold is not None:
            await self.hold.wait()
            if not self.live:
                raise base.TransportError("client stopped while sending")
        self.sent.append((jid, text))
        self.transport.log.append(("send", self.spec.company_id, self.number))
        if message_id and self.transport.sends_with_id:
            wa_id = message_id
        else:
            wa_id = f"3EB0{self.number:04d}{len(self.sent):04d}"
        self.sent_ids.append(wa_id)
        return wa_id

    async def is_on_whatsapp(self, phones):
        """Every number is on WhatsApp at its own digits (the simulator's default)."""
        if not self.live:
            raise base.TransportError("client stopped")
        self.lookups.extend(phones)
        return {p: base.Recipient(p, True, f"{p.lstrip('+')}@s.whatsapp.net") for p in phones}

    async def pair_phone(self, phone_e164):
        self.pair_requests.append(phone_e164)
        return "ABCD-1234"

    async def is_logged_in(self):
        return self.live and self.logged_in


def run(coro_factory, timeout=30):
    """Run an async test body on a fresh loop (DB calls inside go through
    database_sync_to_async, so tests use django_db(transaction=True))."""

    async def body():
        return await asyncio.wait_for(coro_factory(), timeout)

    return async_to_sync(body)()


async def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll `predicate` (sync, may touch the DB) until true; fail after `timeout`."""
    from channels.db import database_sync_to_async

    check = database_sync_to_async(predicate)
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def until(condition, what, timeout=10.0):
    """Wait for an in-memory condition of the worker (no database)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def reconcile_rounds(sup, count, timeout=60.0):
    """Wait until `sup` has run `count` whole reconcile rounds from now: the
    window of a check that something does NOT happen (a reconnect loop, a
    second send), counted in the rounds that could have done it rather than
    in seconds a loaded machine may spend elsewhere."""
    target = sup.rounds + count + 1  # the round under way now does not count
    await until(lambda: sup.rounds >= target, f"{count} reconcile rounds", timeout)


FAST = {
    "LEASE_TTL": 3.0,
    "RECONCILE_INTERVAL": 0.2,
    "BACKOFF_BASE": 0.2,
    "BACKOFF_CAP": 1.0,
    "CONNECT_TIMEOUT": 5.0,
    "STOP_TIMEOUT": 5.0,
    "REBALANCE": True,
}


def fast_settings(settings, tmp_path, **overrides):
    """Short timings for in-process worker tests (pytest-django `settings`)."""
    settings.WHATSAPP = {
        **settings.WHATSAPP,
        **FAST,
        "STORE_DIR": str(tmp_path / "wa-store"),
        "STORE_URL": "",
        **overrides,
    }
    return settings.WHATSAPP


@pytest.fixture(name="company")
def company_fixture(db):
    """One company, without the three-tenant users (password hashing is slow and
    these tests are about sessions, not access)."""
    from companies.models import Company

    return Company.objects.create(name="Salon Worker", slug="salon-worker")
