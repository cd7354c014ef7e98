"""The simulator's wire protocol: JSON text frames over one websocket per client.

Client -> simulator
  hello        {credential?, company, agent}     first frame of every connection
  ack          {id}                              an inbound message was handled
  send         {req, to, text, id?}              send a text with the sender's message id
                                                 (made up if absent); answered by send_ack /
                                                 send_error. A resend with an id the phone
                                                 has is acked, not shown twice
  pair_phone   {req, phone}                      ask for a pairing code; answered by pair_code
  logout       {req}                             remove this device; answered by logout_ok
  ping         {n}                               keep-alive; answered by pong {n}
  read         {chat, sender, ids}               mark a phone's messages read (no answer)
  presence     {chat, state}                     composing | paused: "typing..." (no answer)

Simulator -> client
  qr           {ref, codes}                      unpaired: show this code (a new one every
                                                 qr_rotate seconds), wait for a scan
  qr_timeout   {}                                no code was scanned; close follows
  pair_code    {req, code}
  pair_success {jid, push_name, credential}      then restart: the client reconnects with it
  restart      {}                                close follows (whatsmeow's 515 after pairing)
  connected    {jid, push_name, keepalive, keepalive_max_fail}
  message      {id, chat, sender, sender_alt, push_name, text, timestamp, is_group,
                kind?, reacts_to?}                kind: image, video, document, audio,
                                                 location, reaction (default text)
  receipt      {ids, kind, chat}
  send_ack     {req, id}  /  send_error {req, error, permanent}
  logout_ok    {req}
  stream_replaced {}                             440 conflict: another connection took over
  logged_out   {reason, on_connect}
  temporary_ban {code, expires_in}
  error        {error}                           a malformed frame (the connection stays)

Close codes the simulator uses (after the frame that says why).
"""

import base64
import hashlib
import secrets
import time

CLOSE_REPLACED = 4440
CLOSE_LOGGED_OUT = 4401
CLOSE_BANNED = 4402
CLOSE_RESTART = 4515
CLOSE_BAD_HELLO = 4400
CLOSE_QR_TIMEOUT = 4408

SERVERS = {"s.whatsapp.net", "lid", "g.us"}
# The reasons and codes whatsmeow reports (neonize's enum names), so that the
# worker records the same words whichever transport it drives.
LOGOUT_REASONS = ("LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT", "GENERIC")
BAN_CODES = (
    "SEND_TO_TOO_MANY_PEOPLE",
    "BLOCKED_BY_USERS",
    "CREATED_TOO_MANY_GROUPS",
    "SENT_TOO_MANY_SAME_MESSAGE",
    "BROADCAST_LIST",
)
MODES = ("phone", "device", "lid", "group", "status")
KINDS = ("text", "image", "video", "document", "audio", "location", "reaction")
PAIR_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"  # whatsmeow's: no 0/O/I/U


class FrameError(ValueError):
    """A frame or a control request that cannot be carried out; the text says why."""


def web_message_id():
    """An id as WhatsApp Web / whatsmeow generate them: 3EB0 + 18 hex digits."""
    return "3EB0" + secrets.token_hex(9).upper()


def phone_message_id(style):
    """Ids of messages written on phones: Android (32 hex) or iPhone (3A + 18 hex)."""
    if style == "iphone":
        return "3A" + secrets.token_hex(9).upper()
    return secrets.token_hex(16).upper()


def digits(value):
    text = "".join(ch for ch in str(value or "") if ch.isdigit())
    if not 8 <= len(text) <= 15:
        raise FrameError(f"{value!r} is not a phone number (8 to 15 digits)")
    return text


def lid_of(phone):
    """The stable privacy id (LID) of a simulated phone: 15 digits derived from it."""
    number = int(hashlib.sha256(f"lid:{phone}".encode()).hexdigest()[:15], 16)
    return str(10**14 + number % (9 * 10**14))


def company_phone(label):
    """A valid German landline for a company's WhatsApp account, derived from its label."""
    number = int(hashlib.sha256(f"company:{label}".encode()).hexdigest()[:10], 16)
    return f"49309{number % 10**8:08d}"


def group_jid(name):
    """A group JID like WhatsApp's (creator-timestamp style, 18 digits)."""
    number = int(hashlib.sha256(f"group:{name}".encode()).hexdigest()[:15], 16)
    return f"1203630{number % 10**11:011d}@g.us"


def qr_codes(ref, count=6):
    """What whatsmeow puts in a QR: 2@ref,noise key,identity key,adv secret (rotated)."""
    keys = ",".join(base64.b64encode(secrets.token_bytes(32)).decode() for _ in range(3))
    return [f"2@{ref}{i or ''},{keys}" for i in range(count)]


def pairing_code():
    raw = "".join(secrets.choice(PAIR_ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def normalize_code(code):
    return "".join(ch for ch in str(code or "").upper() if ch.isalnum())


def parse_jid(text):
    """(user, device, server) of `user[:device]@server`, or FrameError."""
    if not isinstance(text, str) or text.count("@") != 1:
        raise FrameError(f"invalid jid {text!r}")
    user, server = text.split("@")
    user, _, device = user.partition(":")
    if server not in SERVERS or not user or not user.replace("-", "").isdigit():
        raise FrameError(f"invalid jid {text!r}")
    if device and not device.isdigit():
        raise FrameError(f"invalid jid {text!r}")
    return user, int(device or 0), server


def inbound_frame(
    company_jid,
    sender_phone,
    text,
    *,
    mode="phone",
    push_name="",
    group="",
    message_id="",
    style="android",
    device=0,
    kind="text",
    reacts_to="",
):
    """The `message` frame of a text written on a simulated phone.

    mode: phone (4915...@s.whatsapp.net), device (a linked device of that phone,
    4915...:3@s.whatsapp.net), lid (the sender's @lid with the phone as SenderAlt),
    group (a group chat; the sender is the participant), status (status@broadcast).
    kind: text, or image/video/document (`text` is the caption), audio (a voice
    note), location (`text` names the place), reaction (`text` is the emoji,
    `reacts_to` the id of the message it reacts to)."""
    phone = digits(sender_phone)
    if mode not in MODES:
        raise FrameError(f"unknown sender mode {mode!r} ({', '.join(MODES)})")
    if not isinstance(text, str):
        raise FrameError("text must be a string")
    if kind not in KINDS:
        raise FrameError(f"unknown message kind {kind!r} ({', '.join(KINDS)})")
    if kind == "reaction" and not reacts_to:
        raise FrameError("a reaction needs reacts_to (the id of a message)")
    phone_jid = f"{phone}@s.whatsapp.net"
    lid_jid = f"{lid_of(phone)}@lid"
    sender, sender_alt, chat = phone_jid, lid_jid, phone_jid
    if mode == "device":
        sender = f"{phone}:{device or 3}@s.whatsapp.net"
    elif mode == "lid":
        sender, sender_alt, chat = lid_jid, phone_jid, lid_jid
    elif mode == "status":  # a status update: WhatsApp delivers it, nobody answers it
        chat = "status@broadcast"
    elif mode == "group":
        chat = group if group else group_jid(company_jid)
        parse_jid(chat)
        sender, sender_alt = lid_jid, phone_jid
    return {
        "type": "message",
        "id": message_id or phone_message_id(style),
        "chat": chat,
        "sender": sender,
        "sender_alt": sender_alt,
        "push_name": push_name,
        "text": text,
        "timestamp": int(time.time()),
        "is_group": mode == "group",
        **({"kind": kind} if kind != "text" else {}),
        **({"reacts_to": str(reacts_to)} if kind == "reaction" else {}),
    }
