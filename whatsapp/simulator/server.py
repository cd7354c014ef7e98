"""The simulator's aiohttp application: one port for everything.

  GET  /ws                         the websocket clients connect to (see protocol.py)
  GET  /stats                      counters: totals, per company, per credential, conflicts
  GET  /sends?company=&phone=      texts the companies sent (what each phone received)
  GET  /pending                    connections waiting for a QR scan or a pairing code
  POST /control/scan               {company | ref, phone?, push_name?} scan the QR
  POST /control/enter-code         {code} enter a pairing code on the phone
  POST /control/messages           {company, from, text, mode?, push_name?, count?,
                                    (mode: phone, device, lid, lid_only, group, status,
                                    own = typed on the company's phone to `from`)
                                    drop_after?} or {company, messages: [...]}
  POST /control/drop               {company} a network drop (no close frame)
  POST /control/keepalive-timeout  {company, seconds} withhold keep-alive answers
  POST /control/logout             {company, reason?} logout from the phone
  POST /control/ban                {company, seconds, code?} temporary ban
  POST /control/slow-sends         {company, seconds, count?} the next sends' acks come late
  POST /control/reset              forget everything (tests)
  GET  /                           the demo page: write as a phone, read the answers
  GET  /media/<token>              the file of a media message (410 once expired, 500 broken)
  POST /upload                     a client uploads a file to send (raw body) -> {path}

A message of a media kind (image, video, document, audio, sticker) carries a
file the client downloads from /media/<token>; `media` in its control request
says how: {size, state: ok|expired|broken|truncated|slow, fail_times, delay,
mimetype, file_name, content_hex, declared_size}.

Every control request answers JSON; a bad one gets 400 (or 404 for an
unknown company/code) with {"error": "..."} and changes nothing.
"""

import asyncio
import json
import logging
from pathlib import Path

from aiohttp import WSMsgType, web

from . import protocol as p
from .media import MediaError
from .records import Connection
from .state import SimulatorState

logger = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
MAX_FRAME = 1024 * 1024
MAX_BATCH = 5000
PAGE = Path(__file__).with_name("demo.html")
STATE = web.AppKey("state", SimulatorState)


def build_app(state: SimulatorState):
    app = web.Application(client_max_size=p.MAX_MEDIA_BYTES + 1024 * 1024)
    app[STATE] = state
    app.router.add_get("/media/{token}", media_file)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/stats", stats)
    app.router.add_get("/sends", sends)
    app.router.add_get("/pending", pending)
    app.router.add_get("/activity", activity)
    app.router.add_get("/", page)
    for name, handler in CONTROLS.items():
        app.router.add_post(f"/control/{name}", handler)
    return app


# --- the websocket ---------------------------------------------------------------
async def websocket(request):
    state = request.app[STATE]
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, autoping=True)
    await ws.prepare(request)
    transport = request.transport
    closers = set()

    async def send(frame):
        await ws.send_str(json.dumps(frame, separators=(",", ":")))

    async def close(code):
        # Close in the background: the client's reply must not hold up the caller.
        task = asyncio.get_running_loop().create_task(ws.close(code=code))
        closers.add(task)
        task.add_done_callback(closers.discard)

    def abort():
        if transport is not None:
            transport.close()  # flushes what was written, then FIN: no close frame

    conn = Connection(send, close, abort)
    try:
        first = await asyncio.wait_for(ws.receive(), HELLO_TIMEOUT)
        hello = _decode(first)
        if hello is None or hello.get("type") != "hello":
            await conn.end(
                {"type": "error", "error": "the first frame must be hello"}, p.CLOSE_BAD_HELLO
            )
            return ws
        await state.hello(conn, hello)
        async for message in ws:
            if not conn.alive:
                break
            frame = _decode(message)
            if frame is None:
                if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
                await conn.send({"type": "error", "error": "frames are JSON objects"})
                continue
            await _dispatch(state, conn, frame)
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        state.closed(conn)
        if closers:
            await asyncio.gather(*closers, return_exceptions=True)
    return ws


def _decode(message):
    if message.type != WSMsgType.TEXT:
        return None
    try:
        frame = json.loads(message.data)
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None


async def _dispatch(state, conn, frame):
    kind = frame.get("type")
    try:
        if kind == "ack":
            state.ack(conn, frame)
        elif kind == "ping":
            await state.ping(conn, frame)
        elif kind == "send":
            await state.send(conn, frame)
        elif kind == "is_on_whatsapp":
            await state.is_on_whatsapp(conn, frame)
        elif kind == "pair_phone":
            await state.pair_phone(conn, frame)
        elif kind == "logout":
            await state.client_logout(conn, frame)
        elif kind in ("read", "presence"):
            state.chat_activity(conn, frame)
        else:
            raise p.FrameError(f"unknown frame type {kind!r}")
    except p.FrameError as exc:
        await conn.send({"type": "error", "req": frame.get("req"), "error": str(exc)})


async def media_file(request):
    return await request.app[STATE].media.serve(request)


async def upload(request):
    """A client's upload of a file it is about to send (WhatsApp's media upload)."""
    data = await request.read()
    if not data:
        return web.json_response({"error": "empty upload"}, status=400)
    token = request.app[STATE].media.upload(data, request.headers.get("Content-Type", ""))
    return web.json_response({"path": f"/media/{token}", "size": len(data)})


# --- reports -----------------------------------------------------------------------
async def stats(request):
    return web.json_response(request.app[STATE].stats())


async def sends(request):
    state = request.app[STATE]
    company = request.query.get("company")
    phone = request.query.get("phone")
    try:
        rows = state.sends_by_phone.get(p.digits(phone), []) if phone else state.sends
    except p.FrameError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if company is not None:
        rows = [r for r in rows if r["company"] == company]
    return web.json_response({"count": len(rows), "sends": rows[-5000:]})


async def activity(request):
    """Read marks and presence the devices sent (optionally of one company)."""
    state = request.app[STATE]
    company = request.query.get("company")
    rows = [r for r in state.activity if company is None or r["company"] == company]
    return web.json_response({"count": len(rows), "activity": rows[-5000:]})


async def pending(request):
    state = request.app[STATE]
    return web.json_response(
        {
            "pending": [
                {
                    "ref": ref,
                    "company": c.company,
                    "agent": c.agent,
                    "pairing_codes": list(c.pair_phones),
                }
                for ref, c in state.pending.items()
            ]
        }
    )


async def page(request):
    return web.FileResponse(PAGE)


# --- control -----------------------------------------------------------------------
class BadRequest(Exception):
    status = 400


def control(handler):
    async def wrapped(request):
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        try:
            return web.json_response(await handler(request.app[STATE], body))
        except (BadRequest, p.FrameError, ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except LookupError as exc:
            return web.json_response({"error": str(exc).strip("'\"")}, status=404)

    return wrapped


def _target(state, body):
    if body.get("jid"):
        return state.credential_for(jid=body["jid"])
    if body.get("company") in (None, ""):
        raise BadRequest("say which company (or jid)")
    return state.credential_for(company=body["company"])


def _seconds(body, default=None):
    value = body.get("seconds", default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise BadRequest("seconds must be a number") from None
    if not 0 < seconds <= 30 * 86400:
        raise BadRequest("seconds must be between 0 and 30 days")
    return seconds


@control
async def scan(state, body):
    if body.get("ref") is None and body.get("company") in (None, ""):
        raise BadRequest("say which company (or QR ref)")
    conn = state.pending_for(body.get("company"), body.get("ref"))
    cred = await state.pair(conn, body.get("phone"), str(body.get("push_name") or ""))
    return {"jid": cred.jid, "company": cred.company}


@control
async def enter_code(state, body):
    if not body.get("code"):
        raise BadRequest("say which code")
    cred = await state.enter_code(body["code"])
    return {"jid": cred.jid, "company": cred.company}


def _message_frames(state, cred, body):
    items = body.get("messages")
    if items is None:
        count = body.get("count", 1)
        if not isinstance(count, int) or not 1 <= count <= MAX_BATCH:
            raise BadRequest(f"count must be an integer from 1 to {MAX_BATCH}")
        text = body.get("text")
        items = [{**body, "text": text if count == 1 else f"{text} #{i + 1}"} for i in range(count)]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise BadRequest(f"messages must be a list of 1 to {MAX_BATCH} objects")
    frames = []
    for item in items:
        if not isinstance(item, dict) or not item.get("from"):
            raise BadRequest("every message needs from (the phone) and text")
        if not isinstance(item.get("text"), str):
            raise BadRequest("every message needs from (the phone) and text")
        kind = item.get("kind", "text")
        media = None
        if kind in p.MEDIA_KINDS:
            try:
                media = state.media.add(kind, item.get("media"))
            except MediaError as exc:
                raise BadRequest(str(exc)) from None
        frames.append(
            p.inbound_frame(
                cred.jid,
                item["from"],
                item["text"],
                mode=item.get("mode", "phone"),
                push_name=str(item.get("push_name") or ""),
                group=item.get("group", ""),
                message_id=str(item.get("id") or ""),
                style=item.get("style", "android"),
                device=int(item.get("device") or 0),
                kind=kind,
                reacts_to=item.get("reacts_to", ""),
                media=media,
            )
        )
    return frames


@control
async def messages(state, body):
    cred = _target(state, body)
    frames = _message_frames(state, cred, body)  # all validated before any is queued
    for item in body.get("messages") or [body]:
        if item.get("mode") == "lid_only":  # WhatsApp knows whose LID it is; the client not
            phone = p.digits(item["from"])
            state.lids[p.lid_of(phone)] = phone
    online = cred.conn is not None
    await state.inject(cred, frames)
    dropped = bool(body.get("drop_after")) and state.drop(cred)
    return {
        "ids": [f["id"] for f in frames],
        "online": online,
        "dropped": dropped,
        "queued": len(cred.outbox),
    }


@control
async def drop(state, body):
    return {"dropped": state.drop(_target(state, body))}


@control
async def keepalive_timeout(state, body):
    return {"muted": state.mute(_target(state, body), _seconds(body))}


@control
async def logout(state, body):
    cred = _target(state, body)
    reason = body.get("reason") or "LOGGED_OUT"
    if reason not in p.LOGOUT_REASONS:
        raise BadRequest(f"reason must be one of {', '.join(p.LOGOUT_REASONS)}")
    return {"was_online": await state.phone_logout(cred, reason), "jid": cred.jid}


@control
async def ban(state, body):
    cred = _target(state, body)
    seconds = _seconds(body, 3600)
    code = body.get("code") or "SEND_TO_TOO_MANY_PEOPLE"
    if code not in p.BAN_CODES:
        raise BadRequest(f"code must be one of {', '.join(p.BAN_CODES)}")
    return {"was_online": await state.ban(cred, seconds, code), "jid": cred.jid}


@control
async def slow_sends(state, body):
    cred = _target(state, body)
    count = body.get("count", 1)
    if not isinstance(count, int) or not 1 <= count <= MAX_BATCH:
        raise BadRequest(f"count must be an integer from 1 to {MAX_BATCH}")
    seconds = _seconds(body)
    if seconds > 300:
        raise BadRequest("seconds must be at most 300 for a send")
    state.slow_down_sends(cred, seconds, count)
    return {"company": cred.company, "seconds": seconds, "count": count}


@control
async def numbers(state, body):
    """Where numbers live on WhatsApp: {"numbers": {"+52...": "521...@s.whatsapp.net",
    "+49...": null (not on WhatsApp), "+44...": true (its own digits, the default),
    "+52...": "mexican_legacy" (its 521 JID)}}."""
    wanted = body.get("numbers")
    if not isinstance(wanted, dict) or not wanted:
        raise BadRequest("numbers must be an object of number -> JID, null or true")
    state.set_numbers(wanted)
    return {"numbers": {k: v for k, v in state.numbers.items()}}


@control
async def reset(state, body):
    for cred in list(state.credentials.values()):
        state.drop(cred)
    for conn in list(state.pending.values()):
        conn.drop()
    state.reset()
    state.save()
    return {"reset": True}


CONTROLS = {
    "scan": scan,
    "enter-code": enter_code,
    "messages": messages,
    "drop": drop,
    "keepalive-timeout": keepalive_timeout,
    "logout": logout,
    "ban": ban,
    "slow-sends": slow_sends,
    "numbers": numbers,
    "reset": reset,
}


async def auto_pairer(state, delay):
    """Demo mode: every QR is "scanned" `delay` seconds after it is shown."""
    seen = {}
    while True:
        await asyncio.sleep(max(0.02, min(0.25, delay)))  # --auto-pair 0: no busy loop
        now = asyncio.get_running_loop().time()
        for ref, conn in list(state.pending.items()):
            first = seen.setdefault(ref, now)
            if now - first >= delay and conn.alive:
                try:
                    await state.pair(conn, how="auto")
                except (LookupError, p.FrameError) as exc:
                    logger.info("auto-pair of %s failed: %s", ref, exc)
        for ref in list(seen):
            if ref not in state.pending:
                del seen[ref]


async def serve(state, host, port, auto_pair=None):
    """Run until cancelled. Returns only on cancellation."""
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    extra = None
    if auto_pair is not None:
        extra = asyncio.get_running_loop().create_task(auto_pairer(state, auto_pair))
    try:
        await asyncio.Event().wait()
    finally:
        if extra is not None:
            extra.cancel()
        await runner.cleanup()
