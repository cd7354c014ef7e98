"""neonize clients hosted in child processes ("shards") supervised by the worker.

`WHATSAPP_NEONIZE_SHARDS=K` (K > 0) makes the neonize transport run its
clients in K child processes instead of the worker's own. Why (docs/worker.md,
"neonize's Go maps"): neonize keeps a process's clients in Go maps without a
lock, so a start must hold the process's `go_lock` while Go writes them, and a
Go `fatal error` kills every client of the process. In shards:

* starts run in parallel across shards (serial only within one);
* a Go fatal error (or the OOM killer, or SIGKILL) ends one shard: its clients
  report `Closed` (transient, so their sessions reconnect with backoff on the
  next shard process, started at once), the other shards' clients notice nothing;
* Go memory that neonize never returns goes with the shard's process.

The worker's supervisor and sessions do not change: `ShardClient` is a
`base.Client` whose calls are requests to its shard, and the shard's events
(the same `base` dataclasses; inbound messages stay neonize protobufs) come
back to the client's sink. A company always lands on shard `company_id % K`.

Wire: a socketpair per shard (never stdout/stderr: Go and neonize write
there), frames of a 4-byte length and a pickle. Parent -> shard:
("call", req, company, op, args) and ("handled", seq, error); shard -> parent:
("reply", req, ok, value) and ("event", seq, company, event); the shard's
sink waits for "handled", so a client's event handling keeps its order and
its back-pressure (an inbound message is handled before the next is read).
Only the worker and its own children speak it: pickles are trusted here.
"""

import asyncio
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from dataclasses import replace
from pathlib import Path

from django.conf import settings

from . import base
from .neonize_client import NeonizeTransport

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the project: `-m whatsapp.transport.shards`
HEADER = struct.Struct("!I")
SPAWN_TIMEOUT = 30.0
CALL_TIMEOUT = 45.0  # above the shard's own call timeouts (neonize_client.CALL_TIMEOUT 30 s)
OPS = {"start", "stop", "logout", "send_text", "pair_phone", "is_logged_in", "is_on_whatsapp"}


async def read_frame(reader):
    size = HEADER.unpack(await reader.readexactly(HEADER.size))[0]
    return pickle.loads(await reader.readexactly(size))


def write_frame(writer, message):
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(HEADER.pack(len(data)) + data)


# --- the worker's side --------------------------------------------------------------
class Shard:
    """One child process and the clients it hosts."""

    def __init__(self, transport, number):
        self.transport = transport
        self.number = number
        self.process = None
        self.reader = self.writer = None
        self.clients = {}  # company id -> ShardClient
        self.waiting = {}  # req -> future
        self.reqs = itertools.count(1)
        self.ready = None  # a task spawning the process
        self.reading = None
        self.spawned = 0
        self.exits = []  # return codes of processes that ended

    @property
    def alive(self):
        return self.process is not None and self.process.returncode is None and self.reading

    async def ensure(self):
        if self.alive:
            return
        if self.ready is None or self.ready.done():
            self.ready = asyncio.ensure_future(self._spawn())
        try:
            await asyncio.shield(self.ready)
        except Exception as exc:
            raise base.TransportError(
                f"neonize shard {self.number} did not start: {exc!r}"
            ) from exc

    async def _spawn(self):
        parent, child = socket.socketpair()
        conf = dict(settings.WHATSAPP)
        shards = max(1, self.transport.shards)
        conf["STORE_MAX_CLIENTS"] = max(1, conf.get("STORE_MAX_CLIENTS", 100) // shards)
        conf["MAX_SESSIONS_PER_WORKER"] = max(
            10, conf.get("MAX_SESSIONS_PER_WORKER", 1000) // shards + 10
        )
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "whatsapp.transport.shards",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                cwd=str(ROOT),
                # Its own session: a signal to the worker's process group (Ctrl-C,
                # honcho, systemd's KillMode=mixed) is the worker's to handle; a
                # shard ends when the worker closes its socket (or dies).
                start_new_session=True,
            )
        finally:
            child.close()
        self.reader, self.writer = await asyncio.open_connection(sock=parent)
        write_frame(self.writer, ("config", conf))
        await self.writer.drain()
        hello = await asyncio.wait_for(read_frame(self.reader), SPAWN_TIMEOUT)
        if hello != ("ready", self.process.pid):
            raise base.TransportError(f"neonize shard {self.number} did not start: {hello!r}")
        self.spawned += 1
        self.reading = asyncio.get_running_loop().create_task(
            self._read(self.process, self.reader), name=f"neonize-shard-{self.number}"
        )
        logger.info("neonize shard %s started (pid %s)", self.number, self.process.pid)

    async def _read(self, process, reader):
        try:
            while True:
                message = await read_frame(reader)
                if message[0] == "reply":
                    _, req, ok, value = message
                    future = self.waiting.pop(req, None)
                    if future is not None and not future.done():
                        if ok:
                            future.set_result(value)
                        else:
                            error, permanent = value
                            future.set_exception(base.TransportError(error, permanent=permanent))
                elif message[0] == "event":
                    _, seq, company, event = message
                    asyncio.ensure_future(self._deliver(seq, company, event))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, pickle.PickleError):
            pass
        finally:
            await self._ended(process)

    async def _deliver(self, seq, company, event):
        client = self.clients.get(company)
        error = None
        if client is not None:
            try:
                await client.deliver(event)
            except Exception as exc:  # the shard records it like a failed handler
                error = f"{exc!r}"
        try:
            write_frame(self.writer, ("handled", seq, error))
            await self.writer.drain()
        except (ConnectionError, OSError, AttributeError):
            pass

    async def _ended(self, process):
        """The shard's process is gone (a Go fatal error, a kill, our shutdown)."""
        try:
            code = await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            code = await process.wait()
        self.exits.append(code)
        self.reading = None
        if self.writer is not None:
            self.writer.close()
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(base.TransportError(f"neonize shard {self.number} ended"))
        clients, self.clients = self.clients, {}
        if self.transport.closing:
            return
        logger.error(
            "neonize shard %s (pid %s) ended with code %s; its %d clients reconnect",
            self.number,
            process.pid,
            code,
            len(clients),
        )
        for client in clients.values():
            client.shard_ended(f"neonize shard {self.number} ended (exit code {code})")

    async def call(self, company, op, *args):
        if not self.alive:
            raise base.TransportError(f"neonize shard {self.number} is not running")
        req = next(self.reqs)
        future = asyncio.get_running_loop().create_future()
        self.waiting[req] = future
        try:
            write_frame(self.writer, ("call", req, company, op, args))
            await self.writer.drain()
            return await asyncio.wait_for(future, CALL_TIMEOUT)
        except TimeoutError as exc:
            raise base.TransportError(f"neonize shard {self.number}: {op} timed out") from exc
        except (ConnectionError, OSError) as exc:
            raise base.TransportError(f"neonize shard {self.number}: {exc}") from exc
        finally:
            self.waiting.pop(req, None)

    async def close(self):
        process = self.process
        if process is None or process.returncode is not None:
            return
        if self.writer is not None:
            self.writer.close()  # the shard stops its clients and exits on EOF
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self.reading is not None:
            await asyncio.gather(self.reading, return_exceptions=True)


class ShardClient:
    """A `base.Client` whose neonize client lives in a shard process."""

    def __init__(self, shard, spec, on_event):
        self.shard = shard
        self.spec = spec
        self._sink = on_event
        self._started = self._stopped = False
        self._gone = False  # the shard ended under us

    def __repr__(self):
        return f"<ShardClient company={self.spec.company_id} shard={self.shard.number}>"

    async def deliver(self, event):
        if not self._stopped and not self._gone:
            await self._sink(event)

    def shard_ended(self, why):
        if self._stopped or self._gone:
            return
        self._gone = True
        asyncio.ensure_future(self._sink(base.Closed(error=why, permanent=False)))

    async def _call(self, op, *args):
        if self._gone:
            raise base.TransportError("the client's neonize shard ended")
        return await self.shard.call(self.spec.company_id, op, *args)

    async def start(self):
        if self._started:
            raise base.TransportError("a neonize client starts once; create a new one")
        self._started = True
        await self.shard.ensure()
        self.shard.clients[self.spec.company_id] = self
        try:
            await self.shard.call(self.spec.company_id, "start", self.spec)
        except BaseException:
            self.shard.clients.pop(self.spec.company_id, None)
            raise

    async def stop(self):
        if self._stopped:
            return
        self._stopped = True
        if self.shard.clients.get(self.spec.company_id) is self:
            del self.shard.clients[self.spec.company_id]
        if self._started and not self._gone and self.shard.alive:
            try:
                await self.shard.call(self.spec.company_id, "stop")
            except base.TransportError as exc:
                logger.warning(
                    "company %s: stop in its shard failed: %s", self.spec.company_id, exc
                )

    async def logout(self):
        await self._call("logout")

    async def send_text(self, jid, text, message_id=""):
        return await self._call("send_text", jid, text, message_id)

    async def is_on_whatsapp(self, phones):
        return await self._call("is_on_whatsapp", list(phones))

    async def pair_phone(self, phone_e164):
        return await self._call("pair_phone", phone_e164)

    async def is_logged_in(self):
        if self._gone or self._stopped or not self.shard.alive:
            return False
        try:
            return bool(await self._call("is_logged_in"))
        except base.TransportError:
            return False


def sharded(transport_class):
    """The neonize transport with its clients in `shards` child processes."""

    class ShardedTransport(transport_class):
        def __init__(self, shards=None):
            super().__init__()
            self.shards = shards or settings.WHATSAPP.get("NEONIZE_SHARDS", 0) or 1
            self._shards = [Shard(self, n) for n in range(self.shards)]
            self.closing = False

        def shard_of(self, company_id):
            return self._shards[int(company_id) % self.shards]

        def new_client(self, spec, on_event):
            store = spec.store or self.store_for(spec.company_id)
            return ShardClient(self.shard_of(spec.company_id), replace(spec, store=store), on_event)

        def store_budget(self):
            return None  # each shard keeps its own (STORE_MAX_CLIENTS / shards)

        async def aclose(self):
            self.closing = True
            await asyncio.gather(*(s.close() for s in self._shards), return_exceptions=True)
            await super().aclose()

    ShardedTransport.__name__ = f"Sharded{transport_class.__name__}"
    return ShardedTransport


# --- the shard's side -------------------------------------------------------------
class ShardHost:
    """Runs in the child: one NeonizeTransport, the requests of the worker."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.transport = NeonizeTransport()
        self.clients = {}
        self.seq = itertools.count(1)
        self.handled = {}  # seq -> future
        self.tasks = set()

    def sink_for(self, company):
        async def sink(event):
            seq = next(self.seq)
            future = asyncio.get_running_loop().create_future()
            self.handled[seq] = future
            try:
                write_frame(self.writer, ("event", seq, company, event))
                await self.writer.drain()
                error = await future
            finally:
                self.handled.pop(seq, None)
            if error:
                raise RuntimeError(f"the worker's handler failed: {error}")

        return sink

    async def serve(self):
        try:
            while True:
                message = await read_frame(self.reader)
                if message[0] == "handled":
                    future = self.handled.get(message[1])
                    if future is not None and not future.done():
                        future.set_result(message[2])
                elif message[0] == "call":
                    task = asyncio.ensure_future(self.call(*message[1:]))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the worker closed the socket (or died): stop everything, exit
        for future in self.handled.values():
            if not future.done():
                future.set_result("the worker is gone")
        await asyncio.gather(*(c.stop() for c in self.clients.values()), return_exceptions=True)
        await self.transport.aclose()

    async def call(self, req, company, op, args):
        try:
            if op not in OPS:
                raise base.TransportError(f"unknown shard operation {op!r}", permanent=True)
            if op == "start":
                (spec,) = args
                client = self.transport.new_client(spec, self.sink_for(company))
                old = self.clients.get(company)
                if old is not None:  # close before create, as the worker does
                    await old.stop()
                self.clients[company] = client
                value = await client.start()
            elif op == "stop":
                client = self.clients.pop(company, None)
                value = await client.stop() if client is not None else None
            else:
                client = self.clients.get(company)
                if client is None:
                    raise base.TransportError("the client is not running")
                value = await getattr(client, op)(*args)
            reply = ("reply", req, True, value)
        except Exception as exc:
            if not isinstance(exc, base.TransportError):
                exc = base.TransportError(f"{op} failed in the shard: {exc!r}")
            reply = ("reply", req, False, (str(exc), exc.permanent))
        try:
            write_frame(self.writer, reply)
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass


async def _shard_main(fd):
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    kind, conf = await read_frame(reader)
    assert kind == "config"
    from django.conf import settings as django_settings

    if not django_settings.configured:
        django_settings.configure(WHATSAPP=conf, USE_TZ=True)
    host = ShardHost(reader, writer)
    write_frame(writer, ("ready", os.getpid()))
    await writer.drain()
    await host.serve()


def main():
    # The worker decides when a shard ends (it closes the socket); a Ctrl-C meant
    # for the worker's process group must not kill the shard before its clients stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_shard_main(int(sys.argv[1])))


ShardedNeonizeTransport = sharded(NeonizeTransport)


if __name__ == "__main__":
    main()
