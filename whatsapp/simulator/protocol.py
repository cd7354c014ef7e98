"""The simulator's wire protocol: JSON text frames over one websocket per client.

Client -> simulator
  hello        {credential?, company, agent}     first frame of every connection
  ack          {id}                              an inbound message was handled
  send         {req, to, text, id?, media?, location?}
                                                 send a text with the sender's message id
                                                 (made up if absent); answered by send_ack /
                                                 send_error. A resend with an id the phone
                                                 has is acked, not shown twice. media
                                                 {path, kind, mimetype, file_name, caption,
                                                 voice_note}: a file uploaded before with
                                                 POST /upload; location {latitude,
                                                 longitude, name, address}
  is_on_whatsapp {req, phones}                   which numbers (E.164, with +) are on WhatsApp
                                                 and at which JID; answered by on_whatsapp
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
                from_me?, kind?, reacts_to?, media?}
                                                 kind: image, video, document, audio,
                                                 sticker, location, reaction (default text);
                                                 media {path, mimetype, size, sha256,
                                                 file_name}: GET path on the simulator's
                                                 HTTP port serves the bytes
  receipt      {ids, kind, chat}
  send_ack     {req, id}  /  send_error {req, error, permanent}
  on_whatsapp  {req, results: [{query, jid, is_in}]}   (whatsmeow's IsOnWhatsAppResponse)
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
MODES = ("phone", "device", "lid", "lid_only", "group", "status", "own")
KINDS = ("text", "image", "video", "document", "audio", "sticker", "location", "reaction")
MEDIA_KINDS = ("image", "video", "document", "audio", "sticker")
# How the simulator serves a media file: ok, expired (410, as WhatsApp's media
# servers answer for old media), broken (500, `fail_times` times; forever by
# default), truncated (half the bytes: the declared length and SHA-256 do not
# match), slow (waits `delay` seconds before answering).
MEDIA_STATES = ("ok", "expired", "broken", "truncated", "slow")
MEDIA_TYPES = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "document": "application/pdf",
    "audio": "audio/ogg; codecs=opus",
    "sticker": "image/webp",
}
_MEDIA_HEADS = {
    "image": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    "video": b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41",
    "document": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
    "audio": b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead\x01\x01",
    "sticker": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
}
MAX_MEDIA_BYTES = 64 * 1024 * 1024
PAIR_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"  # whatsmeow's: no 0/O/I/U


def sample_media(kind, size):
    """`size` bytes a file of `kind` could hold: the format's real header (so that
    libmagic recognises it), then random bytes."""
    head = _MEDIA_HEADS[kind]
    size = max(int(size), len(head))
    return head + secrets.token_bytes(size - len(head))


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


def mexican_legacy_jid(phone):
    """WhatsApp's older `521` + ten digits JID of a Mexican mobile number `52` + ten
    digits (accounts registered before Mexico dropped the mobile 1 in 2019 still
    live there: whatsmeow issue #874)."""
    return f"521{phone[2:]}@s.whatsapp.net"


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
    media=None,
):
    """The `message` frame of a text written on a simulated phone.

    mode: phone (4915...@s.whatsapp.net), device (a linked device of that phone,
    4915...:3@s.whatsapp.net), lid (the sender's @lid with the phone as SenderAlt),
    lid_only (the sender's @lid and no SenderAlt: WhatsApp hides the phone; a later
    message in another mode reveals it), group (a group chat; the sender is the
    participant), status (status@broadcast), own (typed on the company's own phone
    into the chat with `sender_phone`: from_me, sent by the company's account).
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
    elif mode == "lid_only":
        sender, sender_alt, chat = lid_jid, "", lid_jid
    elif mode == "own":
        sender, sender_alt = company_jid.split(":")[0].split("@")[0] + "@s.whatsapp.net", ""
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
        **({"from_me": True} if mode == "own" else {}),
        **({"kind": kind} if kind != "text" else {}),
        **({"reacts_to": str(reacts_to)} if kind == "reaction" else {}),
        **({"media": media} if media else {}),
    }
