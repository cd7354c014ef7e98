"""The real transport: an adapter over neonize's asyncio client (whatsmeow).

`NeonizeClient` implements `whatsapp.transport.base.Client` and turns
neonize's protobuf events into the events of `base.py`. What it handles for
the worker (see docs/worker.md for the quirks and measurements):

* neonize dispatches handlers with ``run_coroutine_threadsafe`` and never
  looks at the result: an exception in a handler vanishes. Every handler here
  is wrapped; failures are logged with their traceback and counted on the
  client (``handler_errors``, ``last_handler_error``).
* the loop neonize dispatches to is a module global, set once by the first
  ``connect()`` of the process. We set it to the running loop on every start
  (one loop per process in the worker; tests run several loops in sequence).
* each live client blocks one thread of the loop's default executor in the
  Go ``Neonize()`` call; the transport installs a default executor sized
  2 x WHATSAPP["MAX_SESSIONS_PER_WORKER"] + 16 so dials do not starve.
* the Python client has a GC finalizer that calls Go ``Stop(uuid)``; the uuid
  of a paired device is its phone number, so a collected old client would
  stop a newer client of the same company. We detach it after stopping.
* one SQLite store file per company under WHATSAPP["STORE_DIR"] (or the
  shared ``postgres://`` WHATSAPP["STORE_URL"]); a paired device resumes with
  ``jid=``, a fresh pairing uses ``new_device=True`` so it can never resume
  another company's device from a shared store.
* on a postgres store every client opens a database pool of its own that
  nothing closes: the server closes idle ones (``idle_session_timeout`` in the
  URL) and `StoreBudget` bounds how many clients a process has on it.
"""

import asyncio
import collections
import contextlib
import ctypes
import logging
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings

from . import base
from .build import jid_proto
from .media import MediaDownloadError, parse_descriptor

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0  # Go Stop() + the connect loop's exit
CALL_TIMEOUT = 30.0  # any other FFI call (send, pair, logout)

# whatsmeow ConnectFailureReason names that retrying cannot fix.
PERMANENT_CONNECT_FAILURES = {"CLIENT_OUTDATED", "BAD_USER_AGENT", "MAIN_DEVICE_GONE"}
PERMANENT_SEND_ERRORS = (
    "unknown server",
    "invalid jid",
    "jid must",
    "too large",
    "not on whatsapp",
    "message is empty",
)


# A start holds go_lock() until Go is past its map writes: whatsmeow's first log
# line of the dial ("Dialing wss://..." from Client/Socket, emitted by Connect(),
# which Neonize() calls after its three map writes), the first event, or the
# call's end. START_SAFETY only bounds a start whose store hangs before the dial.
DIAL_LOG = ("Client/Socket", "Dialing ")
START_SAFETY = 30.0
LOG_RANKS = {"DEBUG": 0, "INFO": 1, "WARN": 2, "WARNING": 2, "ERROR": 3}
_GO_LOCKS = weakref.WeakKeyDictionary()  # loop -> asyncio.Lock


def go_lock():
    """The process's lock around neonize calls that touch its Go client maps.

    neonize 0.5.2 keeps its clients in three Go maps without a lock (read from
    the shipped binary: docs/worker.md, "neonize's Go maps"): `Neonize()` (the
    connect, run later on an executor thread) writes all three before its dial,
    `Stop()` deletes, every per-client call reads. Two writers, or a read
    during a write, kill the process (Go's `fatal error: concurrent map ...`).
    A start holds this lock until its connect is past the writes: whatsmeow
    logs the dial (a log callback of that client, see `_DialWatch`), an event
    came, or the call ended; a stop, and the reads of `_go_read`, hold it for
    their call."""
    loop = asyncio.get_running_loop()
    lock = _GO_LOCKS.get(loop)
    if lock is None:
        lock = _GO_LOCKS[loop] = asyncio.Lock()
    return lock


def _neonize():
    """Import neonize lazily: it runs `uname -a` and probes ffmpeg at import."""
    from neonize.aioze import client as aclient
    from neonize.aioze import events as aevents
    from neonize.exc import NeonizeError

    return aclient, aevents, NeonizeError


class _DialWatch:
    """The whatsmeow log callback of one starting client (neonize passes a log
    callback per `Neonize()` call): it forwards entries as neonize would, and
    sets `dialing` (thread-safe, on `loop`) at the first "Dialing" entry --
    proof that Go is past its map writes, since Connect() runs after them.

    neonize builds the callback from its module's `log_whatsmeow` and the level
    of its logger, inside `connect()` before that returns (no await in between),
    so `installed()` swaps both for the duration of that one call on the loop
    thread: every other client keeps neonize's own. The client logs at DEBUG
    (the dial line is a debug line); entries under neonize's configured level
    are dropped here, in Python, as Go would have dropped them."""

    def __init__(self, loop):
        self.loop = loop
        self.dialing = asyncio.Event()
        self._seen = False

    def __call__(self, binary, size):  # a Go thread: no asyncio calls but threadsafe ones
        try:
            entry = self.entry_type.FromString(ctypes.string_at(binary, size))
            if (
                not self._seen
                and entry.Name == DIAL_LOG[0]
                and entry.Message.startswith(DIAL_LOG[1])
            ):
                self._seen = True
                self.loop.call_soon_threadsafe(self.dialing.set)
            if LOG_RANKS.get(entry.Level.upper(), 1) >= self.forward_rank:
                self.forward(binary, size)
        except Exception:  # a log line must never hurt the Go thread
            pass

    @contextlib.contextmanager
    def installed(self, aclient):
        from neonize.proto.Neonize_pb2 import LogEntry

        self.entry_type = LogEntry
        logger = sys.modules["neonize.utils.log"].log  # (neonize.utils re-exports a `log`)
        self.forward = aclient.log_whatsmeow
        self.forward_rank = {logging.DEBUG: 0, logging.INFO: 1, logging.WARNING: 2}.get(
            logger.getEffectiveLevel(), 3
        )
        saved = logger.level
        aclient.log_whatsmeow = self
        logger.setLevel(logging.DEBUG)
        try:
            yield self
        finally:
            aclient.log_whatsmeow = self.forward
            logger.setLevel(saved)


def jid_text(jid):
    """neonize JID proto -> `user[:device]@server` ('' for an empty JID)."""
    if jid is None or not jid.Server:
        return ""
    device = f":{jid.Device}" if jid.Device else ""
    return f"{jid.User}{device}@{jid.Server}"


def _enum_name(message, field):
    try:
        descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
        return descriptor.values_by_number[getattr(message, field)].name
    except (KeyError, AttributeError):
        return str(getattr(message, field, ""))


RECEIPT_KINDS = {"DELIVERED": "delivered", "READ": "read", "PLAYED": "played"}


def translate(event):
    """A neonize event protobuf -> a base.py event (None: not interesting to the worker)."""
    name = type(event).__name__
    if name == "Connected":
        return base.Connected()
    if name == "Disconnected":
        return base.Disconnected()
    if name == "StreamReplaced":
        return base.StreamReplaced()
    if name == "LoggedOut":
        return base.LoggedOut(reason=_enum_name(event, "Reason"), on_connect=event.OnConnect)
    if name == "ConnectFailure":
        reason = _enum_name(event, "Reason")
        return base.ConnectFailure(
            reason=reason, message=event.Message, permanent=reason in PERMANENT_CONNECT_FAILURES
        )
    if name == "PairStatus":
        if _enum_name(event, "Status") == "SUCCESS":
            return base.PairSuccess(jid=jid_text(event.ID), push_name=event.BusinessName)
        return base.ConnectFailure(reason="PAIR_ERROR", message=event.Error)
    if name == "KeepAliveTimeout":
        return base.KeepAliveTimeout(error_count=event.ErrorCount)
    if name == "KeepAliveRestored":
        return base.KeepAliveRestored()
    if name == "TemporaryBan":
        return base.TemporaryBan(
            code=_enum_name(event, "Code"), expires_in_seconds=int(event.Expire)
        )
    if name == "ClientOutdated":
        return base.ClientOutdated()
    if name == "StreamError":
        return base.StreamError(code=event.Code)
    if name == "Message":
        return base.InboundMessage(event=event)
    if name == "Receipt":
        kind = RECEIPT_KINDS.get(_enum_name(event, "Type"))
        if kind is None:
            return None
        return base.Receipt(
            message_ids=tuple(event.MessageIDs), kind=kind, chat=jid_text(event.MessageSource.Chat)
        )
    return None


def needs_phone(event):
    """A message whose sender is a LID and whose SenderAlt (the phone) is empty."""
    source = event.Info.MessageSource
    return source.Sender.Server == "lid" and not source.SenderAlt.User


def with_sender_alt(event, phone_jid):
    """Put `phone_jid` (a phone JID proto from the device store) into the
    event's SenderAlt, if it is one; returns whether it did."""
    if phone_jid is None or not phone_jid.User or phone_jid.Server != "s.whatsapp.net":
        return False
    event.Info.MessageSource.SenderAlt.CopyFrom(phone_jid)
    return True


def _event_types():
    _, ev, _ = _neonize()
    return (
        ev.ConnectedEv,
        ev.DisconnectedEv,
        ev.StreamReplacedEv,
        ev.LoggedOutEv,
        ev.ConnectFailureEv,
        ev.PairStatusEv,
        ev.KeepAliveTimeoutEv,
        ev.KeepAliveRestoredEv,
        ev.TemporaryBanEv,
        ev.ClientOutdatedEv,
        ev.StreamErrorEv,
        ev.MessageEv,
        ev.ReceiptEv,
    )


def is_postgres_store(store):
    return store.startswith(("postgres://", "postgresql://"))


def store_url(url, idle_timeout=0.0):
    """A postgres store URL as whatsmeow's driver (lib/pq) needs it.

    lib/pq defaults to sslmode=require where libpq/psycopg (and so Django)
    default to prefer: the DATABASE_URL of a server without TLS works for
    Django and fails in neonize with "SSL is not enabled on the server".

    `idle_timeout` (seconds, 0 = none) becomes ``idle_session_timeout``: lib/pq
    sends unknown URL parameters as session settings, so the server closes a
    store connection idle that long (PostgreSQL 14+). neonize never closes the
    pool of a stopped client; this is what frees its connections. A live
    client's next query reconnects transparently (lib/pq reports the closed
    connection as bad, database/sql retries on a new one: measured)."""
    if not is_postgres_store(url):
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    keys = {key for key, _ in query}
    if "sslmode" not in keys:
        query.append(("sslmode", "prefer"))
    if idle_timeout and "idle_session_timeout" not in keys:
        query.append(("idle_session_timeout", str(max(1, round(idle_timeout * 1000)))))
    return urlunsplit(parts._replace(query=urlencode(query)))


class StoreBudget:
    """How many neonize clients of this process may hold postgres store connections.

    Each client opens its own pool (one connection measured per offline
    client) and stopping it closes nothing: only the server's
    ``idle_session_timeout`` does, `idle_timeout` seconds after its last query.
    So a process's store connections are bounded by its live clients plus the
    clients that ended within `idle_timeout`. A start over `max_clients` live
    clients fails at once (a clear error, retried with backoff); a start over
    it counting the recently ended waits for the oldest of them to expire."""

    def __init__(self, max_clients, idle_timeout):
        self.max_clients = max_clients
        self.hold = idle_timeout + 1.0  # the server's timeout plus a margin
        self.live = 0
        self._ended = collections.deque()  # monotonic end times, oldest first

    def recently_ended(self):
        now = time.monotonic()
        while self._ended and now - self._ended[0] >= self.hold:
            self._ended.popleft()
        return len(self._ended)

    async def admit(self):
        while True:
            if self.live >= self.max_clients:
                raise base.TransportError(
                    f"{self.live} clients of this worker already use the postgres device "
                    f"store (WHATSAPP_STORE_MAX_CLIENTS={self.max_clients})"
                )
            if self.live + self.recently_ended() < self.max_clients:
                self.live += 1
                return
            await asyncio.sleep(max(0.05, self.hold - (time.monotonic() - self._ended[0])))

    def release(self):
        self.live -= 1
        self._ended.append(time.monotonic())


def forget_postgres_device(store, jid):
    """Delete the device row of `jid` from a whatsmeow postgres store."""
    if not jid:
        return False
    import psycopg

    # libpq (psycopg) rejects the session setting lib/pq takes from the URL.
    parts = urlsplit(store)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "idle_session_timeout"]
    store = urlunsplit(parts._replace(query=urlencode(query)))
    with psycopg.connect(store, connect_timeout=10) as conn:
        exists = conn.execute("SELECT to_regclass('whatsmeow_device')").fetchone()[0]
        if exists is None:
            return False
        deleted = conn.execute("DELETE FROM whatsmeow_device WHERE jid = %s", [jid]).rowcount
    return bool(deleted)


class NeonizeTransport:
    name = "neonize"
    # whatsmeow sends with a caller's id (SendRequestExtra.ID), but neonize 0.5.2
    # does not pass one through: its Go export SendMessage takes only the
    # recipient and the message (GenerateMessageID exists, SendMessage cannot
    # use it). So WhatsApp picks the id, and an interrupted send cannot be
    # resent safely: its outcome is unknown (whatsapp.services.sending).
    sends_with_id = False

    def __init__(self):
        self._executors = weakref.WeakKeyDictionary()  # loop -> executor
        self._store_budget = None

    def store_for(self, company_id):
        url = settings.WHATSAPP.get("STORE_URL") or ""
        if url:
            return store_url(url, settings.WHATSAPP.get("STORE_IDLE_TIMEOUT", 10.0))
        folder = Path(settings.WHATSAPP["STORE_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder / f"company-{int(company_id)}.sqlite3")

    def leak_budget(self):
        """How many ended clients a process may accumulate before it recycles.

        Every neonize connect() opens the device store anew in Go and nothing
        ever closes it: each client that ever started leaves an open SQLite
        file handle or an idle PostgreSQL connection behind (measured: 10
        connects -> 10 handles, after stop and gc). Only the process's end frees
        them, so the worker re-executes itself after this many (see runworker).
        A PostgreSQL store without an idle timeout gets a small budget: those
        are server connections (with the timeout the server closes them)."""
        configured = settings.WHATSAPP.get("RECYCLE_AFTER_LEAKED") or 0
        if configured:
            return configured
        postgres = is_postgres_store(settings.WHATSAPP.get("STORE_URL") or "")
        if postgres and not settings.WHATSAPP.get("STORE_IDLE_TIMEOUT", 10.0):
            return 25
        return 500

    def session_cap(self):
        """At most this many sessions per worker (0: no cap of the transport's own):
        on a postgres store, WHATSAPP_STORE_MAX_CLIENTS, so that the other workers
        take the rest instead of this one failing their starts."""
        if not is_postgres_store(settings.WHATSAPP.get("STORE_URL") or ""):
            return 0
        return settings.WHATSAPP.get("STORE_MAX_CLIENTS", 100)

    def store_budget(self):
        """The process's `StoreBudget` (None: per-company SQLite files, no bound needed)."""
        if not is_postgres_store(settings.WHATSAPP.get("STORE_URL") or ""):
            return None
        if self._store_budget is None:
            self._store_budget = StoreBudget(
                settings.WHATSAPP.get("STORE_MAX_CLIENTS", 100),
                settings.WHATSAPP.get("STORE_IDLE_TIMEOUT", 10.0),
            )
        return self._store_budget

    def executor_for(self, loop):
        """The sized default executor of `loop` (installed on first use)."""
        executor = self._executors.get(loop)
        if executor is None:
            size = 2 * settings.WHATSAPP["MAX_SESSIONS_PER_WORKER"] + 16
            executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="neonize")
            loop.set_default_executor(executor)
            self._executors[loop] = executor
        return executor

    def new_client(self, spec, on_event):
        self.executor_for(asyncio.get_running_loop())
        store = spec.store or self.store_for(spec.company_id)
        budget = self.store_budget() if is_postgres_store(store) else None
        return NeonizeClient(replace(spec, store=store), on_event, budget)

    def forget_device(self, spec):
        """After a logout: delete the company's device keys. Its own SQLite
        store file goes; in a shared postgres store, the device row of
        `spec.jid` goes (with every whatsmeow row that references it: ON DELETE
        CASCADE). whatsmeow deletes it itself on a LoggedOut it receives, but
        not when we forget a device while disconnected."""
        store = spec.store or self.store_for(spec.company_id)
        if is_postgres_store(store):
            return forget_postgres_device(store, spec.jid)
        removed = False
        for suffix in ("", "-wal", "-shm", "-journal"):
            path = Path(store + suffix)
            if path.exists():
                path.unlink()
                removed = True
        return removed

    async def aclose(self):
        """Shut the executors down (after every client is stopped)."""
        executors = list(self._executors.values())
        self._executors.clear()
        loop = asyncio.get_running_loop()
        for executor in executors:
            # Not asyncio.to_thread: that would run on (and join) this very executor.
            done = asyncio.Event()

            def shut(executor=executor, done=done):
                executor.shutdown(wait=True)
                loop.call_soon_threadsafe(done.set)

            thread = threading.Thread(target=shut, name="neonize-executor-shutdown", daemon=True)
            thread.start()
            await done.wait()
            thread.join(1.0)  # it is past its last call: gone at once, none left behind


class NeonizeClient:
    def __init__(self, spec: base.ClientSpec, on_event: base.EventSink, store_budget=None):
        self.spec = spec
        self._budget = store_budget  # a StoreBudget on a postgres store
        self._admitted = False
        self._sink = on_event
        self._client = None
        self._task = None
        self._stopping = False
        self._stopped = False
        self.handler_errors = 0
        self.last_handler_error = ""
        self._pending = set()
        self._first_event = asyncio.Event()
        self.settle_began = self.settled_at = None  # the start's hold of go_lock()
        self.settled_by = ""  # what ended the hold: dial, event, end or safety

    def __repr__(self):
        return f"<NeonizeClient company={self.spec.company_id} jid={self.spec.jid or '-'}>"

    # --- lifecycle ---------------------------------------------------------
    async def start(self):
        if self._client is not None or self._stopped:
            raise base.TransportError("a NeonizeClient starts once; create a new one")
        aclient, aevents, neonize_error = _neonize()
        if self._budget is not None:
            await self._budget.admit()
            self._admitted = True
        loop = asyncio.get_running_loop()
        aevents.event_global_loop = loop  # neonize sets it only once per process
        jid = jid_proto(self.spec.jid) if self.spec.jid else None
        client = aclient.NewAClient(
            self.spec.store,
            jid=jid,
            uuid=None if jid else f"company-{self.spec.company_id}",
            new_device=jid is None,
        )
        for event_type in _event_types():
            client.event(event_type)(self._handle)
        client.qr(self._handle_qr)
        self._client = client
        watch = _DialWatch(loop)
        async with go_lock():
            self.settle_began = time.monotonic()
            try:
                with watch.installed(aclient):  # connect() is synchronous up to its task
                    self._task = await client.connect()
            except neonize_error as exc:
                raise base.TransportError(f"neonize connect failed: {exc}") from exc
            self._task.add_done_callback(self._connect_loop_ended)
            # connect() returned before Go ran Neonize(): hold the lock until the
            # call is past its map writes -- it logged its dial, sent an event or
            # ended (a failed store) -- START_SAFETY bounds only a hung store.
            waits = {
                asyncio.ensure_future(self._first_event.wait()),
                asyncio.ensure_future(watch.dialing.wait()),
            }
            done, _ = await asyncio.wait(
                {self._task, *waits}, timeout=START_SAFETY, return_when=asyncio.FIRST_COMPLETED
            )
            for waiting in waits:
                waiting.cancel()
            self.settled_at = time.monotonic()
            self.settled_by = (
                "dial"
                if watch.dialing.is_set()
                else "end"
                if self._task.done()
                else "event"
                if self._first_event.is_set()
                else "safety"
            )
            if not done:
                logger.warning(
                    "company %s: neonize start neither dialed nor ended in %.0fs "
                    "(its device store hangs?); starts go on",
                    self.spec.company_id,
                    START_SAFETY,
                )

    def _connect_loop_ended(self, task):
        if task.cancelled():
            return
        exc = task.exception()  # retrieved even when stopping: no "never retrieved" noise
        if self._stopping:
            return
        error = f"{exc}" if exc else "connection loop ended"
        self._spawn(self._emit(base.Closed(error=error, permanent=False)))

    async def stop(self):
        if self._stopped:
            return
        self._stopping = True
        self._stopped = True
        client, task = self._client, self._task
        if self._admitted:  # its store connections count until the server closes them
            self._admitted = False
            self._budget.release()
        if client is None:
            return
        # The finalizer would call Go Stop(uuid) whenever this object is collected,
        # and the uuid (a paired phone number) is shared with the next client.
        client._stop_finalizer.detach()
        try:
            async with go_lock():  # Stop() deletes from neonize's Go client map
                await asyncio.wait_for(client.stop(), STOP_TIMEOUT)
        except Exception as exc:  # TimeoutError included: logged, we go on
            logger.warning("company %s: neonize stop failed: %r", self.spec.company_id, exc)
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "company %s: neonize connect loop still running %.0fs after "
                    "stop; its thread ends when the dial gives up",
                    self.spec.company_id,
                    STOP_TIMEOUT,
                )
            except Exception:  # the dial error, already reported as Closed
                pass
        client.event.list_func.clear()
        for pending in list(self._pending):
            pending.cancel()
        self._client = None

    # --- operations ----------------------------------------------------------
    def _require(self):
        if self._client is None or self._stopping:
            raise base.TransportError("the client is not running")
        return self._client

    async def _go_read(self, call):
        """A Go call that reads neonize's client map (every per-client call does,
        first thing): not while a start or a stop holds go_lock() to write it.
        Go also kills the process on a read during a write."""
        async with go_lock():
            return await asyncio.wait_for(call(), CALL_TIMEOUT)

    async def logout(self):
        client = self._require()
        try:
            await self._go_read(client.logout)
        except Exception as exc:
            raise base.TransportError(f"logout failed: {exc}") from exc

    async def send_text(self, jid, text, message_id=""):
        """Send `text`; returns WhatsApp's id. `message_id` cannot be honoured
        (see NeonizeTransport.sends_with_id): WhatsApp chooses the id."""
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage

        # A Message proto, not a str: neonize parses @mentions out of str texts
        # (and may look groups up) before sending.
        return await self._send_proto(jid, WAMessage(conversation=text))

    async def is_on_whatsapp(self, phones):
        """whatsmeow's IsOnWhatsApp (numbers with their `+`): {phone: Recipient}.
        Like SendMessage, a network round trip: not under go_lock (see docs/worker.md)."""
        client = self._require()
        if not phones:
            return {}
        asked = ["+" + "".join(ch for ch in str(p) if ch.isdigit()) for p in phones]
        try:
            answers = await asyncio.wait_for(client.is_on_whatsapp(*asked), CALL_TIMEOUT)
        except TimeoutError as exc:
            raise base.TransportError(f"lookup timed out after {CALL_TIMEOUT:.0f}s") from exc
        except Exception as exc:
            raise base.TransportError(f"is-on-WhatsApp lookup failed: {exc}") from exc
        return base.match_answers(
            list(phones),
            [
                (a.Query, a.IsIn, f"{a.JID.User}@{a.JID.Server}" if a.JID.Server else "")
                for a in answers
            ],
        )

    async def download_media(self, descriptor, path, max_bytes):
        """whatsmeow downloads, decrypts and checks the file (DownloadAny); neonize
        0.5.2 hands it over as one bytes object, so memory grows with the file
        size here (up to the per-kind limit) -- the simulator transport streams."""
        from neonize.exc import DownloadError

        _name, part, msg = parse_descriptor(descriptor)
        if part.fileLength and part.fileLength > max_bytes:
            raise MediaDownloadError(
                f"{part.fileLength} bytes; the limit is {max_bytes}", reason="too_large"
            )
        client = self._require()
        try:
            data = await self._go_read(lambda: client.download_any(msg))
        except TimeoutError as exc:
            raise MediaDownloadError(f"download timed out after {CALL_TIMEOUT:.0f}s") from exc
        except DownloadError as exc:
            text = str(exc)
            if any(code in text for code in ("404", "410")):
                raise MediaDownloadError(f"the media expired: {text}", reason="expired") from exc
            raise MediaDownloadError(f"download failed: {text}") from exc
        if len(data) > max_bytes:
            raise MediaDownloadError(f"larger than {max_bytes} bytes", reason="too_large")
        await asyncio.to_thread(Path(path).write_bytes, data)
        return len(data)

    async def send_media(self, jid, media, message_id=""):
        """Upload (neonize takes the file as bytes) and send with WhatsApp's id."""
        from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as wa
        from neonize.utils.enum import MediaType

        client = self._require()
        types = {
            "image": (MediaType.MediaImage, "imageMessage", wa.ImageMessage),
            "video": (MediaType.MediaVideo, "videoMessage", wa.VideoMessage),
            "audio": (MediaType.MediaAudio, "audioMessage", wa.AudioMessage),
            "document": (MediaType.MediaDocument, "documentMessage", wa.DocumentMessage),
            "sticker": (MediaType.MediaImage, "stickerMessage", wa.StickerMessage),
        }
        media_type, field, part_type = types[media.kind]
        data = await asyncio.to_thread(Path(media.path).read_bytes)
        try:
            upload = await asyncio.wait_for(client.upload(data, media_type), CALL_TIMEOUT)
        except Exception as exc:
            raise base.TransportError(f"media upload failed: {exc}") from exc
        part = {
            "URL": upload.url,
            "directPath": upload.DirectPath,
            "fileEncSHA256": upload.FileEncSHA256,
            "fileLength": upload.FileLength,
            "fileSHA256": upload.FileSHA256,
            "mediaKey": upload.MediaKey,
            "mimetype": media.mimetype,
        }
        if media.kind in ("image", "video", "document") and media.caption:
            part["caption"] = media.caption
        if media.kind == "document":
            part["fileName"] = media.file_name or "document"
        if media.kind == "audio":
            part["PTT"] = media.voice_note
        return await self._send_proto(jid, wa.Message(**{field: part_type(**part)}))

    async def send_location(self, jid, location, message_id=""):
        from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as wa

        pin = wa.LocationMessage(
            degreesLatitude=location.latitude,
            degreesLongitude=location.longitude,
            name=location.name,
            address=location.address,
        )
        return await self._send_proto(jid, wa.Message(locationMessage=pin))

    async def _send_proto(self, jid, message):
        client = self._require()
        if not await self.is_logged_in():
            raise base.TransportError("not logged in to WhatsApp right now")
        try:
            to = jid_proto(jid)
        except ValueError as exc:
            raise base.TransportError(f"invalid recipient {jid!r}: {exc}", permanent=True) from exc
        try:
            response = await asyncio.wait_for(client.send_message(to, message), CALL_TIMEOUT)
        except TimeoutError as exc:
            raise base.TransportError(f"send timed out after {CALL_TIMEOUT:.0f}s") from exc
        except Exception as exc:
            text = str(exc)
            permanent = any(p in text.lower() for p in PERMANENT_SEND_ERRORS)
            raise base.TransportError(f"send failed: {text}", permanent=permanent) from exc
        if not response.ID:
            raise base.TransportError("WhatsApp returned no message id")
        return response.ID

    async def mark_read(self, chat, sender, message_ids):
        from neonize.utils.enum import ReceiptType

        client = self._require()
        try:
            await asyncio.wait_for(
                client.mark_read(
                    *message_ids,
                    chat=jid_proto(chat),
                    sender=jid_proto(sender),
                    receipt=ReceiptType.READ,
                ),
                CALL_TIMEOUT,
            )
        except Exception as exc:
            raise base.TransportError(f"read mark failed: {exc}") from exc

    async def send_presence(self, chat, state):
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia

        client = self._require()
        presence = (
            ChatPresence.CHAT_PRESENCE_COMPOSING
            if state == "composing"
            else ChatPresence.CHAT_PRESENCE_PAUSED
        )
        try:
            await asyncio.wait_for(
                client.send_chat_presence(
                    jid_proto(chat), presence, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
                ),
                CALL_TIMEOUT,
            )
        except Exception as exc:
            raise base.TransportError(f"presence failed: {exc}") from exc

    async def pair_phone(self, phone_e164):
        client = self._require()
        digits = "".join(ch for ch in str(phone_e164) if ch.isdigit())
        try:
            return await self._go_read(lambda: client.PairPhone(digits, True))
        except Exception as exc:
            raise base.TransportError(f"pairing code request failed: {exc}") from exc

    async def is_logged_in(self):
        if self._client is None or self._stopping:
            return False
        try:
            # A property returning a coroutine: bool(client.is_logged_in) is always True.
            client = self._client
            return bool(await self._go_read(lambda: client.is_logged_in))
        except Exception:
            return False

    # --- events ---------------------------------------------------------------
    async def _handle(self, _client, event):
        self._first_event.set()
        if self._stopping:
            return
        try:
            translated = translate(event)
            if isinstance(translated, base.Connected):
                translated = await self._connected_event()
            if isinstance(translated, base.InboundMessage) and needs_phone(event):
                await self._phone_from_store(event)
            if translated is not None:
                await self._sink(translated)
        except base.EventRefused:
            # neonize acknowledged it before our handler ran (docs/worker.md, "Ack
            # before Python"): nothing to hold back here; logged so it can be seen.
            logger.warning("company %s: a let-go client's late message", self.spec.company_id)
        except Exception as exc:
            self._handler_failed(type(event).__name__, exc)

    async def _phone_from_store(self, event):
        """A LID sender without SenderAlt: ask the device store, which learns the
        LID <-> phone mapping from WhatsApp (whatsmeow's LID map), and fill in
        SenderAlt when it knows it. A failed lookup costs the message nothing."""
        sender = event.Info.MessageSource.Sender
        client = self._client
        try:
            phone = await self._go_read(lambda: client.get_pn_from_lid(sender))
        except Exception as exc:
            logger.debug("company %s: get_pn_from_lid failed: %r", self.spec.company_id, exc)
            return
        with_sender_alt(event, phone)

    async def _connected_event(self):
        jid = push_name = ""
        try:
            me = await self._go_read(self._client.get_me)
            jid, push_name = jid_text(me.JID), me.PushName
        except Exception as exc:  # the connection still counts
            logger.info("company %s: get_me after connect failed: %r", self.spec.company_id, exc)
        return base.Connected(jid=jid, push_name=push_name)

    async def _handle_qr(self, _client, data):
        self._first_event.set()
        if self._stopping:
            return
        try:
            code = data.decode() if isinstance(data, (bytes, bytearray)) else str(data)
            await self._sink(base.QRCode(codes=(code,)))
        except Exception as exc:
            self._handler_failed("QR", exc)

    async def _emit(self, event):
        try:
            await self._sink(event)
        except Exception as exc:
            self._handler_failed(type(event).__name__, exc)

    def _spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _handler_failed(self, what, exc):
        self.handler_errors += 1
        self.last_handler_error = f"{what}: {exc!r}"
        logger.error("company %s: handler for %s failed", self.spec.company_id, what, exc_info=exc)
