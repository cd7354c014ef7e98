"""The transport that talks to the project's WhatsApp simulator.

`SimulatorClient` implements `whatsapp.transport.base.Client` over one
websocket to `manage.py whatsapp_simulator` and emits the same events as the
neonize adapter, in the same situations, so the session worker cannot tell
them apart:

* no stored credential: QRCode (one per rotated code; Closed when none was
  scanned in time), then after a scan or a pairing code PairSuccess and, after
  the simulator's restart, Connected;
* a stored credential: Connected, or LoggedOut(on_connect=True) for a device
  the simulator does not know, or TemporaryBan while banned;
* a remote drop of a paired connection: Disconnected, then whatsmeow's
  auto-reconnect (attempt n waits n x 2 s) ending in Connected again; a failed
  first dial ends in Closed, like neonize (which does not retry it either);
* StreamReplaced (440), LoggedOut and TemporaryBan end the client: no reconnect;
* keep-alive pings every `keepalive` seconds (the simulator says how often):
  each unanswered one emits KeepAliveTimeout, an answer after that
  KeepAliveRestored; failing longer than `keepalive_max_fail` forces a reconnect;
* inbound messages arrive as real neonize MessageEv protobufs
  (`whatsapp.transport.build`; text, media with captions, voice notes,
  locations, reactions) and are acknowledged only after the event handler
  returned, so a message whose handling was cut short is redelivered;
* the task delivering an event is never cancelled by stop(): the handler may
  be the one stopping the client (StreamReplaced), as with neonize's handlers.

The credential ("store") of a company is a small JSON file where neonize
keeps its SQLite store (WHATSAPP["STORE_DIR"]), so a restarted worker resumes
without pairing.
"""

import asyncio
import hashlib
import itertools
import json
import logging
import os
import socket
import weakref
from dataclasses import replace
from pathlib import Path

import aiohttp
from django.conf import settings

from . import base
from .build import message_event
from .media import MediaDownloadError, parse_descriptor

logger = logging.getLogger(__name__)

CALL_TIMEOUT = 30.0
DIAL_TIMEOUT = 10.0
RECONNECT_STEP = 2.0  # whatsmeow: attempt n waits n x 2 s
RECONNECT_CAP = 60.0
TERMINAL = {"stream_replaced", "logged_out", "temporary_ban"}


def message_content(frame):
    """The waE2E.Message of a `message` frame: text, media with a caption, a voice
    note, a location or a reaction, as a phone would send them."""
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as wa

    kind, text = frame.get("kind", "text"), str(frame.get("text", ""))
    if kind == "text":
        return wa.Message(conversation=text)
    if kind in MEDIA_PARTS:
        return wa.Message(**{MEDIA_PARTS[kind]: _media_part(wa, kind, text, frame)})
    if kind == "location":
        return wa.Message(
            locationMessage=wa.LocationMessage(
                degreesLatitude=52.52, degreesLongitude=13.405, name=text
            )
        )
    if kind == "reaction":
        key = MessageKey(remoteJID=frame["chat"], fromMe=True, ID=str(frame["reacts_to"]))
        return wa.Message(reactionMessage=wa.ReactionMessage(key=key, text=text))
    raise ValueError(f"unknown message kind {kind!r}")


MEDIA_PARTS = {
    "image": "imageMessage",
    "video": "videoMessage",
    "document": "documentMessage",
    "audio": "audioMessage",
    "sticker": "stickerMessage",
}


def _media_part(wa, kind, caption, frame):
    """The media part of a message as a phone sends it: where the file is
    (`directPath` on the simulator's media server), its type, length and SHA-256."""
    media = frame.get("media") or {}
    common = {
        "directPath": str(media.get("path", "")),
        "mimetype": str(media.get("mimetype", "")),
        "fileLength": int(media.get("size") or 0),
        "fileSHA256": bytes.fromhex(media.get("sha256", "")),
        "mediaKey": b"simulator",
    }
    if kind == "image":
        return wa.ImageMessage(caption=caption, **common)
    if kind == "video":
        return wa.VideoMessage(caption=caption, seconds=12, **common)
    if kind == "document":
        name = str(media.get("file_name") or "document.pdf")
        return wa.DocumentMessage(caption=caption, fileName=name, **common)
    if kind == "audio":
        return wa.AudioMessage(PTT=True, seconds=7, **common)
    return wa.StickerMessage(**common)


class SimulatorTransport:
    name = "simulator"
    # The simulator takes the sender's message id (as whatsmeow's SendRequestExtra.ID
    # does), so a resend with the same id is safe: the phone shows it once.
    sends_with_id = True

    def __init__(self, url=None, reconnect_step=RECONNECT_STEP, store_dir=None):
        self.url = (url or settings.WHATSAPP["SIMULATOR_URL"]).rstrip("/")
        if not self.url.endswith("/ws"):
            self.url += "/ws"
        self.reconnect_step = reconnect_step
        self.store_dir = Path(store_dir or settings.WHATSAPP["STORE_DIR"])
        self.agent = f"{socket.gethostname()}:{os.getpid()}"
        self._sessions = weakref.WeakKeyDictionary()  # loop -> aiohttp.ClientSession

    @property
    def http_url(self):
        """The simulator's HTTP base (media server, uploads): the websocket's host."""
        base = self.url[: -len("/ws")]
        return "http" + base[2:] if base.startswith("ws") else base

    def store_for(self, company_id):
        return str(self.store_dir / f"company-{int(company_id)}.simulator.json")

    def http(self):
        """The loop's one HTTP session (no connection limit: one socket per client)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=DIAL_TIMEOUT, sock_connect=DIAL_TIMEOUT
                ),
            )
            self._sessions[loop] = session
        return session

    def new_client(self, spec, on_event):
        store = spec.store or self.store_for(spec.company_id)
        return SimulatorClient(replace(spec, store=store), on_event, self)

    def forget_device(self, spec):
        """After a logout: delete the company's stored credential."""
        path = Path(spec.store or self.store_for(spec.company_id))
        if path.exists():
            path.unlink()
            return True
        return False

    async def aclose(self):
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            await session.close()


# Answers to a request of ours (logout_ok also ends the session: handled in order).
REPLIES = {"send_ack", "send_error", "pair_code", "on_whatsapp", "error"}


class SimulatorClient:
    def __init__(self, spec: base.ClientSpec, on_event: base.EventSink, transport):
        self.spec = spec
        self._sink = on_event
        self._transport = transport
        self._ws = None
        self._task = None
        self._keepalive = None
        self._started = self._stopping = False
        self._logged_in = False
        self._reqs = itertools.count(1)
        self._waiting = {}  # req -> future
        self._emitting = set()  # tasks inside the event handler right now
        self._outcome = ""
        self._outcome_connected = False  # the current connection got `connected`
        self._ever_connected = False
        self._attempt = 0  # failed reconnects in a row (whatsmeow's AutoReconnectErrors)
        self._ka_failures = 0
        self._ka_answered = True
        self.handler_errors = 0
        self.last_handler_error = ""
        self.reconnects = 0

    def __repr__(self):
        return f"<SimulatorClient company={self.spec.company_id} jid={self.spec.jid or '-'}>"

    # --- the stored credential -------------------------------------------------------
    def _credential(self):
        try:
            return json.loads(Path(self.spec.store).read_text()).get("credential", "")
        except (OSError, ValueError, AttributeError):
            return ""

    def _save_credential(self, credential, jid):
        path = Path(self.spec.store)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"credential": credential, "jid": jid, "simulator": self._transport.url})
        )
        os.replace(tmp, path)

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self):
        if self._started:
            raise base.TransportError("a SimulatorClient starts once; create a new one")
        self._started = True
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"simulator-client:{self.spec.company_id}"
        )

    async def stop(self):
        if self._stopping:
            return
        self._stopping = True
        self._logged_in = False
        self._fail_waiting("the client was stopped")
        await self._close_ws()
        for task in (self._keepalive, self._task):
            # A task inside the event handler may be the very one stopping us
            # (StreamReplaced -> the worker stops its client): cancelling it would
            # cut the handler short. It ends by itself once the handler returns.
            if task is None or task.done() or task in self._emitting:
                continue
            task.cancel()
            try:
                await asyncio.wait_for(task, 5)
            except (asyncio.CancelledError, TimeoutError, Exception):
                pass

    async def _close_ws(self):
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), 2)
            except (TimeoutError, Exception):
                pass

    async def _run(self):
        while not self._stopping:
            try:
                self._ws = await self._transport.http().ws_connect(
                    self._transport.url,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                    max_msg_size=4 * 1024 * 1024,
                    autoping=True,
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if not self._ever_connected:  # neonize does not retry a failed first dial
                    await self._emit(
                        base.Closed(
                            error=f"cannot reach the simulator at {self._transport.url}: {exc}"
                        )
                    )
                    return
                await self._reconnect_pause()
                continue
            outcome = await self._connection()
            if self._stopping or outcome in TERMINAL or outcome == "logged_out_by_us":
                return
            if outcome == "restart":  # just paired: reconnect at once with the credential
                continue
            if outcome == "dropped" and self._ever_connected and self._credential():
                if self._outcome_connected:
                    self.reconnects += 1
                    await self._emit(
                        base.Disconnected(reason="connection to WhatsApp lost; reconnecting")
                    )
                await self._reconnect_pause()
                continue
            await self._emit(
                base.Closed(
                    error="connection ended before it was logged in"
                    if outcome == "dropped"
                    else outcome
                )
            )
            return

    async def _reconnect_pause(self):
        self._attempt += 1
        await asyncio.sleep(min(self._attempt * self._transport.reconnect_step, RECONNECT_CAP))

    async def _connection(self):
        """Serve one websocket until it ends; returns why it ended."""
        ws = self._ws
        self._outcome = "dropped"
        self._outcome_connected = False
        try:
            await ws.send_json(
                {
                    "type": "hello",
                    "credential": self._credential() or None,
                    "company": str(self.spec.company_id),
                    "agent": self._transport.agent,
                }
            )
            # Replies to our requests (a send's ack) are read and answered at
            # once by `_read`; every other frame is handled here, in order, one
            # at a time, as before. So a send does not wait behind inbound
            # messages that are waiting for their commit (neonize, too, does not
            # hold a send's answer behind its event handlers).
            frames = asyncio.Queue()
            reader = asyncio.get_running_loop().create_task(
                self._read(ws, frames), name=f"simulator-read:{self.spec.company_id}"
            )
            try:
                while (frame := await frames.get()) is not None:
                    await self._frame(ws, frame)
                    if self._outcome != "dropped":
                        break
            finally:
                if not reader.done():
                    reader.cancel()
        except (aiohttp.ClientError, ConnectionResetError, RuntimeError):
            pass
        finally:
            self._logged_in = False
            keepalive, self._keepalive = self._keepalive, None
            if keepalive is not None and keepalive not in self._emitting:
                keepalive.cancel()  # (one inside the handler ends by itself: ws is closed)
            self._fail_waiting("the connection to the simulator ended")
            if self._ws is ws:
                self._ws = None
            if not ws.closed:
                try:
                    await asyncio.wait_for(ws.close(), 2)
                except (TimeoutError, Exception):
                    pass
        return self._outcome

    # --- frames from the simulator ---------------------------------------------------
    async def _read(self, ws, frames):
        """Read the websocket: replies resolve their request now, other frames
        queue for `_connection`; None marks the end of the connection."""
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    continue
                if frame.get("type") in REPLIES:
                    future = self._waiting.pop(frame.get("req"), None)
                    if future is not None and not future.done():
                        future.set_result(frame)
                    continue
                frames.put_nowait(frame)
        except (aiohttp.ClientError, ConnectionResetError, RuntimeError):
            pass
        finally:
            frames.put_nowait(None)

    async def _frame(self, ws, frame):
        kind = frame.get("type")
        if kind == "message":
            await self._message(ws, frame)
        elif kind in {"send_ack", "send_error", "pair_code", "logout_ok", "error"}:
            future = self._waiting.pop(frame.get("req"), None)
            if future is not None and not future.done():
                future.set_result(frame)
            if kind == "logout_ok":
                self._outcome = "logged_out_by_us"
        elif kind == "pong":
            await self._pong()
        elif kind == "receipt":
            await self._emit(
                base.Receipt(
                    message_ids=tuple(frame.get("ids") or ()),
                    kind=frame.get("kind", "delivered"),
                    chat=frame.get("chat", ""),
                )
            )
        elif kind == "connected":
            self._logged_in = True
            self._outcome_connected = self._ever_connected = True
            self._attempt = 0
            self._start_keepalive(ws, frame)
            await self._emit(
                base.Connected(jid=frame.get("jid", ""), push_name=frame.get("push_name", ""))
            )
        elif kind == "qr":
            await self._emit(base.QRCode(codes=tuple(frame.get("codes") or ())))
        elif kind == "pair_success":
            self._save_credential(frame["credential"], frame["jid"])
            await self._emit(
                base.PairSuccess(jid=frame["jid"], push_name=frame.get("push_name", ""))
            )
        elif kind == "qr_timeout":
            self._outcome = "no QR code was scanned in time"
        elif kind == "restart":
            self._outcome = "restart"
        elif kind == "stream_replaced":
            self._outcome = kind
            self._logged_in = False
            await self._emit(base.StreamReplaced())
        elif kind == "logged_out":
            self._outcome = kind
            self._logged_in = False
            await self._emit(
                base.LoggedOut(
                    reason=frame.get("reason", ""), on_connect=bool(frame.get("on_connect"))
                )
            )
        elif kind == "temporary_ban":
            self._outcome = kind
            self._logged_in = False
            await self._emit(
                base.TemporaryBan(
                    code=str(frame.get("code", "")),
                    expires_in_seconds=int(frame.get("expires_in") or 0),
                )
            )

    async def _message(self, ws, frame):
        try:
            event = message_event(
                str(frame["id"]),
                frame["chat"],
                content=message_content(frame),
                sender=frame.get("sender") or None,
                sender_alt=frame.get("sender_alt") or "",
                push_name=frame.get("push_name", ""),
                is_group=bool(frame.get("is_group")),
                from_me=bool(frame.get("from_me")),
                timestamp=frame.get("timestamp"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            # A message nobody can read would come back forever: drop it, loudly.
            self._handler_failed("message frame", exc)
        else:
            if not await self._emit(base.InboundMessage(event=event)):
                return  # not handled: no ack, the simulator redelivers it
        if self._stopping or ws.closed:
            return
        try:
            await ws.send_json({"type": "ack", "id": frame.get("id")})
        except (aiohttp.ClientError, ConnectionResetError, RuntimeError):
            pass  # lost with the connection: the message comes again

    # --- keep-alive ----------------------------------------------------------------------
    def _start_keepalive(self, ws, frame):
        interval = float(frame.get("keepalive") or 20.0)
        max_fail = float(frame.get("keepalive_max_fail") or 180.0)
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._ka_failures = 0
        self._ka_answered = True
        self._keepalive = asyncio.get_running_loop().create_task(
            self._keepalive_loop(ws, interval, max_fail)
        )

    async def _keepalive_loop(self, ws, interval, max_fail):
        n = 0
        while not ws.closed and not self._stopping:
            n += 1
            self._ka_answered = False
            try:
                await ws.send_json({"type": "ping", "n": n})
            except (aiohttp.ClientError, ConnectionResetError, RuntimeError):
                return
            await asyncio.sleep(interval)
            if self._ka_answered:
                continue
            self._ka_failures += 1
            await self._emit(base.KeepAliveTimeout(error_count=self._ka_failures))
            if self._ka_failures * interval >= max_fail and not ws.closed:
                # whatsmeow gives up on a silent socket and reconnects
                await ws.close()
                return

    async def _pong(self):
        self._ka_answered = True
        if self._ka_failures:
            self._ka_failures = 0
            await self._emit(base.KeepAliveRestored())

    # --- operations -----------------------------------------------------------------------
    async def _call(self, frame, what):
        ws = self._ws
        if ws is None or ws.closed or self._stopping:
            raise base.TransportError(f"{what}: not connected to the simulator")
        req = next(self._reqs)
        future = asyncio.get_running_loop().create_future()
        self._waiting[req] = future
        try:
            await ws.send_json({**frame, "req": req})
            return await asyncio.wait_for(future, CALL_TIMEOUT)
        except TimeoutError as exc:
            raise base.TransportError(f"{what} timed out after {CALL_TIMEOUT:.0f}s") from exc
        except (aiohttp.ClientError, ConnectionResetError, RuntimeError) as exc:
            raise base.TransportError(f"{what} failed: {exc}") from exc
        finally:
            self._waiting.pop(req, None)

    def _fail_waiting(self, why):
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(base.TransportError(why))

    async def send_text(self, jid, text, message_id=""):
        if not self._logged_in:
            raise base.TransportError("not logged in to WhatsApp right now")
        frame = {"type": "send", "to": jid, "text": text}
        if message_id:
            frame["id"] = message_id
        reply = await self._call(frame, "send")
        if reply.get("type") != "send_ack":
            raise base.TransportError(
                f"send failed: {reply.get('error', reply)}", permanent=bool(reply.get("permanent"))
            )
        if not reply.get("id"):
            raise base.TransportError("WhatsApp returned no message id")
        return reply["id"]

    async def is_on_whatsapp(self, phones):
        """Ask the simulator as whatsmeow asks WhatsApp (IsOnWhatsApp): {phone: Recipient}."""
        if not phones:
            return {}
        if not self._logged_in:
            raise base.TransportError("not logged in to WhatsApp right now")
        asked = ["+" + "".join(ch for ch in str(p) if ch.isdigit()) for p in phones]
        reply = await self._call({"type": "is_on_whatsapp", "phones": asked}, "lookup")
        if reply.get("type") != "on_whatsapp":
            raise base.TransportError(f"is-on-WhatsApp lookup failed: {reply.get('error', reply)}")
        return base.match_answers(
            list(phones),
            [(r.get("query", ""), r.get("is_in"), r.get("jid", "")) for r in reply["results"]],
        )
    async def send_media(self, jid, media, message_id=""):
        """Upload the file (streamed from its path), then send it as `media.kind`."""
        if not self._logged_in:
            raise base.TransportError("not logged in to WhatsApp right now")
        url = f"{self._transport.http_url}/upload"
        try:
            with open(media.path, "rb") as fh:
                async with self._transport.http().post(
                    url, data=fh, headers={"Content-Type": media.mimetype},
                    timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
                ) as response:
                    if response.status != 200:
                        raise base.TransportError(f"media upload failed: HTTP {response.status}")
                    uploaded = await response.json()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise base.TransportError(f"media upload failed: {exc!r}") from exc
        part = {
            "path": uploaded["path"],
            "kind": media.kind,
            "mimetype": media.mimetype,
            "file_name": media.file_name,
            "caption": media.caption,
            "voice_note": media.voice_note,
        }
        return await self._send({"type": "send", "to": jid, "media": part}, message_id)

    async def send_location(self, jid, location, message_id=""):
        if not self._logged_in:
            raise base.TransportError("not logged in to WhatsApp right now")
        place = {
            "latitude": location.latitude,
            "longitude": location.longitude,
            "name": location.name,
            "address": location.address,
        }
        return await self._send({"type": "send", "to": jid, "location": place}, message_id)

    async def _send(self, frame, message_id):
        if message_id:
            frame["id"] = message_id
        reply = await self._call(frame, "send")
        if reply.get("type") != "send_ack":
            raise base.TransportError(
                f"send failed: {reply.get('error', reply)}", permanent=bool(reply.get("permanent"))
            )
        if not reply.get("id"):
            raise base.TransportError("WhatsApp returned no message id")
        return reply["id"]

    async def download_media(self, descriptor, path, max_bytes):
        """Write the file of a received message to `path`, streamed (1 MiB at a
        time); checked against the declared length and SHA-256, as whatsmeow does.
        Raises MediaDownloadError (expired: 404/410; too_large; failed)."""
        _name, part, _msg = parse_descriptor(descriptor)
        url = self._transport.http_url + part.directPath
        declared = int(part.fileLength or 0)
        digest = hashlib.sha256()
        size = 0
        try:
            async with self._transport.http().get(url) as response:
                if response.status in (404, 410):
                    raise MediaDownloadError(
                        f"media server answered {response.status}: the media expired",
                        reason="expired",
                    )
                if response.status != 200:
                    raise MediaDownloadError(f"media server answered HTTP {response.status}")
                with open(path, "wb") as fh:
                    async for chunk in response.content.iter_chunked(1024 * 1024):
                        size += len(chunk)
                        if size > max_bytes:
                            raise MediaDownloadError(
                                f"larger than the limit of {max_bytes} bytes", reason="too_large"
                            )
                        digest.update(chunk)
                        fh.write(chunk)
        except (aiohttp.ClientError, OSError) as exc:
            raise MediaDownloadError(f"download failed: {exc!r}") from exc
        if declared and size != declared:
            raise MediaDownloadError(f"truncated: got {size} of {declared} bytes")
        if part.fileSHA256 and digest.digest() != part.fileSHA256:
            raise MediaDownloadError("the file does not match its SHA-256")
        return size

    async def mark_read(self, chat, sender, message_ids):
        await self._tell({"type": "read", "chat": chat, "sender": sender, "ids": list(message_ids)})

    async def send_presence(self, chat, state):
        await self._tell({"type": "presence", "chat": chat, "state": state})

    async def _tell(self, frame):
        """A frame WhatsApp does not answer (read marks, presence)."""
        ws = self._ws
        if not self._logged_in or ws is None or ws.closed:
            raise base.TransportError("not logged in to WhatsApp right now")
        await ws.send_json(frame)

    async def pair_phone(self, phone_e164):
        digits = "".join(ch for ch in str(phone_e164) if ch.isdigit())
        reply = await self._call({"type": "pair_phone", "phone": digits}, "pairing code request")
        if reply.get("type") != "pair_code":
            raise base.TransportError(f"pairing code request failed: {reply.get('error', reply)}")
        return reply["code"]

    async def logout(self):
        reply = await self._call({"type": "logout"}, "logout")
        if reply.get("type") != "logout_ok":
            raise base.TransportError(f"logout failed: {reply.get('error', reply)}")
        self._logged_in = False
        self._transport.forget_device(self.spec)

    async def is_logged_in(self):
        return (
            self._logged_in and not self._stopping and self._ws is not None and not self._ws.closed
        )

    # --- events -------------------------------------------------------------------------
    async def _emit(self, event):
        """Hand `event` to the worker; False if the handler failed."""
        if self._stopping:
            return False
        task = asyncio.current_task()
        self._emitting.add(task)
        try:
            await self._sink(event)
            return True
        except base.EventRefused:
            return False  # not taken (a let-go client's late message): no ack
        except Exception as exc:
            self._handler_failed(type(event).__name__, exc)
            return False
        finally:
            self._emitting.discard(task)

    def _handler_failed(self, what, exc):
        self.handler_errors += 1
        self.last_handler_error = f"{what}: {exc!r}"
        logger.error("company %s: handler for %s failed", self.spec.company_id, what, exc_info=exc)
