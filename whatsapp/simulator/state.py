"""What the simulator knows: credentials, live connections, queues, counters.

No I/O here except through `Connection` objects (the server wraps a websocket
in one) and the optional state file. Everything runs on one asyncio loop, so
plain dicts are enough: no locks.

Delivery is at-least-once, as WhatsApp's: every inbound message sits in its
credential's outbox until the client acknowledges it. Whatever is in the
outbox when a connection (re)starts is sent again -- a message the previous
connection already received but never acknowledged counts as *redelivered*.
"""

import asyncio
import json
import logging
import os
import secrets
import time
from collections import Counter, defaultdict
from pathlib import Path

from . import protocol as p
from .media import MediaError, MediaStore
from .records import CREDENTIAL_COUNTERS, Credential

logger = logging.getLogger(__name__)
RECEIPT_DELAY = 0.3  # seconds between a send's ack and the phone's delivery receipt


class SimulatorState:
    def __init__(
        self,
        state_file=None,
        keepalive=20.0,
        keepalive_max_fail=180.0,
        qr_rotate=20.0,
        receipts=True,
    ):
        self.state_file = Path(state_file) if state_file else None
        self.keepalive = keepalive
        self.keepalive_max_fail = keepalive_max_fail
        self.receipts = receipts
        self.qr_rotate = qr_rotate
        self._tasks = set()
        self.reset()
        self._load()

    def reset(self):
        self.credentials = {}  # token -> Credential
        self.by_company = {}  # company label -> token of its current credential
        self.pending = {}  # QR ref -> Connection
        self.sends = []
        self.sends_by_phone = defaultdict(list)
        # (sender phone, recipient, message id) -> its send record: a phone shows
        # a message once, however often its sender sends that id (a resend).
        self.seen_sends = {}
        self.slow_sends = {}  # company -> [seconds, sends left] before their ack
        self.conflicts = []
        self.totals = Counter()
        self.lids = {}  # LID user -> phone, of every phone that wrote (WhatsApp's mapping)
        self.revoked = {}  # token -> Credential logged out (kept for the counters)
        # Where numbers live on WhatsApp (digits -> bare JID, or None: not on WhatsApp);
        # a number not listed is on WhatsApp at its own digits (`numbers` control).
        self.numbers = {}
        self.media = MediaStore()  # files of media messages and of uploads
        # What the phones saw besides messages: read marks and "typing..." (in order).
        self.activity = []

    # --- persistence ---------------------------------------------------------
    def _load(self):
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            saved = json.loads(self.state_file.read_text())
            for item in saved.get("credentials", []):
                cred = Credential(**item)
                self.credentials[cred.token] = cred
                self.by_company[cred.company] = cred.token
        except (ValueError, TypeError, KeyError) as exc:
            raise SystemExit(f"cannot read simulator state file {self.state_file}: {exc}") from None

    def save(self):
        if self.state_file is None:
            return
        data = {"version": 1, "credentials": [c.as_saved() for c in self.credentials.values()]}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.state_file)

    # --- lookups -----------------------------------------------------------
    def credential_for(self, company=None, jid=None):
        if jid:
            for cred in self.credentials.values():
                if cred.jid == jid:
                    return cred
            raise LookupError(f"no paired device {jid}")
        token = self.by_company.get(str(company))
        if token is None:
            raise LookupError(f"company {company} has no paired device")
        return self.credentials[token]

    def pending_for(self, company=None, ref=None):
        if ref:
            conn = self.pending.get(ref)
            if conn is None:
                raise LookupError(f"no connection waits for QR {ref}")
            return conn
        for conn in reversed(self.pending.values()):
            if conn.company == str(company):
                return conn
        raise LookupError(f"no connection of company {company} waits for pairing")

    # --- connections -----------------------------------------------------------
    async def hello(self, conn, frame):
        """The first frame of a connection: resume a credential or start pairing."""
        conn.agent = str(frame.get("agent") or "")[:200]
        conn.company = str(frame.get("company") or "")[:100]
        token = frame.get("credential")
        self.totals["hellos"] += 1
        if not token:
            conn.ref = secrets.token_urlsafe(12)
            self.pending[conn.ref] = conn
            self.totals["qr_issued"] += 1
            codes = p.qr_codes(conn.ref)
            await conn.send({"type": "qr", "ref": conn.ref, "codes": codes[:1]})
            self._later(0, self._rotate_qr(conn, codes[1:]))
            return "pairing"
        cred = self.credentials.get(token)
        if cred is None:
            self.totals["unknown_credentials"] += 1
            await conn.end(
                {"type": "logged_out", "reason": "LOGGED_OUT", "on_connect": True},
                p.CLOSE_LOGGED_OUT,
            )
            return "logged_out"
        if cred.banned_until > time.time():
            await conn.end(
                {
                    "type": "temporary_ban",
                    "code": cred.ban_code,
                    "expires_in": int(cred.banned_until - time.time()) + 1,
                },
                p.CLOSE_BANNED,
            )
            return "banned"
        await self._attach(cred, conn)
        return "connected"

    async def _attach(self, cred, conn):
        old = cred.conn
        cred.conn, conn.credential = conn, cred
        if old is not None and old.alive:
            cred.counts["conflicts"] += 1
            self.totals["conflicts"] += 1
            self.conflicts.append(
                {
                    "at": time.time(),
                    "jid": cred.jid,
                    "company": cred.company,
                    "replaced_agent": old.agent,
                    "by_agent": conn.agent,
                }
            )
            await old.end({"type": "stream_replaced"}, p.CLOSE_REPLACED)
        cred.counts["connections"] += 1
        self.totals["connections"] += 1
        await conn.send(
            {
                "type": "connected",
                "jid": cred.jid,
                "push_name": cred.push_name,
                "keepalive": self.keepalive,
                "keepalive_max_fail": self.keepalive_max_fail,
            }
        )
        await self.pump(cred)

    async def _rotate_qr(self, conn, codes):
        """A fresh code every `qr_rotate` seconds, as whatsmeow shows them; when all
        are used up unscanned, the connection ends (the client must start over)."""
        for code in [*codes, None]:
            await asyncio.sleep(self.qr_rotate)
            if not conn.alive or conn.ref not in self.pending:
                return
            if code is None:
                self.totals["qr_expired"] += 1
                self.pending.pop(conn.ref, None)
                await conn.end({"type": "qr_timeout"}, p.CLOSE_QR_TIMEOUT)
                return
            await conn.send({"type": "qr", "ref": conn.ref, "codes": [code]})

    def closed(self, conn):
        """The socket of `conn` ended, however it ended."""
        conn.alive = False
        self.pending.pop(conn.ref, None)
        cred = conn.credential
        if cred is not None and cred.conn is conn:
            cred.conn = None

    # --- pairing ------------------------------------------------------------------
    async def pair(self, conn, phone=None, push_name="", how="qr"):
        """The phone scanned this connection's QR (or entered its code)."""
        if not conn.alive or conn.ref not in self.pending:
            raise LookupError("that connection no longer waits for pairing")
        phone = p.digits(phone) if phone else p.company_phone(conn.company or conn.ref)
        device = secrets.randbelow(60) + 2
        jid = f"{phone}:{device}@s.whatsapp.net"
        cred = Credential(
            secrets.token_urlsafe(24),
            jid,
            phone,
            conn.company,
            push_name or f"Company {conn.company or phone}",
        )
        previous = self.by_company.get(cred.company)
        if previous is not None and previous in self.credentials:
            self.by_company.pop(cred.company)  # the older device stays known by its token
        self.credentials[cred.token] = cred
        self.by_company[cred.company] = cred.token
        self.pending.pop(conn.ref, None)
        self.totals[f"paired_by_{how}"] += 1
        self.save()
        await conn.send(
            {
                "type": "pair_success",
                "jid": jid,
                "push_name": cred.push_name,
                "credential": cred.token,
            }
        )
        await conn.end({"type": "restart"}, p.CLOSE_RESTART)
        return cred

    async def pair_phone(self, conn, frame):
        if conn.ref not in self.pending:
            raise p.FrameError("pairing codes are only for a connection that is not paired")
        phone = p.digits(frame.get("phone"))
        code = p.pairing_code()
        conn.pair_phones[p.normalize_code(code)] = phone
        self.totals["pairing_codes"] += 1
        await conn.send({"type": "pair_code", "req": frame.get("req"), "code": code})

    async def enter_code(self, code):
        wanted = p.normalize_code(code)
        for conn in list(self.pending.values()):
            phone = conn.pair_phones.get(wanted)
            if phone:
                return await self.pair(conn, phone, how="code")
        raise LookupError(f"no connection waits for pairing code {code!r}")

    # --- inbound messages ------------------------------------------------------------
    async def inject(self, cred, frames):
        """Messages from phones: queued for the device, delivered if it is online."""
        for frame in frames:
            sender, alt = frame.get("sender", ""), frame.get("sender_alt", "")
            if sender.endswith("@lid") and alt.endswith("@s.whatsapp.net"):
                self.lids[sender.split("@")[0]] = alt.split("@")[0]
            elif alt.endswith("@lid"):
                self.lids[alt.split("@")[0]] = sender.split("@")[0].split(":")[0]
            if frame["id"] in cred.outbox:
                continue  # WhatsApp would not queue the same id twice
            cred.outbox[frame["id"]] = frame
        self.totals["injected"] += len(frames)
        await self.pump(cred)

    async def pump(self, cred):
        """Write every queued message this connection has not seen yet, in order."""
        conn = cred.conn
        if conn is None or conn.pumping:
            return
        conn.pumping = True
        try:
            while conn.alive and cred.conn is conn:
                due = [f for mid, f in cred.outbox.items() if mid not in conn.sent]
                if not due:
                    break
                for frame in due:
                    if not conn.alive or cred.conn is not conn:
                        break
                    mid = frame["id"]
                    if mid not in cred.outbox or mid in conn.sent:
                        continue
                    conn.sent.add(mid)
                    first = mid not in cred.handed_out
                    cred.handed_out.add(mid)  # before the await: its ack may come at once
                    if not await conn.send(frame):
                        if first:
                            cred.handed_out.discard(mid)  # the client never got this one
                        break
                    kind = "delivered" if first else "redelivered"
                    cred.counts[kind] += 1
                    self.totals[kind] += 1
        finally:
            conn.pumping = False

    def ack(self, conn, frame):
        cred = conn.credential
        mid = frame.get("id")
        if cred is None or cred.conn is not conn or not conn.alive:
            self.totals["acks_lost"] += 1  # the connection is gone: as if never received
            return
        if cred.outbox.pop(mid, None) is not None:
            cred.handed_out.discard(mid)
            cred.counts["acked"] += 1
            self.totals["acked"] += 1

    # --- sends ------------------------------------------------------------------------
    async def send(self, conn, frame):
        """A text from the device to a phone. The sender chooses the message id
        (whatsmeow's SendRequestExtra.ID; one is made up when none is given); a
        phone ignores a second message with an id it already has from that sender:
        the resend is acknowledged, counted as a duplicate, and not shown twice."""
        cred = conn.credential
        req = frame.get("req")
        to, text, chosen = frame.get("to"), frame.get("text", ""), frame.get("id")
        media, location = frame.get("media"), frame.get("location")
        try:
            if cred is None:
                raise p.FrameError("not logged in")
            user, _device, server = p.parse_jid(to)
            if media is not None:
                if not isinstance(media, dict):
                    raise p.FrameError("media must be an object")
                try:
                    media = {**media, **self.media.describe(media.get("path"))}
                except MediaError as exc:
                    raise p.FrameError(str(exc)) from None
            elif location is not None:
                if not isinstance(location, dict) or not all(
                    isinstance(location.get(k), (int, float)) for k in ("latitude", "longitude")
                ):
                    raise p.FrameError("a location needs numeric latitude and longitude")
            elif not isinstance(text, str) or not text.strip():
                raise p.FrameError("message is empty")
            if chosen is not None and not (isinstance(chosen, str) and 0 < len(chosen) <= 128):
                raise p.FrameError("a message id is a string of 1 to 128 characters")
        except p.FrameError as exc:
            self.totals["send_errors"] += 1
            await conn.send(
                {"type": "send_error", "req": req, "error": str(exc), "permanent": cred is not None}
            )
            return
        message_id = chosen or p.web_message_id()
        key = (cred.phone, to, message_id)
        record = self.seen_sends.get(key)
        if record is not None:
            record["duplicates"] += 1
            cred.counts["duplicate_sends"] += 1
            self.totals["duplicate_sends"] += 1
        else:
            phone = user if server == "s.whatsapp.net" else self.phone_of_lid(user, server)
            reached = True
            if server == "s.whatsapp.net":
                # Nobody lives at a JID WhatsApp does not hand out for the number
                # (not on WhatsApp, or a +52 number whose account is at its 521 JID).
                on, where = self.where(user)
                reached = on and where == f"{user}@{server}"
                if not reached:
                    self.totals["sends_unreached"] += 1
            record = {
                "id": message_id,
                "company": cred.company,
                "from": cred.jid,
                "to": to,
                "phone": phone,
                "text": text if isinstance(text, str) else "",
                **({"media": media} if media is not None else {}),
                **({"location": location} if location is not None else {}),
                "at": time.time(),
                "duplicates": 0,
                "reached": reached,
            }
            self.seen_sends[key] = record
            self.sends.append(record)
            if phone:
                self.sends_by_phone[phone].append(record)
            cred.counts["sends"] += 1
            self.totals["sends"] += 1
        delay = self._ack_delay(cred.company)
        ack = {"type": "send_ack", "req": req, "id": message_id}
        if delay:
            self._later(delay, conn.send(ack))
        else:
            await conn.send(ack)
        if self.receipts and record["reached"]:  # the phone confirms a moment later
            receipt = {"type": "receipt", "ids": [message_id], "kind": "delivered", "chat": to}
            self._later(delay + RECEIPT_DELAY, conn.send(receipt))

    def where(self, phone):
        """(on WhatsApp, bare JID) of a number's digits."""
        if phone in self.numbers:
            jid = self.numbers[phone]
            return jid is not None, jid or ""
        return True, f"{phone}@s.whatsapp.net"

    def set_numbers(self, numbers):
        """{number: JID, or None for "not on WhatsApp", or True for its own digits}."""
        for number, where in numbers.items():
            phone = p.digits(number)
            if where is True:
                self.numbers.pop(phone, None)
            elif where is None or where is False:
                self.numbers[phone] = None
            elif where == "mexican_legacy":
                self.numbers[phone] = p.mexican_legacy_jid(phone)
            else:
                user, _device, server = p.parse_jid(where)
                if server != "s.whatsapp.net":
                    raise p.FrameError(f"a number lives at a phone JID, not {where!r}")
                self.numbers[phone] = f"{user}@{server}"

    async def is_on_whatsapp(self, conn, frame):
        """whatsmeow's IsOnWhatsApp: one answer per asked number, echoing the query."""
        if conn.credential is None:
            raise p.FrameError("not logged in")
        phones = frame.get("phones")
        if not isinstance(phones, list) or not 1 <= len(phones) <= 100:
            raise p.FrameError("phones must be a list of 1 to 100 numbers")
        results = []
        for query in phones:
            on, jid = self.where(p.digits(query))
            results.append({"query": str(query), "jid": jid, "is_in": on})
        self.totals["lookups"] += len(phones)
        await conn.send({"type": "on_whatsapp", "req": frame.get("req"), "results": results})

    def slow_down_sends(self, cred, seconds, count=1):
        """The next `count` sends of this company reach the phone at once but are
        acknowledged only `seconds` later (a slow network: a send in flight)."""
        self.slow_sends[cred.company] = [float(seconds), int(count)]

    def _ack_delay(self, company):
        slow = self.slow_sends.get(company)
        if slow is None:
            return 0.0
        slow[1] -= 1
        if slow[1] <= 0:
            del self.slow_sends[company]
        return slow[0]

    def _later(self, delay, coro):
        async def run():
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # the simulator stops first
                coro.close()
                raise
            try:
                await coro
            except Exception:  # the connection went away meanwhile
                pass

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def phone_of_lid(self, user, server):
        return self.lids.get(user, "") if server == "lid" else ""

    # --- logout, ban, drop, keep-alive --------------------------------------------------
    async def client_logout(self, conn, frame):
        cred = conn.credential
        if cred is not None:
            self._forget(cred)
            cred.counts["logouts"] += 1
        await conn.send({"type": "logout_ok", "req": frame.get("req")})
        await conn.end(None, p.CLOSE_LOGGED_OUT)

    async def phone_logout(self, cred, reason="LOGGED_OUT"):
        self._forget(cred)
        cred.counts["logouts"] += 1
        self.totals["logouts"] += 1
        conn = cred.conn
        if conn is not None:
            await conn.end(
                {"type": "logged_out", "reason": reason, "on_connect": False}, p.CLOSE_LOGGED_OUT
            )
        return conn is not None

    def _forget(self, cred):
        self.credentials.pop(cred.token, None)
        self.revoked[cred.token] = cred
        if self.by_company.get(cred.company) == cred.token:
            del self.by_company[cred.company]
        self.save()

    async def ban(self, cred, seconds, code="SEND_TO_TOO_MANY_PEOPLE"):
        cred.banned_until = time.time() + float(seconds)
        cred.ban_code = str(code)
        cred.counts["bans"] += 1
        self.totals["bans"] += 1
        self.save()
        conn = cred.conn
        if conn is not None:
            await conn.end(
                {"type": "temporary_ban", "code": cred.ban_code, "expires_in": int(float(seconds))},
                p.CLOSE_BANNED,
            )
        return conn is not None

    def drop(self, cred):
        conn = cred.conn
        if conn is None:
            return False
        cred.conn = None
        cred.counts["drops"] += 1
        self.totals["drops"] += 1
        conn.drop()
        return True

    def mute(self, cred, seconds):
        conn = cred.conn
        if conn is None:
            return False
        conn.muted_until = time.monotonic() + float(seconds)
        cred.counts["keepalive_mutes"] += 1
        return True

    async def ping(self, conn, frame):
        if time.monotonic() < conn.muted_until:
            self.totals["pings_ignored"] += 1
            return
        await conn.send({"type": "pong", "n": frame.get("n")})

    # --- read marks and presence ---------------------------------------------------------
    def chat_activity(self, conn, frame):
        """A read mark ({chat, sender, ids}) or a chat presence ({chat, state}) from a
        device: the phone shows blue ticks / "typing...". Recorded with its time."""
        cred = conn.credential
        if cred is None:
            raise p.FrameError("not logged in")
        kind = frame.get("type")
        chat = frame.get("chat")
        p.parse_jid(chat)
        record = {"type": kind, "company": cred.company, "chat": chat, "at": time.time()}
        if kind == "read":
            ids = frame.get("ids")
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise p.FrameError("ids must be a list of message ids")
            record["ids"] = ids
        else:
            if frame.get("state") not in ("composing", "paused"):
                raise p.FrameError("state must be composing or paused")
            record["state"] = frame["state"]
        self.activity.append(record)
        del self.activity[:-20000]
        self.totals["reads" if kind == "read" else "presences"] += 1

    # --- reports ----------------------------------------------------------------------
    def stats(self):
        companies = defaultdict(Counter)
        for cred in [*self.credentials.values(), *self.revoked.values()]:
            row = companies[cred.company]
            row.update({k: cred.counts[k] for k in CREDENTIAL_COUNTERS})
            if cred.token in self.credentials:
                row["live"] += 1 if cred.conn is not None else 0
                row["queued"] += len(cred.outbox)
        for conn in self.pending.values():
            companies[conn.company]["pending"] += 1
        return {
            "totals": dict(self.totals),
            "pending": len(self.pending),
            "live": sum(1 for c in self.credentials.values() if c.conn is not None),
            "companies": {k: dict(v) for k, v in companies.items()},
            "credentials": [c.summary() for c in self.credentials.values()],
            "conflicts": self.conflicts[-100:],
        }
