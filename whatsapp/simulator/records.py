"""The simulator's two records: a client connection and a device credential."""

import secrets
from collections import Counter, OrderedDict

CREDENTIAL_COUNTERS = (
    "connections",
    "conflicts",
    "delivered",
    "redelivered",
    "acked",
    "sends",
    "duplicate_sends",
    "drops",
    "keepalive_mutes",
    "logouts",
    "bans",
)


class Connection:
    """One client connection; the server supplies how to write and close it."""

    def __init__(self, send, close, abort, agent="", company=""):
        self._send, self._close, self._abort = send, close, abort
        self.id = secrets.token_hex(4)
        self.agent = agent
        self.company = company
        self.credential = None
        self.ref = ""  # QR reference while unpaired
        self.alive = True
        self.sent = set()  # message ids written on this connection
        self.pumping = False
        self.muted_until = 0.0  # keep-alive pongs withheld until then
        self.pair_phones = {}  # pairing code -> phone

    async def send(self, frame):
        """Write `frame`; a peer that vanished makes this connection dead, not an error."""
        if not self.alive:
            return False
        try:
            await self._send(frame)
        except (OSError, RuntimeError):  # aiohttp: cannot write to closing transport
            self.drop()
            return False
        return True

    async def end(self, frame=None, code=1000):
        """Say why (frame), then close; nothing from this client counts any more."""
        if not self.alive:
            return
        if frame is not None:
            try:
                await self._send(frame)
            except Exception:  # the peer is gone already
                pass
        self.alive = False
        await self._close(code)

    def drop(self):
        """A network drop: no close frame; frames already written still arrive."""
        self.alive = False
        self._abort()


class Credential:
    def __init__(self, token, jid, phone, company, push_name, banned_until=0.0, ban_code=""):
        self.token, self.jid, self.phone = token, jid, phone
        self.company, self.push_name = str(company), push_name
        self.banned_until, self.ban_code = banned_until, ban_code
        self.conn = None
        self.outbox = OrderedDict()  # message id -> frame, until acknowledged
        self.handed_out = set()  # ids written to some connection at least once
        self.counts = Counter()

    def as_saved(self):
        return {
            "token": self.token,
            "jid": self.jid,
            "phone": self.phone,
            "company": self.company,
            "push_name": self.push_name,
            "banned_until": self.banned_until,
            "ban_code": self.ban_code,
        }

    def summary(self):
        return {
            "jid": self.jid,
            "company": self.company,
            "live": self.conn is not None,
            "queued": len(self.outbox),
            "agent": self.conn.agent if self.conn else "",
            "banned_until": self.banned_until or None,
            **{k: self.counts[k] for k in CREDENTIAL_COUNTERS},
        }
